//! The paused guest's state as the destination decodes and checks it before KVM sees it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::migrate::target::decode_state(data);
});
