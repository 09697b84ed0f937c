//! The host resources a device holds (a disk image and its lock, a tap) and what a migration
//! does with them: flush before the final state, let go at the source's commit, take over at
//! the destination's, and tell the network where the device now is.

/// See [`HostBackend::backend_flush`].
pub type BackendFlush = Box<dyn FnOnce() -> Result<(), BackendError> + Send>;

/// A device's host backend failed a migration step.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot flush {0}")]
    Flush(std::path::PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Disk(#[from] super::block::DiskError),
}

pub trait HostBackend {
    /// Let go of host resources another host will take over (the disk lock at migration commit).
    fn release_backend(&mut self) {}
    /// Take the host resources back (after a migration commit on the destination).
    fn acquire_backend(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Tell the network where this device now is (after a migration): RARP from its MAC.
    fn announce(&mut self) {}
    /// A flush of the backend (the disk before the final migration state) that runs apart
    /// from the device: it makes the writes completed so far durable, and may take as long
    /// as the storage does (a stalled NFS server) without holding the device's lock.
    fn backend_flush(&self) -> Result<Option<BackendFlush>, BackendError> {
        Ok(None)
    }
}
