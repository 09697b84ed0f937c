//! Guest RAM: anonymous mappings with a dirty bitmap (vm-memory's AtomicBitmap), so every write
//! the VMM itself makes into guest memory is recorded next to KVM's own dirty log.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub use devices::virtio::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {0} MiB of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed")]
    Register {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

pub fn create(layout: &arch::MemoryLayout) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&layout.ram).map_err(|e| MemoryError::Map(layout.total() >> 20, e))
}

/// Registers every region with KVM, slot i for region i.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<(), MemoryError> {
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
