//! Model-specific registers: the values a vCPU boots with.

use kvm_bindings::{kvm_msr_entry, Msrs};

pub(crate) const MSR_IA32_TSC: u32 = 0x10;
pub(crate) const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub(crate) const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub(crate) const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub(crate) const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub(crate) const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub(crate) const MSR_STAR: u32 = 0xc000_0081;
pub(crate) const MSR_LSTAR: u32 = 0xc000_0082;
pub(crate) const MSR_CSTAR: u32 = 0xc000_0083;
pub(crate) const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub(crate) const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// The MSRs a freshly booted 64-bit vCPU gets, as (index, value).
pub(crate) fn boot_msr_values() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Builds the FAM structure KVM_SET_MSRS takes.
pub(crate) fn to_kvm_msrs(values: &[(u32, u64)]) -> Result<Msrs, vmm_sys_util::fam::Error> {
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries)
}
