//! What the protocol needs from a VM, on each side. The VMM implements these over KVM; tests
//! implement them over plain memory. Failures cross this boundary as [`VmError`]: which step
//! failed, with the implementation's own error as its source.

use crate::dirty::DirtyBitmap;

/// A run of guest RAM: guest-physical start and number of 4 KiB pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RamRegion {
    pub gpa: u64,
    pub pages: usize,
}

/// The error an implementation gives back, kept as the source of a [`VmError`].
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot describe the VM")]
    Config(#[source] Cause),
    #[error("guest memory access failed")]
    Memory(#[source] Cause),
    #[error("dirty-page tracking failed")]
    DirtyLog(#[source] Cause),
    #[error("cannot pause the guest")]
    Pause(#[source] Cause),
    #[error("cannot resume the guest")]
    Resume(#[source] Cause),
    #[error("cannot capture the guest's state")]
    Save(#[source] Cause),
    #[error("cannot restore the guest's state")]
    Restore(#[source] Cause),
    #[error("cannot take the disks over")]
    Acquire(#[source] Cause),
    #[error("cannot build the VM here")]
    Build(#[source] Cause),
    /// The destination's checks turned the VM down; the text says why, for the source.
    #[error("{0}")]
    Refused(String),
}

pub type VmResult<T> = Result<T, VmError>;

/// The running VM being migrated away.
pub trait SourceVm: Send + Sync {
    /// The VM's configuration as the destination needs it to build an empty twin (an envelope).
    fn config(&self) -> VmResult<Vec<u8>>;
    fn regions(&self) -> Vec<RamRegion>;
    /// Copies guest memory at `gpa` into `buf`.
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> VmResult<()>;
    /// Whether the page at `gpa` holds only zero bytes right now (so it need not be copied).
    fn page_is_zero(&self, gpa: u64) -> VmResult<bool> {
        let mut page = [0u8; 4096];
        self.read_memory(gpa, &mut page)?;
        Ok(crate::dirty::is_zero_page(&page))
    }
    /// Starts recording writes (KVM dirty log and the VMM's own writes) and forgets older ones.
    fn start_dirty_log(&self) -> VmResult<()>;
    fn stop_dirty_log(&self);
    /// Pages written since they were last cleared (by this call, or by [`Self::clear_dirty`]
    /// where the implementation clears lazily), one bitmap per region.
    fn take_dirty(&self) -> VmResult<Vec<DirtyBitmap>>;
    /// Called right before the pages set in `words` (64 a word, from page `first_page` of
    /// region `region`, a multiple of 64) are read to be sent: an implementation that clears
    /// the dirty log lazily (KVM's manual protection) clears those pages now, so a write after
    /// the read is caught by the next [`Self::take_dirty`] and one before it is not sent twice.
    fn clear_dirty(&self, _region: usize, _first_page: usize, _words: &[u64]) -> VmResult<()> {
        Ok(())
    }
    /// KVM's dirty log of `region` as it is now, cleared of nothing: pages written since they
    /// were last cleared. None where the log cannot be read without clearing it.
    fn peek_dirty(&self, _region: usize) -> VmResult<Option<DirtyBitmap>> {
        Ok(None)
    }
    /// Stops the guest: vCPUs out of guest mode, devices frozen; bounded in time. On failure
    /// the guest runs as before.
    fn pause(&self) -> VmResult<()>;
    /// Flushes the guest's disks to stable storage: once while it still runs, just before the
    /// switchover (so that the flush inside the pause has only the last writes to carry), and
    /// once paused (before the destination may open them). May block for as long as the
    /// storage does (the migration runs it where its deadlines still fire).
    fn flush(&self) -> VmResult<()> {
        Ok(())
    }
    /// Lets the guest run again (a migration that failed before commit), or leaves it paused
    /// if its user had paused it before the migration.
    fn resume(&self) -> VmResult<()>;
    /// Device, vCPU and VM state of the paused guest (an envelope).
    fn save_state(&self) -> VmResult<Vec<u8>>;
    /// Lets go of what the destination takes over (disk locks); after this the source never runs the guest again.
    fn release(&self);
    /// Slows the vCPUs to `percent` of their time slices (auto-converge); 0 = no throttling.
    fn throttle(&self, percent: u8);
}

/// An empty VM on the destination, built from the source's config. Pages arrive on several
/// connections at once: memory writes take `&self` and may run concurrently (on different
/// pages).
pub trait TargetVm: Send + Sync {
    fn regions(&self) -> Vec<RamRegion>;
    fn write_memory(&self, gpa: u64, data: &[u8]) -> VmResult<()>;
    /// Makes `len` bytes at `gpa` zero.
    fn zero_memory(&self, gpa: u64, len: usize) -> VmResult<()>;
    fn restore_state(&self, state: &[u8]) -> VmResult<()>;
    /// Takes over what the source released (disk locks, page caches dropped): one attempt,
    /// which fails while another process still holds a disk; the receiver retries.
    fn acquire(&self) -> VmResult<()>;
    /// Starts the guest (devices re-signalled, clock notified, MAC announced).
    fn resume(&self) -> VmResult<()>;
}

/// Checks a source's config and builds the empty VM, or says why it cannot.
pub trait TargetBuilder {
    fn build(&mut self, config: &[u8]) -> VmResult<Box<dyn TargetVm>>;
}

/// Finds the region holding `pages` pages at `gpa`.
pub(crate) fn region_index(regions: &[RamRegion], gpa: u64, pages: usize) -> Option<usize> {
    let end = gpa.checked_add((pages as u64).checked_mul(4096)?)?;
    regions
        .iter()
        .position(|r| gpa >= r.gpa && end <= r.gpa + r.pages as u64 * 4096)
}
