//! The pages codec: a payload that parses re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use migration::wire::{parse_pages, PagesBuilder, MAX_PAGES_PER_FRAME, PAGE_SIZE};

fuzz_target!(|data: &[u8]| {
    if let Ok(runs) = parse_pages(data) {
        let total: usize = runs.iter().map(|(_, d)| d.len() / PAGE_SIZE).sum();
        assert!(total <= MAX_PAGES_PER_FRAME);
        let mut b = PagesBuilder::new();
        for (first, bytes) in &runs {
            b.push(*first, bytes);
        }
        assert_eq!(b.finish(), data);
    }
});
