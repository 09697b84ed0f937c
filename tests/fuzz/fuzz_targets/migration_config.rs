//! A source's config as the destination decodes and checks it before allocating anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = vmm::migrate::target::decode_config(data) {
        assert!((1..=32).contains(&cfg.vm.vcpus));
        assert_eq!(cfg.disk_sizes.len(), cfg.vm.disks.len());
    }
});
