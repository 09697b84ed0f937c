//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2 "Virtio Over MMIO"): the
//! register window a guest driver uses to discover a device, negotiate features, set up the
//! queues and drive the device status; queue notifications normally bypass it through
//! ioeventfds registered at QueueNotify.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use virtio_queue::QueueState;

use super::{GuestMemoryMmap, QueueSnapshot, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::BusDevice;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x1af4;

pub(crate) const REG_MAGIC: u64 = 0x000;
pub(crate) const REG_VERSION: u64 = 0x004;
pub(crate) const REG_DEVICE_ID: u64 = 0x008;
pub(crate) const REG_VENDOR_ID: u64 = 0x00c;
pub(crate) const REG_DEVICE_FEATURES: u64 = 0x010;
pub(crate) const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub(crate) const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub(crate) const REG_INTERRUPT_STATUS: u64 = 0x060;
pub(crate) const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub(crate) const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub(crate) const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub(crate) const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub(crate) const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub(crate) const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub(crate) const STATUS_DEVICE_NEEDS_RESET: u32 = 64;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    /// Queue configuration as the driver writes it, before activation.
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    /// While frozen (a migration's final phase), neither the guest's notifications nor the
    /// backends' events (a tap with frames to deliver) are processed, so nothing touches guest
    /// memory or queue state between the device snapshot and the end of the migration;
    /// thawing re-runs every queue and every backend that signalled, so none is lost.
    frozen: bool,
    /// Backend descriptors that became ready while frozen.
    backends_pending: Vec<std::os::fd::RawFd>,
}

/// Everything the transport and its device need to continue on another host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub status: u32,
    pub driver_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    /// The queues: as configured before activation, or as the device holds them after.
    pub queues: Vec<QueueSnapshot>,
    /// The device model's own state (typed per device kind).
    #[serde(default)]
    pub device: super::DeviceState,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("device type {found} where the source had {expected}")]
    DeviceType { expected: u32, found: u32 },
    #[error("{given} queues in the state, the device has {expected}")]
    QueueCount { given: usize, expected: usize },
    #[error("queue {0} state is invalid: {1}")]
    Queue(usize, String),
    #[error("activation failed: {0}")]
    Activate(#[from] super::ActivateError),
    #[error("the device's own state")]
    Device(#[from] super::DeviceStateError),
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            frozen: false,
            backends_pending: Vec::new(),
        }
    }

    pub fn snapshot(&self) -> TransportSnapshot {
        let queues = if self.status & STATUS_DRIVER_OK != 0 {
            self.device
                .queue_states()
                .into_iter()
                .map(QueueSnapshot::from)
                .collect()
        } else {
            self.queues
                .iter()
                .map(|q| QueueSnapshot::from(q.state()))
                .collect()
        };
        TransportSnapshot {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            queues,
            device: self.device.save_state(),
        }
    }

    /// Restores a snapshot into this (fresh) transport; it stays frozen until [`Self::thaw`].
    pub fn restore(&mut self, s: &TransportSnapshot) -> Result<(), RestoreError> {
        let found = self.device.device_type();
        if s.device_type != found {
            return Err(RestoreError::DeviceType {
                expected: s.device_type,
                found,
            });
        }
        let expected = self.device.queue_max_sizes().len();
        if s.queues.len() != expected {
            return Err(RestoreError::QueueCount {
                given: s.queues.len(),
                expected,
            });
        }
        let mut queues = Vec::with_capacity(expected);
        for (i, (q, &max)) in s
            .queues
            .iter()
            .zip(self.device.queue_max_sizes())
            .enumerate()
        {
            if q.max_size != max {
                return Err(RestoreError::Queue(
                    i,
                    format!("max size {} where the device has {max}", q.max_size),
                ));
            }
            let queue = Queue::try_from(QueueState::from(*q))
                .map_err(|e| RestoreError::Queue(i, format!("{e:?}")))?;
            // A queue the device will use must have its rings inside guest memory.
            if s.status & STATUS_DRIVER_OK != 0 && q.ready && !queue.is_valid(&self.mem) {
                return Err(RestoreError::Queue(
                    i,
                    format!(
                        "rings outside guest memory (descriptors {:#x}, available {:#x}, used {:#x})",
                        q.desc_table, q.avail_ring, q.used_ring
                    ),
                ));
            }
            queues.push(queue);
        }
        self.frozen = true;
        self.status = s.status;
        self.driver_features = s.driver_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        self.interrupt.set_status(s.interrupt_status);
        if s.status & STATUS_FEATURES_OK != 0 {
            self.device.set_driver_features(s.driver_features);
        }
        if s.status & STATUS_DRIVER_OK != 0 && s.status & STATUS_DEVICE_NEEDS_RESET == 0 {
            self.device
                .activate(self.mem.clone(), self.interrupt.clone(), queues)?;
        } else {
            self.queues = queues;
        }
        self.device.restore_state(&s.device)?;
        Ok(())
    }

    /// Stops processing notifications (they are picked up again by [`Self::thaw`]).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Resumes processing and re-runs every queue, then raises the interrupt once: a kick or
    /// an interrupt that fell into the frozen window (or a migration) must not be lost.
    pub fn thaw(&mut self) {
        self.frozen = false;
        let pending = std::mem::take(&mut self.backends_pending);
        if self.is_active() {
            self.process_all_queues();
            for fd in pending {
                self.device.process_backend(fd);
            }
            self.interrupt.signal_used_queue();
        }
    }

    /// Called by the event loop when a backend descriptor of the device is ready (edge
    /// triggered: the event is not repeated). While frozen it is remembered for [`Self::thaw`].
    pub fn backend_ready(&mut self, fd: std::os::fd::RawFd) {
        if !self.is_active() {
            return;
        }
        if self.frozen {
            if !self.backends_pending.contains(&fd) {
                self.backends_pending.push(fd);
            }
            return;
        }
        self.device.process_backend(fd);
    }

    fn process_all_queues(&mut self) {
        for i in 0..self.device.queue_max_sizes().len() {
            if !self.device.process_queue(i) {
                self.needs_reset();
                return;
            }
        }
    }

    #[cfg(test)]
    fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect()
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub(crate) fn is_active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_DEVICE_NEEDS_RESET == 0
    }

    /// Called by the event loop when the guest notified queue `index`.
    pub fn notify_queue(&mut self, index: usize) {
        if !self.is_active() || self.frozen {
            return;
        }
        if !self.device.process_queue(index) {
            self.needs_reset();
        }
    }

    /// The device met a request it cannot complete: tell the driver (spec 2.1.2).
    fn needs_reset(&mut self) {
        log::warn!(
            "virtio-mmio: device type {} needs a reset",
            self.device.device_type()
        );
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.interrupt.signal_config();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        // Queue and feature setup is only allowed before the driver finishes (spec 4.2.3).
        let setting_up = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if setting_up && self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM if setting_up => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY if setting_up => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH
                if setting_up =>
            {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                let (low, high) = if offset.is_multiple_of(8) {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                match offset & !7 {
                    REG_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                    REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                    _ => q.set_used_ring_address(low, high),
                }
            }
            REG_QUEUE_NOTIFY => self.notify_queue(value as usize),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            _ => log::debug!(
                "virtio-mmio: ignored write {value:#x} to register {offset:#x} (status {:#x})",
                self.status
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device.device_features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // A feature we did not offer, or a legacy driver: leave FEATURES_OK unset so the
                // driver sees the negotiation failed (spec 3.1.1).
                log::warn!(
                    "virtio-mmio: refusing driver features {:#x} (offered {offered:#x})",
                    self.driver_features
                );
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
            self.device.set_driver_features(self.driver_features);
        }
        self.status = value;
        if newly & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.is_valid(&self.mem) {
                log::warn!(
                    "virtio-mmio: queue {i} of device type {} is not valid",
                    self.device.device_type()
                );
                self.needs_reset();
                return;
            }
        }
        let queues = std::mem::replace(&mut self.queues, Self::fresh_queues(self.device.as_ref()));
        if let Err(e) = self
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), queues)
        {
            log::warn!("virtio-mmio: activation failed: {e}");
            self.needs_reset();
            return;
        }
        // Buffers posted before the driver set DRIVER_OK (and frames already waiting on a
        // backend) are picked up now.
        if !self.frozen {
            self.process_all_queues();
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            // Registers are 32-bit; other widths are a driver bug (spec 4.2.2.2).
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            self.write_reg(offset, u32::from_le_bytes(data.try_into().unwrap()));
        }
    }
}

/// The kernel command-line entry announcing a virtio-mmio device (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
pub fn cmdline_entry(base: u64, size: u64, irq: u32) -> String {
    format!("virtio_mmio.device={}K@{:#x}:{}", size >> 10, base, irq)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    pub struct CountingIrq(pub AtomicUsize);
    impl crate::Interrupt for CountingIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Log {
        activated: Option<usize>,
        notified: Vec<usize>,
        backend: Vec<std::os::fd::RawFd>,
        resets: usize,
        features: u64,
    }

    struct Dummy(Arc<Mutex<Log>>, [u16; 2]);
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.1
        }
        fn device_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0x3
        }
        fn set_driver_features(&mut self, f: u64) {
            self.0.lock().unwrap().features = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data)
        }
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Arc<VirtioInterrupt>,
            q: Vec<Queue>,
        ) -> Result<(), super::super::ActivateError> {
            self.0.lock().unwrap().activated = Some(q.len());
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
        fn process_queue(&mut self, index: usize) -> bool {
            self.0.lock().unwrap().notified.push(index);
            true
        }
        fn process_backend(&mut self, fd: std::os::fd::RawFd) {
            self.0.lock().unwrap().backend.push(fd);
        }
    }
    impl crate::virtio::Persist for Dummy {
        fn queue_states(&self) -> Vec<QueueState> {
            vec![
                Queue::new(16).unwrap().state(),
                Queue::new(8).unwrap().state(),
            ]
        }
    }
    impl crate::virtio::HostBackend for Dummy {}

    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let irq = Arc::new(VirtioInterrupt::new(Arc::new(CountingIrq::default())));
        (
            MmioTransport::new(Box::new(Dummy(log.clone(), [16, 8])), memory(), irq),
            log,
        )
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, base: u64) {
        wr(t, REG_QUEUE_SEL, sel);
        wr(t, REG_QUEUE_NUM, 8);
        wr(t, REG_QUEUE_DESC_LOW, base as u32);
        wr(t, REG_QUEUE_DESC_HIGH, 0);
        wr(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        wr(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        wr(t, REG_QUEUE_READY, 1);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 2);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 8);
        wr(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0, "no such queue");
        let mut cfg = [0u8; 4];
        t.read(CONFIG_SPACE + 6, &mut cfg);
        assert_eq!(cfg, [7, 8, 0, 0]);
        let mut narrow = [0xffu8; 2];
        t.read(REG_MAGIC, &mut narrow);
        assert_eq!(narrow, [0, 0]);
    }

    #[test]
    fn full_driver_handshake_activates_and_notifies() {
        let (mut t, log) = transport();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, REG_DRIVER_FEATURES, 0x1);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x10000);
        setup_queue(&mut t, 1, 0x20000);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(log.lock().unwrap().activated, Some(2));
        assert_eq!(log.lock().unwrap().features, VIRTIO_F_VERSION_1 | 1);
        // Activation runs every queue once (buffers posted before DRIVER_OK), then the kick.
        wr(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(log.lock().unwrap().notified, vec![0, 1, 1]);
        // Queue setup is frozen once the driver is done.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(
            rd(&mut t, REG_QUEUE_READY),
            0,
            "queues moved into the device at activation"
        );
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
    }

    fn activated() -> (MmioTransport, Arc<Mutex<Log>>) {
        let (mut t, log) = transport();
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        setup_queue(&mut t, 0, 0x10000);
        setup_queue(&mut t, 1, 0x20000);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        (t, log)
    }

    #[test]
    fn frozen_transports_defer_notifications_until_thawed() {
        let (mut t, log) = activated();
        log.lock().unwrap().notified.clear();
        t.freeze();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert!(log.lock().unwrap().notified.is_empty());
        t.thaw();
        assert_eq!(
            log.lock().unwrap().notified,
            vec![0, 1],
            "every queue re-run"
        );
        assert_ne!(
            rd(&mut t, REG_INTERRUPT_STATUS) & super::super::INTERRUPT_USED_RING,
            0
        );
    }

    #[test]
    fn frozen_transports_defer_backend_events_until_thawed() {
        let (mut t, log) = activated();
        t.freeze();
        t.backend_ready(7);
        t.backend_ready(7);
        assert!(
            log.lock().unwrap().backend.is_empty(),
            "a frozen device took a frame"
        );
        t.thaw();
        assert_eq!(
            log.lock().unwrap().backend,
            vec![7],
            "the event is replayed once"
        );
        t.backend_ready(7);
        assert_eq!(log.lock().unwrap().backend, vec![7, 7]);
    }

    #[test]
    fn snapshot_restores_into_a_fresh_transport() {
        let (t, _) = activated();
        let snap = t.snapshot();
        assert_eq!(snap.queues.len(), 2);
        let (mut fresh, log) = transport();
        fresh.restore(&snap).unwrap();
        assert_eq!(log.lock().unwrap().activated, Some(2));
        assert_eq!(log.lock().unwrap().features, VIRTIO_F_VERSION_1);
        assert!(fresh.is_frozen());
        assert!(
            log.lock().unwrap().notified.is_empty(),
            "nothing runs before thaw"
        );
        assert_eq!(rd(&mut fresh, REG_STATUS), snap.status);
        let mut wrong = snap.clone();
        wrong.device_type = 1;
        assert!(matches!(
            transport().0.restore(&wrong),
            Err(RestoreError::DeviceType { .. })
        ));
        let mut bad = snap.clone();
        bad.queues[1].size = 3; // not a power of two
        assert!(matches!(
            transport().0.restore(&bad),
            Err(RestoreError::Queue(1, _))
        ));
        let mut outside = snap.clone();
        outside.queues[0].ready = true;
        outside.queues[0].desc_table = 0x4000_0000; // beyond the 1 MiB of guest memory
        assert!(matches!(
            transport().0.restore(&outside),
            Err(RestoreError::Queue(0, m)) if m.contains("outside guest memory")
        ));
        let mut far_sel = snap.clone();
        far_sel.queue_sel = u32::MAX; // an index no queue has: registers read as zero
        let (mut t, _) = transport();
        t.restore(&far_sel).unwrap();
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut short = snap;
        short.queues.pop();
        assert!(matches!(
            transport().0.restore(&short),
            Err(RestoreError::QueueCount { .. })
        ));
    }

    #[test]
    fn unoffered_features_or_legacy_drivers_fail_negotiation() {
        let (mut t, _) = transport();
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, REG_DRIVER_FEATURES, 0x4); // not offered
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, _) = transport();
        wr(&mut t, REG_DRIVER_FEATURES, 0x1); // no VERSION_1
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn invalid_queue_addresses_mark_the_device_as_needing_reset() {
        let (mut t, log) = transport();
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        setup_queue(&mut t, 0, 0x10000);
        setup_queue(&mut t, 1, 0x4000_0000); // outside guest memory
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(log.lock().unwrap().activated, None);
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_ne!(
            rd(&mut t, REG_INTERRUPT_STATUS) & super::super::INTERRUPT_CONFIG,
            0
        );
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert!(log.lock().unwrap().notified.is_empty());
    }

    #[test]
    fn cmdline_entries() {
        assert_eq!(
            cmdline_entry(0xd000_0000, 0x1000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }
}
