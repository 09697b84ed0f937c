//! What the fuzz targets share: a runtime for the async decoders, guest memory laid out from
//! the fuzzer's bytes with a virtqueue in it, and devices over harmless backends.

use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};

use devices::virtio::block::{Block, Disk, DiskOptions};
use devices::virtio::net::{Net, NetBackend};
use devices::virtio::{GuestMemoryMmap, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Runs an async decoder to completion on a runtime made once per process.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
    .block_on(f)
}

/// Guest memory: 1 MiB.
pub const MEM_SIZE: usize = 1 << 20;
/// The fuzzer's bytes are copied to guest address 0, at most this many.
pub const FUZZ_WINDOW: usize = 64 << 10;
pub const QUEUE_SIZE: u16 = 16;

/// Guest memory holding `data` from address 0.
pub fn memory(data: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let n = data.len().min(FUZZ_WINDOW);
    mem.write_slice(&data[..n], GuestAddress(0)).expect("fits");
    mem
}

/// A ready queue whose descriptor table, available and used rings sit at `base`,
/// `base + 0x1000` and `base + 0x2000`, in the fuzzer's window.
pub fn queue(base: u64, max_size: u16) -> Queue {
    let mut q = Queue::new(max_size).expect("a power of two");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(base as u32), Some((base >> 32) as u32));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    q
}

/// An interrupt line that goes nowhere.
pub struct NoIrq;
impl devices::Interrupt for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(Arc::new(NoIrq)))
}

/// A virtio-blk device on a small scratch image (made once per process).
pub fn block() -> Block {
    static IMAGE: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = IMAGE.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("vmm-fuzz-disk-{}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; 64 << 10]).expect("scratch image");
        p
    });
    let disk = Disk::open_unlocked(&DiskOptions {
        path: path.clone(),
        readonly: false,
        direct: false,
        serial: None,
    })
    .expect("scratch image opens");
    Block::new(disk)
}

/// A network backend that swallows what is sent and offers one frame to receive.
pub struct OneFrame(pub Option<Vec<u8>>);

impl NetBackend for OneFrame {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.take() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Ok(frame.len())
    }
    fn fd(&self) -> RawFd {
        -1
    }
}

pub fn net(frame: Vec<u8>) -> Net {
    Net::new(Box::new(OneFrame(Some(frame))), [0x52, 0x54, 0, 0, 0, 1])
}

/// Activates `dev` over `mem` with `queues`.
pub fn activate(dev: &mut dyn VirtioDevice, mem: &GuestMemoryMmap, queues: Vec<Queue>) {
    dev.activate(mem.clone(), interrupt(), queues)
        .expect("activation with valid queues");
}
