//! What kind of KVM this host has: hardware-backed (kvm_intel / kvm_amd) or PVM (kvm_pvm),
//! which runs only PVM-aware guest kernels natively and emulates everything else.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostKvm {
    Hardware,
    Pvm,
    Unknown,
}

pub(crate) fn detect() -> HostKvm {
    detect_in(Path::new("/sys/module"))
}

fn detect_in(modules: &Path) -> HostKvm {
    let loaded = |m: &str| modules.join(m).exists();
    if loaded("kvm_intel") || loaded("kvm_amd") {
        HostKvm::Hardware
    } else if loaded("kvm_pvm") {
        HostKvm::Pvm
    } else {
        HostKvm::Unknown
    }
}

/// The message `vmm run` gives instead of starting a stock Linux kernel on a PVM host.
pub(crate) const PVM_LINUX_REFUSAL: &str = "this host's /dev/kvm is PVM (module kvm_pvm, no kvm_intel/kvm_amd): \
it runs only PVM-aware guest kernels natively and emulates any other kernel instruction by instruction \
(about 3000x slower), so a stock Linux guest would appear to hang. Run Linux guests on a host with \
hardware KVM, or inside the project's nested test rig (`make run` uses it); pass --allow-emulated-kernel \
to start it here anyway.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_from_module_directories() {
        let d = std::env::temp_dir().join(format!("vmm-host-test-{}", std::process::id()));
        std::fs::create_dir_all(d.join("kvm")).unwrap();
        assert_eq!(detect_in(&d), HostKvm::Unknown);
        std::fs::create_dir_all(d.join("kvm_pvm")).unwrap();
        assert_eq!(detect_in(&d), HostKvm::Pvm);
        std::fs::create_dir_all(d.join("kvm_amd")).unwrap();
        assert_eq!(detect_in(&d), HostKvm::Hardware);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
