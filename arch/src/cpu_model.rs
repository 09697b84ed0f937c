//! CPU models: which CPUID feature bits a VM may see. `host` passes through everything this
//! host's KVM supports (for a VM that never moves, or moves only between identical hosts);
//! the named models keep only the features of an x86-64 micro-architecture level
//! (x86-64-v2, x86-64-v3: the psABI's levels, which any host of that level offers), so a
//! fleet of different CPUs can all run, and receive, the same guest. Bits of leaves that do
//! not describe features (vendor, cache, topology, brand) are the host's, and travel with
//! the guest like every other leaf.

use kvm_bindings::kvm_cpuid_entry2;

/// A VM's CPU model (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuModel {
    #[default]
    Host,
    X86_64V2,
    X86_64V3,
}

/// Registers of a CPUID leaf, as the model tables name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    /// The register a name ("eax" ...) stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [Reg::Eax, Reg::Ebx, Reg::Ecx, Reg::Edx]
            .into_iter()
            .find(|r| r.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "eax",
            Reg::Ebx => "ebx",
            Reg::Ecx => "ecx",
            Reg::Edx => "edx",
        }
    }

    pub fn get(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        }
    }

    pub fn set(self, e: &mut kvm_cpuid_entry2, v: u32) {
        match self {
            Reg::Eax => e.eax = v,
            Reg::Ebx => e.ebx = v,
            Reg::Ecx => e.ecx = v,
            Reg::Edx => e.edx = v,
        }
    }
}

/// Every register that holds feature bits (or, for 0xD.0, the XCR0 bits the guest may
/// enable): what a model masks and what a destination must offer.
pub(crate) const FEATURE_REGISTERS: &[(u32, u32, Reg)] = &[
    (0x1, 0, Reg::Ecx),
    (0x1, 0, Reg::Edx),
    (0x7, 0, Reg::Ebx),
    (0x7, 0, Reg::Ecx),
    (0x7, 0, Reg::Edx),
    (0x7, 1, Reg::Eax),
    (0x7, 1, Reg::Ebx),
    (0x7, 1, Reg::Edx),
    (0xd, 0, Reg::Eax),
    (0xd, 0, Reg::Edx),
    (0xd, 1, Reg::Eax),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
    (0x8000_0007, 0, Reg::Edx),
    (0x8000_0008, 0, Reg::Ebx),
];

const fn bits(list: &[u32]) -> u32 {
    let mut v = 0;
    let mut i = 0;
    while i < list.len() {
        v |= 1 << list[i];
        i += 1;
    }
    v
}

// Leaf 1 EDX: the x86-64 baseline (FPU, VME, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, SEP,
// MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFSH, MMX, FXSR, SSE, SSE2, HTT).
const V1_LEAF1_EDX: u32 = bits(&[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 26, 28,
]);
// Leaf 1 ECX, v2: SSE3, SSSE3, CX16, SSE4.1, SSE4.2, POPCNT; and what KVM itself provides on
// every host: x2APIC (21), TSC-deadline (24), hypervisor (31).
const V2_LEAF1_ECX: u32 = bits(&[0, 9, 13, 19, 20, 21, 23, 24, 31]);
// v3 adds FMA, MOVBE, XSAVE, OSXSAVE, AVX, F16C.
const V3_LEAF1_ECX: u32 = V2_LEAF1_ECX | bits(&[12, 22, 26, 27, 28, 29]);
// Leaf 7.0 EBX, v3: BMI1, AVX2, BMI2.
const V3_LEAF7_EBX: u32 = bits(&[3, 5, 8]);
// Leaf 7.0 EDX: the speculation controls (IBRS/IBPB, STIBP, ARCH_CAPABILITIES, SSBD), kept in
// every model: a guest needs them for its mitigations (and a host without them is refused).
const SPEC_CTRL_LEAF7_EDX: u32 = bits(&[26, 27, 29, 31]);
// Leaf 0x80000001 ECX: LAHF/SAHF (v2), LZCNT (v3). EDX: SYSCALL, NX, LM.
const V2_EXT1_ECX: u32 = bits(&[0]);
const V3_EXT1_ECX: u32 = V2_EXT1_ECX | bits(&[5]);
const V1_EXT1_EDX: u32 = bits(&[11, 20, 29]);
// Leaf 0x80000007 EDX: invariant TSC (the guest's TSC rate travels with it, see tsc_khz).
const EXT7_EDX: u32 = bits(&[8]);
// Leaf 0xD.0 EAX (XCR0 bits): x87, SSE, AVX for v3; none for v2 (no XSAVE).
const V3_XCR0: u32 = bits(&[0, 1, 2]);

impl CpuModel {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "host" => Some(CpuModel::Host),
            "x86-64-v2" => Some(CpuModel::X86_64V2),
            "x86-64-v3" => Some(CpuModel::X86_64V3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CpuModel::Host => "host",
            CpuModel::X86_64V2 => "x86-64-v2",
            CpuModel::X86_64V3 => "x86-64-v3",
        }
    }

    pub const NAMES: &'static [&'static str] = &["host", "x86-64-v2", "x86-64-v3"];

    /// The bits of a feature register this model allows; None: all (host).
    fn allowed(self, function: u32, index: u32, reg: Reg) -> Option<u32> {
        let v3 = self == CpuModel::X86_64V3;
        if self == CpuModel::Host {
            return None;
        }
        Some(match (function, index, reg) {
            (0x1, 0, Reg::Edx) => V1_LEAF1_EDX,
            (0x1, 0, Reg::Ecx) if v3 => V3_LEAF1_ECX,
            (0x1, 0, Reg::Ecx) => V2_LEAF1_ECX,
            (0x7, 0, Reg::Ebx) if v3 => V3_LEAF7_EBX,
            (0x7, 0, Reg::Edx) => SPEC_CTRL_LEAF7_EDX,
            (0xd, 0, Reg::Eax) if v3 => V3_XCR0,
            (0x8000_0001, 0, Reg::Ecx) if v3 => V3_EXT1_ECX,
            (0x8000_0001, 0, Reg::Ecx) => V2_EXT1_ECX,
            (0x8000_0001, 0, Reg::Edx) => V1_EXT1_EDX,
            (0x8000_0007, 0, Reg::Edx) => EXT7_EDX,
            _ => 0,
        })
    }

    /// Clears, in a host's supported CPUID, every feature bit this model does not allow.
    pub fn apply(self, entries: &mut [kvm_cpuid_entry2]) {
        for e in entries.iter_mut() {
            for &(function, index, reg) in FEATURE_REGISTERS {
                if e.function == function && e.index == index {
                    if let Some(allowed) = self.allowed(function, index, reg) {
                        reg.set(e, reg.get(e) & allowed);
                    }
                }
            }
            // With no XSAVE in the model, no XSAVE state leaves either.
            if e.function == 0xd && self == CpuModel::X86_64V2 {
                *e = kvm_cpuid_entry2 {
                    function: e.function,
                    index: e.index,
                    flags: e.flags,
                    ..Default::default()
                };
            }
        }
    }
}

/// Hides hardware virtualization (VMX, SVM) from a guest: nested guests' state does not
/// migrate (see `vmm run --nested`).
pub fn hide_nested(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut() {
        match (e.function, e.index) {
            (0x1, 0) => e.ecx &= !(1 << 5),
            (0x8000_0001, 0) => e.ecx &= !(1 << 2),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, v: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: v,
            ebx: v,
            ecx: v,
            edx: v,
            ..Default::default()
        }
    }

    #[test]
    fn models_keep_only_their_level() {
        let host = vec![
            entry(0x1, 0, !0),
            entry(0x7, 0, !0),
            entry(0xd, 0, !0),
            entry(0x4, 0, 0x1234),
        ];
        let mut v2 = host.clone();
        CpuModel::X86_64V2.apply(&mut v2);
        assert_eq!(v2[0].ecx, V2_LEAF1_ECX);
        assert_eq!(v2[1].ebx & (1 << 5), 0, "no AVX2 in v2");
        assert_eq!(v2[2].eax, 0, "no XSAVE state in v2");
        assert_eq!(v2[3].eax, 0x1234, "cache leaves stay the host's");
        let mut v3 = host.clone();
        CpuModel::X86_64V3.apply(&mut v3);
        assert_ne!(v3[1].ebx & (1 << 5), 0, "AVX2 in v3");
        assert_eq!(v3[2].eax, V3_XCR0);
        let mut same = host.clone();
        CpuModel::Host.apply(&mut same);
        assert_eq!(same[0].ecx, !0);
        for name in CpuModel::NAMES {
            assert_eq!(CpuModel::parse(name).unwrap().name(), *name);
        }
    }

    #[test]
    fn nesting_is_hidden() {
        let mut t = vec![entry(0x1, 0, !0), entry(0x8000_0001, 0, !0)];
        hide_nested(&mut t);
        assert_eq!(t[0].ecx & (1 << 5), 0);
        assert_eq!(t[1].ecx & (1 << 2), 0);
    }
}
