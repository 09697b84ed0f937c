//! virtio-blk requests as a guest builds them: the descriptor table, rings and buffers all
//! come from the fuzzer.
#![no_main]
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mem = vmm_fuzz::memory(data);
    let mut dev = vmm_fuzz::block();
    vmm_fuzz::activate(&mut dev, &mem, vec![vmm_fuzz::queue(0, 256)]);
    dev.process_queue(0);
    dev.process_queue(0);
});
