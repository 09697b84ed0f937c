//! The frame layer of the migration stream: any bytes give frames or an error, never a panic
//! or an allocation beyond the frame limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use migration::wire::{self, FrameKind};

fuzz_target!(|data: &[u8]| {
    vmm_fuzz::block_on(async {
        let mut r = data;
        while let Ok(frame) = wire::read_frame(&mut r).await {
            assert!(frame.payload.len() <= wire::MAX_FRAME);
            if frame.kind == FrameKind::Pages {
                let _ = wire::parse_pages(&frame.payload);
            }
        }
    });
});
