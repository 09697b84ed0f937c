//! KVM's dirty log with manual protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): reading the log
//! does not clear it nor write-protect anything; the migration clears (and so re-protects)
//! exactly the pages it is about to send, with KVM_CLEAR_DIRTY_LOG. With
//! KVM_DIRTY_LOG_INITIALLY_SET the log starts full, so turning logging on write-protects
//! nothing up front either: round 0 protects memory stripe by stripe as it sends it.

use kvm_bindings::{kvm_clear_dirty_log, kvm_enable_cap, KVMIO};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

const MANUAL_PROTECT_ENABLE: u64 = 1;

/// Turns manual protection on for this VM if KVM offers it; returns whether it did. It stays
/// on for the VM's life (every later migration uses it too).
pub(crate) fn enable_manual_protect(kvm: &Kvm, vm: &VmFd) -> bool {
    let offered =
        kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2));
    if offered <= 0 {
        return false;
    }
    let wanted = MANUAL_PROTECT_ENABLE | u64::from(kvm_bindings::KVM_DIRTY_LOG_INITIALLY_SET);
    let cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [wanted & offered as u64, 0, 0, 0],
        ..Default::default()
    };
    match vm.enable_cap(&cap) {
        Ok(()) => true,
        Err(e) => {
            log::info!(
                "manual dirty-log protection not available ({e}); the log is cleared on every read"
            );
            false
        }
    }
}

/// Clears the pages set in `words` (64 a word) from `first_page` (a multiple of 64) of memory
/// slot `slot`, which has `slot_pages` pages.
pub(crate) fn clear(
    vm: &VmFd,
    slot: u32,
    slot_pages: u64,
    first_page: u64,
    words: &[u64],
) -> std::io::Result<()> {
    let num_pages = (words.len() as u64 * 64).min(slot_pages.saturating_sub(first_page));
    if num_pages == 0 {
        return Ok(());
    }
    let arg = kvm_clear_dirty_log {
        slot,
        num_pages: num_pages as u32,
        first_page,
        __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: words.as_ptr() as *mut libc::c_void,
        },
    };
    // SAFETY: `vm` is a VM fd; the bitmap pointer is to `words`, which lives for the call and
    // holds at least `num_pages` bits (KVM only reads it).
    let r = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
