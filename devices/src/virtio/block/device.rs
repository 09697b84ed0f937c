//! The virtio-blk device: feature bits, config space, and the request queue.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::disk::Disk;
use super::request::{self, MAX_REQUEST_BYTES};
use super::SECTOR_SIZE;
use crate::virtio::{
    read_config_bytes, ActivateError, GuestMemoryMmap, VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};
use crate::virtio::{BackendError, BackendFlush, HostBackend, Persist};

const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue: Queue,
}

pub struct Block {
    disk: Disk,
    driver_features: u64,
    config: Vec<u8>,
    active: Option<Active>,
}

impl Block {
    pub fn new(disk: Disk) -> Self {
        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32), ...
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&(disk.size() / SECTOR_SIZE).to_le_bytes());
        config.extend_from_slice(&(MAX_REQUEST_BYTES as u32).to_le_bytes());
        config.extend_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        Block {
            disk,
            driver_features: 0,
            config,
            active: None,
        }
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Pops and executes every available request; false if one could not be completed at all.
    fn process_requests(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return true;
        };
        let mem = &active.mem;
        let mut used_any = false;
        let mut healthy = true;
        loop {
            let chain = match active.queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    log::warn!("virtio-blk: cannot read the available ring: {e}");
                    healthy = false;
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = match request::execute(&self.disk, mem, chain) {
                Ok(len) => len,
                Err(e) => {
                    log::warn!("virtio-blk: request {head} cannot be completed: {e:?}");
                    healthy = false;
                    0
                }
            };
            if let Err(e) = active.queue.add_used(mem, head, len) {
                log::warn!("virtio-blk: cannot return request {head}: {e}");
                healthy = false;
                break;
            }
            used_any = true;
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
        healthy
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        let ro = if self.disk.readonly() {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | ro
    }

    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                given: queues.len(),
                needed: 1,
            });
        }
        let queue = queues.remove(0);
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.driver_features = 0;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        if index != 0 {
            return true;
        }
        self.process_requests()
    }
}

/// Every request completes before the device is frozen: nothing but the queues moves.
impl Persist for Block {
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }
}

impl HostBackend for Block {
    fn release_backend(&mut self) {
        self.disk.unlock();
    }

    fn acquire_backend(&mut self) -> Result<(), BackendError> {
        self.disk.lock()?;
        self.disk.drop_cache();
        Ok(())
    }

    fn backend_flush(&self) -> Result<Option<BackendFlush>, BackendError> {
        let path = self.disk.path().to_path_buf();
        // The same open file (a duplicate descriptor): its sync covers every write the device
        // completed, and the device stays free meanwhile.
        let file = self
            .disk
            .duplicate()
            .map_err(|e| BackendError::Flush(path.clone(), e))?;
        Ok(Some(Box::new(move || {
            file.sync_data().map_err(|e| BackendError::Flush(path, e))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::super::disk::tests::temp_disk;
    use super::super::disk::DiskOptions;
    use super::super::request::*;
    use super::*;
    use crate::virtio::mmio::tests::{memory, CountingIrq};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x40000;
    const DATA: u64 = 0x50000;
    const STATUS: u64 = 0x60000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn block(tag: &str, readonly: bool) -> (Block, std::path::PathBuf) {
        let path = temp_disk(tag, 64 * 1024);
        let mut content = vec![0u8; 64 * 1024];
        for (i, b) in content.iter_mut().enumerate() {
            *b = (i / 512) as u8;
        }
        std::fs::write(&path, &content).unwrap();
        let disk = Disk::open(&DiskOptions {
            path: path.clone(),
            readonly,
            direct: false,
            serial: Some("serial-1".into()),
        })
        .unwrap();
        (Block::new(disk), path)
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// Links `descs` into one chain (NEXT flags and indices), as a driver would.
    fn chain(descs: &[RawDescriptor]) -> Vec<RawDescriptor> {
        let next = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        let n = descs.len();
        descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = Descriptor::from(*d);
                let (flags, nx) = if i + 1 < n {
                    (d.flags() | next, i as u16 + 1)
                } else {
                    (d.flags(), 0)
                };
                RawDescriptor::from(Descriptor::new(d.addr().0, d.len(), flags, nx))
            })
            .collect()
    }

    /// Runs one request made of `descs` (header written at HDR) and returns (status byte,
    /// used length, device healthy).
    fn run(
        dev: &mut Block,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        descs: &[RawDescriptor],
    ) -> (u8, u32, bool) {
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(mem, 16);
        let q: Queue = vq.create_queue().unwrap();
        let irq = Arc::new(VirtioInterrupt::new(Arc::new(CountingIrq::default())));
        dev.activate(mem.clone(), irq, vec![q]).unwrap();
        vq.add_desc_chains(&chain(descs), 0).unwrap();
        let healthy = dev.process_queue(0);
        let used_len: u32 = vq
            .used()
            .ring()
            .ref_at(0)
            .map(|e| e.load().len())
            .unwrap_or(u32::MAX);
        (
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            used_len,
            healthy,
        )
    }

    fn rw(hdr_len: u32, data: (u64, u32, u16)) -> Vec<RawDescriptor> {
        vec![
            desc(HDR, hdr_len, 0),
            desc(data.0, data.1, data.2),
            desc(STATUS, 1, W),
        ]
    }

    #[test]
    fn read_write_flush_and_get_id() {
        let (mut dev, path) = block("rw", false);
        let mem = memory();
        // Read sectors 2-3: every byte of sector n is n.
        let (st, len, ok) = run(&mut dev, &mem, VIRTIO_BLK_T_IN, 2, &rw(16, (DATA, 1024, W)));
        assert_eq!((st, len, ok), (VIRTIO_BLK_S_OK, 1025, true));
        let mut buf = [0u8; 1024];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 2) && buf[512..].iter().all(|&b| b == 3));
        // Write sector 5.
        mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
        let (st, len, _) = run(&mut dev, &mem, VIRTIO_BLK_T_OUT, 5, &rw(16, (DATA, 512, 0)));
        assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1));
        let (st, _, _) = run(
            &mut dev,
            &mem,
            VIRTIO_BLK_T_FLUSH,
            0,
            &[desc(HDR, 16, 0), desc(STATUS, 1, W)],
        );
        assert_eq!(st, VIRTIO_BLK_S_OK);
        assert!(std::fs::read(&path).unwrap()[5 * 512..6 * 512]
            .iter()
            .all(|&b| b == 0xab));
        let (st, len, _) = run(
            &mut dev,
            &mem,
            VIRTIO_BLK_T_GET_ID,
            0,
            &rw(16, (DATA, 20, W)),
        );
        assert_eq!((st, len), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 8];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"serial-1");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_read_marks_exactly_the_pages_it_wrote_as_dirty() {
        let (mut dev, path) = block("dirty", false);
        let mem = memory();
        // Data spans two pages (0x50800..0x51800); the status byte is in a third page.
        let descs = vec![
            desc(HDR, 16, 0),
            desc(DATA + 0x800, 4096, W),
            desc(STATUS, 1, W),
        ];
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let q: Queue = vq.create_queue().unwrap();
        let used_page = vq.used_addr().0 / 4096;
        let irq = Arc::new(VirtioInterrupt::new(Arc::new(CountingIrq::default())));
        dev.activate(mem.clone(), irq, vec![q]).unwrap();
        vq.add_desc_chains(&chain(&descs), 0).unwrap();
        // Forget the writes that set the test up.
        crate::virtio::tests::clear_dirty(&mem);
        assert!(dev.process_queue(0));
        let dirty = crate::virtio::tests::dirty_pages(&mem);
        let mut expected = vec![DATA / 4096, DATA / 4096 + 1, STATUS / 4096, used_page];
        expected.sort();
        expected.dedup();
        assert_eq!(dirty, expected);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_requests_get_error_statuses_not_panics() {
        let (mut dev, path) = block("bad", false);
        let mem = memory();
        let beyond = 64 * 1024 / 512;
        let cases: Vec<(&str, u32, u64, Vec<RawDescriptor>, u8)> = vec![
            (
                "read past the end",
                VIRTIO_BLK_T_IN,
                beyond - 1,
                rw(16, (DATA, 1024, W)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "sector overflow",
                VIRTIO_BLK_T_IN,
                u64::MAX / 2,
                rw(16, (DATA, 512, W)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "partial sector",
                VIRTIO_BLK_T_OUT,
                0,
                rw(16, (DATA, 100, 0)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "short header",
                VIRTIO_BLK_T_IN,
                0,
                rw(8, (DATA, 512, W)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "read into device-readable buffer",
                VIRTIO_BLK_T_IN,
                0,
                rw(16, (DATA, 512, 0)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "write from device-writable buffer",
                VIRTIO_BLK_T_OUT,
                0,
                rw(16, (DATA, 512, W)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "data outside guest memory",
                VIRTIO_BLK_T_IN,
                0,
                rw(16, (0x20_0000, 512, W)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "too long",
                VIRTIO_BLK_T_IN,
                0,
                rw(16, (DATA, (MAX_REQUEST_BYTES + 512) as u32, W)),
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "unknown type",
                99,
                0,
                vec![desc(HDR, 16, 0), desc(STATUS, 1, W)],
                VIRTIO_BLK_S_UNSUPP,
            ),
        ];
        for (what, kind, sector, descs, expected) in cases {
            let (st, _, ok) = run(&mut dev, &mem, kind, sector, &descs);
            assert_eq!(st, expected, "{what}");
            assert!(ok, "{what}: the device stays usable");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn readonly_disks_refuse_writes() {
        let (mut dev, path) = block("ro", true);
        assert_ne!(dev.device_features() & VIRTIO_BLK_F_RO, 0);
        let mem = memory();
        let (st, _, _) = run(&mut dev, &mem, VIRTIO_BLK_T_OUT, 0, &rw(16, (DATA, 512, 0)));
        assert_eq!(st, VIRTIO_BLK_S_IOERR);
        assert!(std::fs::read(&path).unwrap()[..512].iter().all(|&b| b == 0));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn chains_without_a_status_byte_need_a_reset() {
        let (mut dev, path) = block("nostatus", false);
        let mem = memory();
        let (_, len, ok) = run(
            &mut dev,
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0)],
        );
        assert!(!ok);
        assert_eq!(len, 0);
        // A status descriptor outside guest memory.
        let (_, _, ok) = run(
            &mut dev,
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[desc(HDR, 16, 0), desc(0x40_0000, 1, W)],
        );
        assert!(!ok);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn descriptor_loops_end_without_hanging() {
        let (mut dev, path) = block("loop", false);
        let mem = memory();
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // 0 -> 1 -> 0 -> ... with NEXT set on both.
        let next = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        vq.desc_table()
            .store(0, RawDescriptor::from(Descriptor::new(HDR, 16, next, 1)))
            .unwrap();
        vq.desc_table()
            .store(
                1,
                RawDescriptor::from(Descriptor::new(STATUS, 1, next | W, 0)),
            )
            .unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0u16);
        vq.avail().idx().store(1u16);
        let q: Queue = vq.create_queue().unwrap();
        let irq = Arc::new(VirtioInterrupt::new(Arc::new(CountingIrq::default())));
        dev.activate(mem.clone(), irq, vec![q]).unwrap();
        // Bounded: a device that followed the loop would never return.
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let healthy = dev.process_queue(0);
            let _ = tx.send(healthy);
            dev
        });
        let healthy = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("process_queue returns on a looping chain");
        drop(worker.join().unwrap());
        let used_idx: u16 = vq.used().idx().load();
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
        // The chain is cut at the queue size, the request completed with an I/O error status,
        // and the device stays usable.
        assert!(healthy, "the device does not need a reset");
        assert_eq!(used_idx, 1, "the request is completed");
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        std::fs::remove_file(path).unwrap();
    }
}
