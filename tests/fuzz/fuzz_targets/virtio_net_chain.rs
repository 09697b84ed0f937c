//! virtio-net transmit and receive chains as a guest builds them: the descriptor tables, rings
//! and buffers come from the fuzzer; the receive side takes one frame of its bytes.
#![no_main]
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mem = vmm_fuzz::memory(data);
    let frame = data.get(0x8000..).unwrap_or_default().to_vec();
    let mut dev = vmm_fuzz::net(frame);
    vmm_fuzz::activate(
        &mut dev,
        &mem,
        vec![vmm_fuzz::queue(0x3000, 256), vmm_fuzz::queue(0, 256)],
    );
    dev.process_queue(1);
    dev.process_backend(-1);
    dev.process_queue(0);
});
