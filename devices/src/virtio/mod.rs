//! Virtio 1.x devices over the MMIO transport. A device implements [`VirtioDevice`]; the
//! [`mmio::MmioTransport`] exposes its registers to the guest, and the VMM's event loop calls
//! [`VirtioDevice::process_queue`] when the guest notifies a queue (through an ioeventfd).
//! A device also implements [`Persist`] (its state, typed, for a migration) and
//! [`HostBackend`] (its host resources, handed over at a migration's commit).
//! Every write a device makes into guest memory goes through vm-memory with the dirty bitmap,
//! so live migration sees it.

pub mod block;
pub mod host_backend;
pub mod mmio;
pub mod net;
pub mod persist;

pub use host_backend::{BackendError, BackendFlush, HostBackend};
pub use persist::{DeviceState, DeviceStateError, NetState, Persist};

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueState};

/// Why a queue's state was refused (see [`QueueSnapshot::validate`]).
pub use virtio_queue::Error as QueueError;
use vm_memory::bitmap::AtomicBitmap;

use crate::Interrupt;

/// Guest memory as devices see it: mmap'd regions with a dirty bitmap.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;

pub(crate) const TYPE_NET: u32 = 1;
pub(crate) const TYPE_BLOCK: u32 = 2;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Bits of the MMIO InterruptStatus register.
pub(crate) const INTERRUPT_USED_RING: u32 = 1;
pub(crate) const INTERRUPT_CONFIG: u32 = 2;

/// A device's interrupt line plus the status the guest reads back and acknowledges.
pub struct VirtioInterrupt {
    status: AtomicU32,
    line: Arc<dyn Interrupt>,
}

impl VirtioInterrupt {
    pub fn new(line: Arc<dyn Interrupt>) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            line,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            log::warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    /// The device put buffers in a used ring.
    pub(crate) fn signal_used_queue(&self) {
        self.raise(INTERRUPT_USED_RING);
    }

    /// The configuration (or the device status, e.g. DEVICE_NEEDS_RESET) changed.
    pub(crate) fn signal_config(&self) {
        self.raise(INTERRUPT_CONFIG);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Restores the pending bits (migration).
    pub(crate) fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {given} queues, the device needs {needed}")]
    QueueCount { given: usize, needed: usize },
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
}

/// The device side of a virtio device: its own work (features, config, queues, backend
/// events). What moves with a migration is [`Persist`]; the host resources it holds are
/// [`HostBackend`].
pub trait VirtioDevice: Send + Persist + HostBackend {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (VIRTIO_F_VERSION_1 included).
    fn device_features(&self) -> u64;
    /// Features the driver accepted (a subset of the offer, checked by the transport).
    fn set_driver_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start using the queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    /// The driver wrote 0 to the status register: drop the queues, keep the backend.
    fn reset(&mut self);
    /// The guest notified queue `index`. Returns false if the device now needs a reset
    /// (a request it cannot complete, not even with an error status).
    fn process_queue(&mut self, index: usize) -> bool;
    /// Other file descriptors the event loop should watch for this device (a tap).
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// One of [`Self::backend_fds`] is readable.
    fn process_backend(&mut self, _fd: RawFd) {}
}

/// A queue's state in a form that serialises (virtio-queue's QueueState has no serde).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl QueueSnapshot {
    /// Checks what a queue would refuse to take: a size that is zero, over the maximum or not a
    /// power of two, misaligned rings.
    pub fn validate(&self) -> Result<(), virtio_queue::Error> {
        virtio_queue::Queue::try_from(QueueState::from(*self)).map(|_| ())
    }
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// Copies a little-endian config structure's bytes at `offset` into `data`; reads past the
/// end return zeros (the spec leaves them undefined; zeros are the safe choice).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::GuestMemoryMmap;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    /// Forgets every write recorded so far.
    pub fn clear_dirty(mem: &GuestMemoryMmap) {
        for region in mem.iter() {
            std::ops::Deref::deref(region).bitmap().reset();
        }
    }

    /// Guest page numbers the dirty bitmap holds.
    pub fn dirty_pages(mem: &GuestMemoryMmap) -> Vec<u64> {
        let mut pages = Vec::new();
        for region in mem.iter() {
            let bitmap = std::ops::Deref::deref(region).bitmap();
            for page in 0..region.len() / 4096 {
                if bitmap.is_addr_set((page * 4096) as usize) {
                    pages.push(region.start_addr().0 / 4096 + page);
                }
            }
        }
        pages
    }
}
