//! Guest RAM: anonymous mappings with a dirty bitmap (vm-memory's AtomicBitmap), so every write
//! the VMM itself makes into guest memory is recorded next to KVM's own dirty log.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub(crate) use devices::virtio::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MemoryError {
    #[error("cannot map {0} MiB of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed")]
    Register {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

pub(crate) fn create(layout: &arch::MemoryLayout) -> Result<GuestMemoryMmap, MemoryError> {
    let mem = GuestMemoryMmap::from_ranges(&layout.ram)
        .map_err(|e| MemoryError::Map(layout.total() >> 20, e))?;
    // Transparent huge pages where the host offers them (`madvise` mode): fewer faults and
    // page-table levels for the guest, and a migration destination fills 2 MiB per fault.
    for region in mem.iter() {
        // SAFETY: the range is the region's own anonymous mapping, which lives as long as
        // `mem`; MADV_HUGEPAGE only changes how the kernel backs it, never its contents.
        unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
    }
    Ok(mem)
}

/// Whether `mem` has exactly the regions of `layout`.
pub(crate) fn matches(mem: &GuestMemoryMmap, layout: &arch::MemoryLayout) -> bool {
    let have: Vec<(u64, usize)> = mem
        .iter()
        .map(|r| (r.start_addr().0, r.len() as usize))
        .collect();
    let want: Vec<(u64, usize)> = layout.ram.iter().map(|(a, n)| (a.0, *n)).collect();
    have == want
}

/// Registers every region with KVM, slot i for region i.
pub(crate) fn register(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region stays mapped for as long as the VM exists: the VM owns `mem`,
        // and the mapping is only dropped after the VM fd (and its vCPUs) are closed.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

/// Faults every page of guest memory in, in address order, on a thread of its own: a
/// migration destination does this while pages arrive, so the kernel's zeroing of fresh pages
/// (first touch) happens beside the receive path rather than in it. Pages already written are
/// left as they are (MADV_POPULATE_WRITE only fills holes). `done` runs when it is over.
pub(crate) fn prefault_in_background(mem: &GuestMemoryMmap, done: impl FnOnce() + Send + 'static) {
    let mem = mem.clone();
    let spawned = std::thread::Builder::new()
        .name("prefault".into())
        .spawn(move || {
            crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Helper);
            // Small steps: each holds the address-space lock (for reading) while it runs, and
            // a thread that maps memory (a new thread's stack) waits for it.
            const CHUNK: usize = 4 << 20;
            for region in mem.iter() {
                let (base, len) = (region.as_ptr(), region.len() as usize);
                let mut at = 0;
                while at < len {
                    let n = CHUNK.min(len - at);
                    // SAFETY: the range lies inside the region's own mapping, kept alive by
                    // this thread's clone of the memory; populating changes no contents.
                    let r =
                        unsafe { libc::madvise(base.add(at).cast(), n, libc::MADV_POPULATE_WRITE) };
                    if r != 0 {
                        // An older kernel without MADV_POPULATE_WRITE: pages fault in on use.
                        return;
                    }
                    at += n;
                }
            }
            done();
        });
    if let Err(e) = spawned {
        log::debug!("no prefault thread: {e}");
    }
}
