//! The state envelope: any bytes open to a value or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = migration::envelope::open::<ciborium::Value>(data);
    let _ = migration::envelope::open::<migration::protocol::Hello>(data);
});
