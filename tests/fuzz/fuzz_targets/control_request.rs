//! Requests on the control socket.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<vmm::control::protocol::Request>(data);
});
