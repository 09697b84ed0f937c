//! The virtio-net device: RX (queue 0) fills guest buffers with frames from the backend, TX
//! (queue 1) sends the guest's frames; config space carries the MAC and the link status.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::{MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::{
    read_config_bytes, ActivateError, GuestMemoryMmap, VirtioDevice, VirtioInterrupt, TYPE_NET,
    VIRTIO_F_VERSION_1,
};
use crate::virtio::{DeviceState, DeviceStateError, HostBackend, NetState, Persist};

/// The guest may hand frames with a partial checksum, and TCP segments of up to 64 KiB, to the
/// device: the tap (which receives the virtio-net header too) finishes them. One large frame
/// instead of forty small ones per exit is what makes guest-to-host TCP fast.
const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// Where frames come from and go to: a tap in production, a socket pair in tests.
pub trait NetBackend: Send {
    /// Reads one frame (with its virtio-net header); WouldBlock when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    fn fd(&self) -> RawFd;
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
}

pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    config: Vec<u8>,
    active: Option<Active>,
    /// A frame read from the backend that found no guest buffer yet.
    rx_pending: Option<Vec<u8>>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

impl Net {
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        // struct virtio_net_config: mac[6], status (le16).
        let mut config = mac.to_vec();
        config.extend_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Net {
            backend,
            mac,
            config,
            active: None,
            rx_pending: None,
            rx_buf: vec![0; MAX_FRAME_LEN],
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends every frame the guest queued on TX. False if the queue itself is broken.
    fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return true;
        };
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            let chain = match active.tx.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    log::warn!("virtio-net: cannot read the TX ring: {e}");
                    return false;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            self.tx_buf.clear();
            match Reader::new(mem, chain) {
                Ok(mut reader)
                    if reader.available_bytes() <= MAX_FRAME_LEN
                        && reader.available_bytes() > VNET_HDR_LEN =>
                {
                    if reader.read_to_end(&mut self.tx_buf).is_ok() {
                        if let Err(e) = self.backend.send(&self.tx_buf) {
                            // A full or downed tap drops the frame, as a wire would.
                            log::debug!("virtio-net: TX dropped: {e}");
                        }
                    }
                }
                Ok(reader) => log::debug!(
                    "virtio-net: TX frame of {} bytes dropped",
                    reader.available_bytes()
                ),
                Err(e) => log::debug!("virtio-net: TX chain outside guest memory: {e}"),
            }
            if active.tx.add_used(mem, head, 0).is_err() {
                return false;
            }
            used_any = true;
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
        true
    }

    /// Moves frames from the backend into guest RX buffers until the backend is drained or
    /// the guest has no buffer left (the rest waits for the next RX notification).
    fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return true;
        };
        let mem = &active.mem;
        let mut used_any = false;
        let healthy = loop {
            let frame = match self.rx_pending.take() {
                Some(f) => f,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(0) => break true,
                    Ok(n) => self.rx_buf[..n].to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                    Err(e) => {
                        log::warn!("virtio-net: backend read failed: {e}");
                        break true;
                    }
                },
            };
            let chain = match active.rx.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    log::warn!("virtio-net: cannot read the RX ring: {e}");
                    break false;
                }
            };
            let Some(chain) = chain else {
                self.rx_pending = Some(frame);
                break true;
            };
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut w) if w.available_bytes() >= frame.len() => {
                    let mut frame = frame;
                    // num_buffers (last field of the v1 header) is 1 without MRG_RXBUF.
                    if frame.len() >= VNET_HDR_LEN {
                        frame[10..12].copy_from_slice(&1u16.to_le_bytes());
                    }
                    if w.write_all(&frame).is_ok() {
                        frame.len() as u32
                    } else {
                        0
                    }
                }
                Ok(w) => {
                    log::debug!(
                        "virtio-net: RX buffer of {} bytes too small for a {}-byte frame",
                        w.available_bytes(),
                        frame.len()
                    );
                    0
                }
                Err(e) => {
                    log::debug!("virtio-net: RX chain outside guest memory: {e}");
                    0
                }
            };
            if active.rx.add_used(mem, head, written).is_err() {
                break false;
            }
            used_any = true;
        };
        if used_any {
            active.interrupt.signal_used_queue();
        }
        healthy
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
    }

    fn set_driver_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let [rx, tx]: [Queue; 2] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| ActivateError::QueueCount {
                    given: q.len(),
                    needed: 2,
                })?;
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            RX => self.process_rx(),
            TX => self.process_tx(),
            _ => true,
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.backend.fd()]
    }

    fn process_backend(&mut self, _fd: RawFd) {
        self.process_rx();
    }
}

impl Persist for Net {
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active
            .iter()
            .flat_map(|a| [a.rx.state(), a.tx.state()])
            .collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Net(NetState {
            rx_pending: self.rx_pending.clone().unwrap_or_default(),
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let net = match state {
            DeviceState::Net(net) => net,
            // A source of format 1.0 sent no typed state: nothing was pending.
            DeviceState::Stateless => {
                self.rx_pending = None;
                return Ok(());
            }
        };
        if net.rx_pending.len() > MAX_FRAME_LEN {
            return Err(DeviceStateError::FrameTooLong(net.rx_pending.len()));
        }
        self.rx_pending = (!net.rx_pending.is_empty()).then(|| net.rx_pending.clone());
        Ok(())
    }
}

impl HostBackend for Net {
    fn announce(&mut self) {
        let frame = super::rarp_frame(self.mac);
        for _ in 0..3 {
            if let Err(e) = self.backend.send(&frame) {
                log::warn!(
                    "virtio-net: cannot announce {}: {e}",
                    super::format_mac(&self.mac)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mmio::tests::{memory, CountingIrq};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// One end of a datagram socket pair standing in for the tap.
    struct Pair(UnixDatagram);
    impl NetBackend for Pair {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.recv(buf)
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            self.0.send(frame)
        }
        fn fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    fn net() -> (Net, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (Net::new(Box::new(Pair(a)), [0x52, 0x54, 0, 1, 2, 3]), b)
    }

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend(std::iter::repeat_n(fill, len));
        f
    }

    fn single(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    struct Setup<'a> {
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
    }

    fn activate<'a>(dev: &mut Net, mem: &'a GuestMemoryMmap) -> Setup<'a> {
        let rx = MockSplitQueue::create(mem, GuestAddress(0x0), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x8000), 16);
        let irq = Arc::new(VirtioInterrupt::new(Arc::new(CountingIrq::default())));
        dev.activate(
            mem.clone(),
            irq,
            vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
        )
        .unwrap();
        Setup { rx, tx }
    }

    #[test]
    fn a_pending_frame_moves_in_the_typed_state_and_bad_states_are_refused() {
        let (mut src, _) = net();
        src.rx_pending = Some(frame(100, 0x42));
        let saved = src.save_state();
        let (mut dst, _) = net();
        dst.restore_state(&saved).unwrap();
        assert_eq!(dst.rx_pending, src.rx_pending);
        assert_eq!(dst.save_state(), saved);
        // A frame no tap delivers is refused.
        let huge = DeviceState::Net(NetState {
            rx_pending: vec![0; MAX_FRAME_LEN + 1],
        });
        assert_eq!(
            dst.restore_state(&huge),
            Err(DeviceStateError::FrameTooLong(MAX_FRAME_LEN + 1))
        );
        // Nothing pending, or a source that sent no device state: nothing restored.
        let (idle, _) = net();
        dst.restore_state(&idle.save_state()).unwrap();
        assert_eq!(dst.rx_pending, None);
        src.restore_state(&DeviceState::Stateless).unwrap();
        assert_eq!(src.rx_pending, None);
    }

    #[test]
    fn config_space_holds_mac_and_link_up() {
        let (dev, _) = net();
        let mut cfg = [0u8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [0x52, 0x54, 0, 1, 2, 3, 1, 0]);
    }

    #[test]
    fn tx_sends_header_and_frame_to_the_backend() {
        let (mut dev, peer) = net();
        let mem = memory();
        let s = activate(&mut dev, &mem);
        let f = frame(60, 0xab);
        mem.write_slice(&f[..VNET_HDR_LEN], GuestAddress(0x40000))
            .unwrap();
        mem.write_slice(&f[VNET_HDR_LEN..], GuestAddress(0x41000))
            .unwrap();
        let next = VRING_DESC_F_NEXT as u16;
        s.tx.add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(0x40000, VNET_HDR_LEN as u32, next, 1)),
                single(0x41000, 60, 0),
            ],
            0,
        )
        .unwrap();
        assert!(dev.process_queue(TX));
        let mut got = [0u8; 200];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..]);
        assert_eq!(s.tx.used().idx().load(), 1);
    }

    #[test]
    fn rx_fills_a_guest_buffer_and_marks_exactly_its_pages_dirty() {
        let (mut dev, peer) = net();
        let mem = memory();
        let s = activate(&mut dev, &mem);
        // A buffer straddling a page boundary.
        s.rx.add_desc_chains(&[single(0x50f00, 2048, VRING_DESC_F_WRITE as u16)], 0)
            .unwrap();
        let f = frame(1000, 0x5a);
        peer.send(&f).unwrap();
        crate::virtio::tests::clear_dirty(&mem);
        dev.process_backend(0);
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got, GuestAddress(0x50f00)).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        let used = s.rx.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), f.len() as u32);
        let used_page = s.rx.used_addr().0 / 4096;
        let mut expected = vec![0x50, 0x51, used_page];
        expected.sort();
        assert_eq!(crate::virtio::tests::dirty_pages(&mem), expected);
    }

    #[test]
    fn rx_waits_for_buffers_and_resumes_on_notification() {
        let (mut dev, peer) = net();
        let mem = memory();
        let s = activate(&mut dev, &mem);
        peer.send(&frame(100, 1)).unwrap();
        peer.send(&frame(100, 2)).unwrap();
        dev.process_backend(0);
        assert_eq!(s.rx.used().idx().load(), 0, "no buffers yet");
        s.rx.add_desc_chains(
            &[
                single(0x50000, 2048, VRING_DESC_F_WRITE as u16),
                single(0x51000, 2048, VRING_DESC_F_WRITE as u16),
            ],
            0,
        )
        .unwrap();
        assert!(dev.process_queue(RX));
        assert_eq!(s.rx.used().idx().load(), 2);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x50000 + VNET_HDR_LEN as u64))
                .unwrap(),
            1
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x51000 + VNET_HDR_LEN as u64))
                .unwrap(),
            2
        );
    }

    #[test]
    fn bad_guest_buffers_drop_frames_without_panicking() {
        let (mut dev, peer) = net();
        let mem = memory();
        let s = activate(&mut dev, &mem);
        // RX: a buffer too small, a device-readable buffer, one outside guest memory.
        s.rx.add_desc_chains(
            &[
                single(0x50000, 16, VRING_DESC_F_WRITE as u16),
                single(0x51000, 2048, 0),
                single(0x4000_0000, 2048, VRING_DESC_F_WRITE as u16),
            ],
            0,
        )
        .unwrap();
        for i in 0..3 {
            peer.send(&frame(100, i)).unwrap();
        }
        assert!(dev.process_backend_checked());
        assert_eq!(s.rx.used().idx().load(), 3);
        for i in 0..3 {
            assert_eq!(s.rx.used().ring().ref_at(i).unwrap().load().len(), 0);
        }
        // TX: header only, oversized, outside memory.
        s.tx.add_desc_chains(
            &[
                single(0x60000, VNET_HDR_LEN as u32, 0),
                single(0x60000, (MAX_FRAME_LEN + 1) as u32, 0),
                single(0x4000_0000, 100, 0),
            ],
            0,
        )
        .unwrap();
        assert!(dev.process_queue(TX));
        assert_eq!(s.tx.used().idx().load(), 3);
        let mut buf = [0u8; 16];
        assert!(peer.recv(&mut buf).is_err(), "nothing was sent");
    }

    impl Net {
        fn process_backend_checked(&mut self) -> bool {
            self.process_rx()
        }
    }
}
