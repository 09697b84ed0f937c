//! Linux guests. On a host whose KVM is hardware-backed they run directly; on a PVM host they
//! run inside the nested rig (an L1 host under QEMU's software emulation with its own KVM).

use std::time::Duration;

use vmm_tests::rig::{require_rig, run_scenario};

fn hardware_kvm() -> bool {
    std::path::Path::new("/sys/module/kvm_intel").exists() || std::path::Path::new("/sys/module/kvm_amd").exists()
}

#[test]
fn linux_guest_with_two_vcpus_boots_to_init_and_reboot_ends_vmm() {
    if hardware_kvm() {
        direct::boot_two_vcpus();
        return;
    }
    if !require_rig("linux_guest_with_two_vcpus_boots_to_init_and_reboot_ends_vmm") {
        return;
    }
    let run = run_scenario(
        "boot",
        Duration::from_secs(900),
        &["RIG: L1 host up", "Linux version", "VMM-GUEST: init reached", "RIG-RESULT"],
    );
    println!("nested boot took {:.1} s; milestones:", run.elapsed.as_secs_f64());
    for (mark, t) in &run.marks {
        println!("  {t:>7.1} s  {mark}");
    }
    assert!(run.passed, "{}\nconsole tail:\n{}", run.verdict, run.console[run.console.len().saturating_sub(40)..].join("\n"));
}

/// The same scenario on hardware KVM, straight from the built artifacts.
mod direct {
    use std::path::Path;
    use std::time::Duration;

    use vmm_tests::{vmm_cli, RuntimeDir};

    pub fn boot_two_vcpus() {
        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("build/guest");
        let kernel = guest.join("bzImage");
        let initrd = guest.join("initramfs.cpio.gz");
        assert!(kernel.exists() && initrd.exists(), "guest artifacts missing under {}; run `make artifacts`", guest.display());
        let dir = RuntimeDir::new("linux");
        let (st, out, err) = vmm_cli(
            &dir.0,
            &[
                "run", "--name", "boot", "--kernel", kernel.to_str().unwrap(), "--initrd", initrd.to_str().unwrap(),
                "--memory", "256M", "--vcpus", "2", "--cmdline", "console=ttyS0 reboot=k panic=1 pci=off vmm.workload=cpus",
            ],
            Duration::from_secs(120),
        );
        assert!(out.contains("VMM-GUEST: init reached, cpus=2"), "{out}\n{err}");
        assert!(out.contains("cpus-online=0-1"), "{out}");
        assert_eq!(st.code(), Some(0), "{err}");
    }
}
