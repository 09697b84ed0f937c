//! CPUID normalisation: KVM's supported set, patched per vCPU so each one sees its own APIC ID,
//! the VM's topology (one socket, one thread per core) and the hypervisor bit.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::cpu_model::Reg;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;

const ECX_TSC_DEADLINE_BIT: u32 = 24;
const ECX_HYPERVISOR_BIT: u32 = 31;
const ECX_OSXSAVE_BIT: u32 = 27;
const EDX_HTT_BIT: u32 = 28;
/// CLFLUSH line size in 8-byte units (EBX bits 15:8 of leaf 1).
const CLFLUSH_LINE_SIZE: u32 = 8;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// The placement of one vCPU in the VM.
#[derive(Clone, Copy, Debug)]
pub struct VcpuTopology {
    pub apic_id: u8,
    pub vcpu_count: u8,
    /// Whether KVM emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline: bool,
}

/// Number of APIC-ID bits needed to number `count` cores.
fn bits_for(count: u8) -> u32 {
    (u32::from(count.max(1)) - 1)
        .checked_ilog2()
        .map_or(0, |b| b + 1)
}

/// Patches `cpuid` (KVM's supported set) for one vCPU.
pub fn normalize(cpuid: &mut CpuId, topo: VcpuTopology) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        normalize_entry(entry, topo);
    }
}

fn normalize_entry(e: &mut kvm_cpuid_entry2, t: VcpuTopology) {
    let count = u32::from(t.vcpu_count);
    let apic = u32::from(t.apic_id);
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (apic << 24) | (count << 16) | (CLFLUSH_LINE_SIZE << 8) | (e.ebx & 0xff);
            e.ecx |= 1 << ECX_HYPERVISOR_BIT;
            if t.tsc_deadline {
                e.ecx |= 1 << ECX_TSC_DEADLINE_BIT;
            }
            if count > 1 {
                e.edx |= 1 << EDX_HTT_BIT;
            } else {
                e.edx &= !(1 << EDX_HTT_BIT);
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
        }
        LEAF_PMU => {
            // No virtual PMU: its counters cannot move between hosts of different models.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
            e.edx = apic;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (TOPOLOGY_LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = bits_for(t.vcpu_count);
                    e.ebx = count;
                    e.ecx = (TOPOLOGY_LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        _ => {}
    }
}

const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// The hypervisor timing leaf (VMware's, which QEMU and Cloud Hypervisor also fill): EAX the
/// TSC frequency in kHz, EBX the local APIC timer's bus frequency in kHz.
pub(crate) const LEAF_TIMING: u32 = 0x4000_0010;
/// KVM's local APIC timer counts at 1 GHz.
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

/// Shows the guest its TSC frequency in the timing leaf (raising the hypervisor range's
/// highest leaf to it), so what the guest reads about its clock is part of its CPUID and
/// travels with it. Without a hypervisor leaf in `cpuid` (not KVM's set) nothing changes.
pub fn add_timing_leaf(cpuid: &mut CpuId, tsc_khz: u32) {
    let mut found = false;
    for e in cpuid.as_mut_slice().iter_mut() {
        if e.function == LEAF_HYPERVISOR {
            e.eax = e.eax.max(LEAF_TIMING);
            found = true;
        }
    }
    if !found {
        return;
    }
    let slice = cpuid.as_mut_slice();
    if let Some(e) = slice.iter_mut().find(|e| e.function == LEAF_TIMING) {
        e.eax = tsc_khz;
        e.ebx = KVM_APIC_BUS_KHZ;
        return;
    }
    let timing = kvm_cpuid_entry2 {
        function: LEAF_TIMING,
        eax: tsc_khz,
        ebx: KVM_APIC_BUS_KHZ,
        ..Default::default()
    };
    if cpuid.push(timing).is_err() {
        log::warn!("the CPUID table is full: the guest is not shown its TSC frequency");
    }
}

/// Feature bits of `guest` (the CPUID table a vCPU runs with) that `host` (this host's
/// KVM-supported CPUID) lacks, as "leaf 0x7.0 ebx bit 5" strings: the guest may use them, so
/// a host without them cannot run it. Every feature register is compared (see
/// [`crate::cpu_model::FEATURE_REGISTERS`]: EAX of 7.1 and 0xD.1 and the XCR0 bits of 0xD.0
/// among them), except the bits the VMM itself sets on every host (hypervisor, TSC-deadline,
/// HTT) and the one the guest's own CR4 drives (OSXSAVE).
pub fn missing_features(guest: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Vec<String> {
    let mut missing = Vec::new();
    for &(function, index, reg) in crate::cpu_model::FEATURE_REGISTERS {
        let Some(g) = guest
            .iter()
            .find(|e| e.function == function && e.index == index)
        else {
            continue;
        };
        let h = host
            .iter()
            .find(|e| e.function == function && e.index == index)
            .map_or(0, |h| reg.get(h));
        let mut lacking = reg.get(g) & !h;
        if function == LEAF_FEATURES {
            lacking &= match reg {
                Reg::Ecx => {
                    !((1 << ECX_HYPERVISOR_BIT)
                        | (1 << ECX_TSC_DEADLINE_BIT)
                        | (1 << ECX_OSXSAVE_BIT))
                }
                Reg::Edx => !(1 << EDX_HTT_BIT),
                _ => !0,
            };
        }
        for bit in 0..32 {
            if lacking & (1 << bit) != 0 {
                missing.push(format!(
                    "leaf {function:#x}.{index} {} bit {bit}",
                    reg.name()
                ));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        normalize_entry(
            &mut e,
            VcpuTopology {
                apic_id: 3,
                vcpu_count: 4,
                tsc_deadline: true,
            },
        );
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & (1 << 31), 0);
        assert_ne!(e.ecx & (1 << 24), 0);
        assert_ne!(e.edx & (1 << 28), 0);
    }

    #[test]
    fn extended_topology_numbers_cores() {
        let t = VcpuTopology {
            apic_id: 2,
            vcpu_count: 3,
            tsc_deadline: false,
        };
        let mut smt = entry(0xb, 0);
        let mut core = entry(0xb, 1);
        normalize_entry(&mut smt, t);
        normalize_entry(&mut core, t);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 2));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 3, 2, 2));
    }

    #[test]
    fn the_timing_leaf_carries_the_tsc_rate_under_the_hypervisor_range() {
        let mut hv = entry(LEAF_HYPERVISOR, 0);
        hv.eax = 0x4000_0001;
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), hv]).unwrap();
        add_timing_leaf(&mut cpuid, 2_300_000);
        let s = cpuid.as_slice();
        let hv = s.iter().find(|e| e.function == LEAF_HYPERVISOR).unwrap();
        assert_eq!(hv.eax, LEAF_TIMING);
        let t = s.iter().find(|e| e.function == LEAF_TIMING).unwrap();
        assert_eq!((t.eax, t.ebx), (2_300_000, 1_000_000));
        // Again (a second pass): one leaf, updated, not two.
        add_timing_leaf(&mut cpuid, 2_400_000);
        let n = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == LEAF_TIMING)
            .count();
        assert_eq!(n, 1);
        // Without KVM's signature leaf there is no hypervisor range to extend.
        let mut bare = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        add_timing_leaf(&mut bare, 1);
        assert_eq!(bare.as_slice().len(), 1);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn missing_features_names_the_bit() {
        let mut s = entry(0x7, 0);
        s.ebx = 1 << 5; // AVX2
        let h = entry(0x7, 0);
        assert_eq!(
            missing_features(&[s], &[h]),
            vec!["leaf 0x7.0 ebx bit 5".to_string()]
        );
        assert!(missing_features(&[s], &[s]).is_empty());
        // EAX of 7.1 (AVX-VNNI is bit 4) and the XCR0 bits of 0xD.0 count too.
        let mut s71 = entry(0x7, 1);
        s71.eax = 1 << 4;
        let mut sd = entry(0xd, 0);
        sd.eax = 0xe7; // x87, SSE, AVX, AVX-512 state
        let mut hd = entry(0xd, 0);
        hd.eax = 0x7;
        assert_eq!(
            missing_features(&[s71, sd], &[entry(0x7, 1), hd]),
            vec![
                "leaf 0x7.1 eax bit 4".to_string(),
                "leaf 0xd.0 eax bit 5".to_string(),
                "leaf 0xd.0 eax bit 6".to_string(),
                "leaf 0xd.0 eax bit 7".to_string(),
            ]
        );
    }
}
