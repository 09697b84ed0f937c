//! The CPU a guest sees, as part of its identity: its CPUID tables (one per vCPU, from this
//! host's KVM-supported set filtered by the VM's CPU model on first boot, or exactly the
//! source's for a received VM) and its TSC frequency. Both travel in a migration, so the
//! guest sees the same CPU on every host it moves to; a host that cannot offer them refuses
//! the VM up front.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// KVM's own tolerance for a TSC rate it runs without scaling (its `tsc_tolerance_ppm`).
const TSC_TOLERANCE_PPM: u64 = 250;

/// What a received VM's vCPUs must be given (from the source's migration config).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GuestCpu {
    /// Every vCPU's CPUID table, in vCPU order.
    pub cpuids: Vec<Vec<kvm_cpuid_entry2>>,
    /// The guest's TSC frequency, where the source could read it.
    pub tsc_khz: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    Supported(#[source] kvm_ioctls::Error),
    #[error("the guest's CPUID table for vCPU {0} is missing or malformed")]
    Table(u8),
    #[error("the guest's TSC runs at {guest} kHz, this host's at {host} kHz, and this host's KVM cannot scale it (no KVM_CAP_TSC_CONTROL): a guest shown an invariant TSC would see its clock drift")]
    TscRate { guest: u32, host: u32 },
    #[error("KVM_SET_TSC_KHZ {0} failed")]
    SetTsc(u32, #[source] kvm_ioctls::Error),
}

/// This host's KVM-supported CPUID. A test build (`failpoints`) can make the host look
/// smaller: `VMM_TEST_HIDE_CPUID=0x7.0.ebx.5,...` clears those bits, as a host without the
/// features would lack them.
pub(crate) fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    #[allow(unused_mut)]
    let mut supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::Supported)?;
    #[cfg(feature = "failpoints")]
    if let Ok(hide) = std::env::var("VMM_TEST_HIDE_CPUID") {
        hide_for_test(supported.as_mut_slice(), &hide);
    }
    Ok(supported)
}

#[cfg(feature = "failpoints")]
fn hide_for_test(entries: &mut [kvm_cpuid_entry2], spec: &str) {
    use arch::cpu_model::Reg;
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = item.split('.').collect();
        let (Some(function), Some(index), Some(reg), Some(bit)) = (
            parts
                .first()
                .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()),
            parts.get(1).and_then(|s| s.parse::<u32>().ok()),
            parts.get(2).and_then(|s| Reg::parse(s)),
            parts.get(3).and_then(|s| s.parse::<u32>().ok()),
        ) else {
            continue;
        };
        for e in entries
            .iter_mut()
            .filter(|e| e.function == function && e.index == index)
        {
            reg.set(e, reg.get(e) & !(1u32 << bit));
        }
    }
}

/// Whether a CPUID table shows the guest an invariant TSC (leaf 0x80000007 EDX bit 8): a
/// guest told so may count time by the TSC alone, at the rate it measured once.
pub(crate) fn shows_invariant_tsc(table: &[kvm_cpuid_entry2]) -> bool {
    table
        .iter()
        .any(|e| e.function == 0x8000_0007 && e.edx & (1 << 8) != 0)
}

/// A booted VM's tables: this host's supported CPUID under the VM's CPU model (VMX/SVM hidden
/// unless it is nested), with each vCPU's place in the topology.
pub(crate) fn boot_tables(
    kvm: &Kvm,
    config: &crate::config::VmConfig,
) -> Result<Vec<CpuId>, CpuError> {
    let mut host = supported_cpuid(kvm)?;
    config.cpu_model().apply(host.as_mut_slice());
    if !config.nested {
        arch::cpu_model::hide_nested(host.as_mut_slice());
    }
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    Ok((0..config.vcpus)
        .map(|index| {
            let mut cpuid = host.clone();
            arch::cpuid::normalize(
                &mut cpuid,
                arch::cpuid::VcpuTopology {
                    apic_id: index,
                    vcpu_count: config.vcpus,
                    tsc_deadline,
                },
            );
            cpuid
        })
        .collect())
}

impl GuestCpu {
    /// The tables of a received VM's `count` vCPUs, as KVM takes them.
    pub(crate) fn tables(&self, count: u8) -> Result<Vec<CpuId>, CpuError> {
        (0..count)
            .map(|index| {
                self.cpuids
                    .get(usize::from(index))
                    .and_then(|t| CpuId::from_entries(t).ok())
                    .ok_or(CpuError::Table(index))
            })
            .collect()
    }
}

/// Gives a vCPU of a received VM the guest's TSC rate: kept as it is where this host's rate
/// is within KVM's tolerance of it, scaled where KVM can scale. Where it can do neither, a
/// guest shown an invariant TSC is refused (its clock would drift); any other guest keeps
/// time by kvmclock, which KVM corrects for this host's rate, and runs on at that rate.
pub(crate) fn set_guest_tsc(
    kvm: &Kvm,
    fd: &VcpuFd,
    guest_khz: u32,
    invariant: bool,
) -> Result<(), CpuError> {
    let Ok(host_khz) = fd.get_tsc_khz() else {
        return Ok(());
    };
    let diff = u64::from(host_khz.abs_diff(guest_khz));
    let close = diff * 1_000_000 <= u64::from(host_khz) * TSC_TOLERANCE_PPM;
    if !close && !kvm.check_extension(Cap::TscControl) {
        if invariant {
            return Err(CpuError::TscRate {
                guest: guest_khz,
                host: host_khz,
            });
        }
        log::warn!(
            "the guest's TSC ran at {guest_khz} kHz, here it runs at {host_khz} kHz and KVM cannot scale it; the guest has no invariant TSC and keeps time by kvmclock"
        );
        return Ok(());
    }
    fd.set_tsc_khz(guest_khz)
        .map_err(|e| CpuError::SetTsc(guest_khz, e))
}
