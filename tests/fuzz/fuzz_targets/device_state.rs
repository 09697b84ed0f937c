//! Each device's state restored into a live device model: the UART, and virtio transports
//! with a block and a net device; a restored transport then takes register accesses.
#![no_main]
use devices::legacy::{Serial, SerialSnapshot};
use devices::virtio::mmio::{MmioTransport, TransportSnapshot};
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;

use vmm_fuzz::NoIrq;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(snap) = ciborium::from_reader::<SerialSnapshot, _>(rest) {
                let mut s = Serial::new(std::sync::Arc::new(NoIrq), Box::new(std::io::sink()));
                if s.restore(&snap).is_ok() {
                    let mut b = [0u8; 1];
                    for off in 0..8 {
                        s.read(off, &mut b);
                    }
                }
            }
        }
        n => {
            if let Ok(snap) = ciborium::from_reader::<TransportSnapshot, _>(rest) {
                let mem = vmm_fuzz::memory(&[]);
                let dev: Box<dyn devices::virtio::VirtioDevice> = if n == 1 {
                    Box::new(vmm_fuzz::block())
                } else {
                    Box::new(vmm_fuzz::net(vec![0u8; 64]))
                };
                let mut t = MmioTransport::new(dev, mem, vmm_fuzz::interrupt());
                if t.restore(&snap).is_ok() {
                    t.thaw();
                    let mut b = [0u8; 4];
                    for off in (0..0x100).step_by(4) {
                        t.read(off, &mut b);
                    }
                }
            }
        }
    }
});
