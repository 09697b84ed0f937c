//! Saving and restoring a vCPU, in the orders docs/design.md section 5 prescribes (other VMMs lost
//! timer interrupts or pending exceptions by getting them wrong).
//!
//! Save: MP_STATE first (reading it can change state), then REGS, SREGS, XSAVE, XCRS,
//! DEBUGREGS, LAPIC, MSRs, and VCPU_EVENTS last.
//! Restore: CPUID2, MP_STATE, REGS, SREGS, XSAVE, XCRS, DEBUGREGS, LAPIC, MSRs (TSC_DEADLINE
//! last, after the TSC and the LAPIC), VCPU_EVENTS last (SET_REGS clears pending exceptions).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use arch::msr::MSR_IA32_TSC_DEADLINE;

use super::state_error::{ioctl, KvmStateError};

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
}

/// MTRR MSRs, which KVM's index list leaves out but a guest programs.
const MTRR_MSRS: &[u32] = &[
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
    0x20d, 0x20e, 0x20f, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e,
    0x26f, 0x2ff,
];

/// Every MSR in KVM_GET_MSR_INDEX_LIST plus the MTRRs, keeping only those this vCPU can read
/// (some in the list are absent on a given CPU model; KVM_GET_MSRS stops at the first).
pub(crate) fn saveable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, KvmStateError> {
    let mut list: Vec<u32> = kvm
        .get_msr_index_list()
        .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec();
    for m in MTRR_MSRS {
        if !list.contains(m) {
            list.push(*m);
        }
    }
    let mut readable = Vec::with_capacity(list.len());
    let mut rest = &list[..];
    while !rest.is_empty() {
        let mut msrs = msrs_to_read(rest)?;
        let n = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        readable.extend_from_slice(&rest[..n]);
        if n < rest.len() {
            log::debug!("MSR {:#x} is not readable here; not migrated", rest[n]);
            rest = &rest[n + 1..];
        } else {
            break;
        }
    }
    Ok(readable)
}

/// A KVM_GET_MSRS buffer asking for `indices`, values zero.
fn msrs_to_read(indices: &[u32]) -> Result<Msrs, KvmStateError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| KvmStateError::TooLong("MSR list"))
}

pub(crate) fn save(
    vcpu: &VcpuFd,
    msr_list: &[u32],
    cpuid: &[kvm_cpuid_entry2],
) -> Result<VcpuState, KvmStateError> {
    let mp_state = vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
    let debugregs = vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?;
    let lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    let mut msrs = msrs_to_read(msr_list)?;
    let n = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
    if n != msr_list.len() {
        return Err(KvmStateError::Msrs {
            call: "KVM_GET_MSRS",
            done: n,
            total: msr_list.len(),
            index: msr_list[n],
        });
    }
    let vcpu_events = vcpu
        .get_vcpu_events()
        .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        cpuid: cpuid.to_vec(),
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs: msrs.as_slice().to_vec(),
        vcpu_events,
    })
}

pub(crate) fn restore(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), KvmStateError> {
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| KvmStateError::TooLong("CPUID table"))?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    vcpu.set_mp_state(s.mp_state)
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&s.regs).map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_sregs(&s.sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    // SAFETY: the xsave area was produced by KVM_GET_XSAVE on a vCPU with the same CPUID.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&s.lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
    // TSC_DEADLINE is relative to the TSC and armed through the LAPIC: set it after both.
    let mut ordered: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .filter(|m| m.index != MSR_IA32_TSC_DEADLINE)
        .copied()
        .collect();
    ordered.extend(
        s.msrs
            .iter()
            .filter(|m| m.index == MSR_IA32_TSC_DEADLINE)
            .copied(),
    );
    let msrs = Msrs::from_entries(&ordered).map_err(|_| KvmStateError::TooLong("MSR list"))?;
    let n = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if n != ordered.len() {
        return Err(KvmStateError::Msrs {
            call: "KVM_SET_MSRS",
            done: n,
            total: ordered.len(),
            index: ordered[n].index,
        });
    }
    vcpu.set_vcpu_events(&s.vcpu_events)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
