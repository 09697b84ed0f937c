//! Register accesses as a guest makes them: port I/O to the UART and the i8042, MMIO to
//! virtio transports (block and net) whose guest memory also comes from the fuzzer, so a
//! driver sequence that sets queues up and notifies them runs the devices too.
#![no_main]
use std::sync::Arc;

use devices::legacy::{Serial, I8042};
use devices::virtio::mmio::MmioTransport;
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;

use vmm_fuzz::NoIrq;

fuzz_target!(|data: &[u8]| {
    // The first 8 KiB (at most) are guest memory; the rest is a list of accesses, 8 bytes
    // each: device, kind (read or write) and width, offset (u16), value (u32).
    let split = data.len().min(8192);
    let (memory, ops) = data.split_at(split);
    let mem = vmm_fuzz::memory(memory);
    let mut serial = Serial::new(Arc::new(NoIrq), Box::new(std::io::sink()));
    let mut i8042 = I8042::new(Arc::new(NoIrq));
    let mut block = MmioTransport::new(Box::new(vmm_fuzz::block()), mem.clone(), vmm_fuzz::interrupt());
    let mut net = MmioTransport::new(
        Box::new(vmm_fuzz::net(vec![0u8; 128])),
        mem,
        vmm_fuzz::interrupt(),
    );
    for op in ops.chunks_exact(8) {
        let dev: &mut dyn BusDevice = match op[0] % 4 {
            0 => &mut serial,
            1 => &mut i8042,
            2 => &mut block,
            _ => &mut net,
        };
        let width = [1usize, 2, 4, 8][(op[1] >> 1) as usize % 4];
        let offset = u64::from(u16::from_le_bytes([op[2], op[3]]));
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&op[4..8]);
        if op[1] & 1 == 0 {
            dev.read(offset, &mut buf[..width]);
        } else {
            dev.write(offset, &buf[..width]);
        }
    }
});
