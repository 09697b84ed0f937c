//! Linux guests. On a host whose KVM is hardware-backed they run directly; on a PVM host they
//! run inside the nested rig (an L1 host under QEMU's software emulation with its own KVM).

use std::time::Duration;

use vmm_tests::hardware_kvm;
use vmm_tests::rig::{require_rig, run_scenario};


/// Runs a scenario of resources/rig/scenarios: inside the nested rig on a PVM host, directly
/// (in a private network namespace) on a hardware-KVM host.
fn scenario(test: &str, name: &str, markers: &[&str]) {
    if hardware_kvm() {
        direct::run(name);
        return;
    }
    if !require_rig(test) {
        return;
    }
    let run = run_scenario(name, Duration::from_secs(1200), markers);
    println!("scenario {name} took {:.1} s in the nested rig; milestones:", run.elapsed.as_secs_f64());
    for (mark, t) in &run.marks {
        println!("  {t:>7.1} s  {mark}");
    }
    for line in run.console.iter().filter(|l| l.starts_with("RIG:") || l.starts_with("VMM-GUEST:")) {
        println!("  | {line}");
    }
    assert!(run.passed, "{}\nconsole tail:\n{}", run.verdict, run.console[run.console.len().saturating_sub(60)..].join("\n"));
}

#[test]
fn linux_guest_with_two_vcpus_boots_to_init_and_reboot_ends_vmm() {
    scenario(
        "linux_guest_with_two_vcpus_boots_to_init_and_reboot_ends_vmm",
        "boot",
        &["RIG: L1 host up", "VMM-GUEST: init reached", "RIG: bzimage-2cpu ok", "RIG: vmlinux-1cpu ok", "RIG-RESULT"],
    );
}

#[test]
fn linux_guest_disk_survives_reboot_and_network_carries_64mib() {
    scenario(
        "linux_guest_disk_survives_reboot_and_network_carries_64mib",
        "disk-net",
        &["RIG: L1 host up", "RIG: disk ok", "VMM-GUEST: ping-host ok", "RIG: tcp stream ok", "RIG: guest answers ping", "RIG-RESULT"],
    );
}

/// Scenarios on hardware KVM, straight from the built artifacts.
mod direct {
    pub fn run(name: &str) {
        let out = vmm_tests::rig::run_scenario_direct(name);
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        assert!(out.status.success(), "scenario {name} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}
