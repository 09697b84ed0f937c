//! The record and frame layers of the migration stream, insecure (CRC) and secured (AES-GCM
//! with a fixed key): any bytes give frames or an error, never a panic or an allocation
//! beyond the frame limit; page frames (compressed or not) decode or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use migration::record::Opener;
use migration::wire::{self, FrameKind, FrameReader};

fuzz_target!(|data: &[u8]| {
    vmm_fuzz::block_on(async {
        for key in [None, Some([7u8; 32])] {
            let mut r = FrameReader::new(data, Opener::new(key.as_ref()));
            let mut scratch = Vec::new();
            while let Ok(frame) = r.recv().await {
                assert!(frame.payload.len() <= wire::MAX_FRAME);
                match frame.kind {
                    FrameKind::Pages => {
                        let _ = wire::parse_pages(frame.payload);
                    }
                    FrameKind::PagesZ => {
                        if wire::decompress_pages(frame.payload, &mut scratch).is_ok() {
                            assert!(scratch.len() <= wire::MAX_FRAME);
                            let _ = wire::parse_pages(&scratch);
                        }
                    }
                    _ => {}
                }
            }
        }
    });
});
