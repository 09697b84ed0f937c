//! Linux guests. On a host whose KVM is hardware-backed they run directly; on a PVM host they
//! run inside the nested rig (an L1 host under QEMU's software emulation with its own KVM).

use std::time::Duration;

use vmm_tests::hardware_kvm;
use vmm_tests::rig::{
    clock_report, make_shared_lun, require_rig, run_hosts, two_hosts, L1Host, RigRun,
};

/// Runs a scenario of resources/rig/scenarios: inside the nested rig on a PVM host (in an L1
/// host with `l1_cpus` CPUs), directly (in a private network namespace) on a hardware-KVM host.
fn scenario(test: &str, name: &str, l1_cpus: u32, markers: &[&str]) {
    if hardware_kvm() {
        direct::run(name);
        return;
    }
    if !require_rig(test) {
        return;
    }
    let host = L1Host {
        scenario: name.into(),
        env: vec![("RIG_SMP".into(), l1_cpus.to_string())],
    };
    let run = run_hosts(name, &[host], Duration::from_secs(1200), markers);
    report_and_check(&run, name, "the nested rig", 60, |l| {
        l.starts_with("RIG:") || l.starts_with("VMM-GUEST:")
    });
}

/// Prints how a rig run went (milestones, the console lines `shown` picks) and fails the test,
/// with the last `tail` console lines, unless every host reported PASS.
fn report_and_check(
    run: &RigRun,
    name: &str,
    place: &str,
    tail: usize,
    shown: impl Fn(&str) -> bool,
) {
    println!(
        "scenario {name} took {:.1} s in {place}; milestones:",
        run.elapsed.as_secs_f64()
    );
    for (mark, t) in &run.marks {
        println!("  {t:>7.1} s  {mark}");
    }
    for line in run.console.iter().filter(|l| shown(l)) {
        println!("  | {line}");
    }
    let tail = run.console[run.console.len().saturating_sub(tail)..].join("\n");
    assert!(run.passed, "{}\nconsole tail:\n{tail}", run.verdict);
}

#[test]
fn linux_guest_with_two_vcpus_boots_to_init_and_reboot_ends_vmm() {
    scenario(
        "linux_guest_with_two_vcpus_boots_to_init_and_reboot_ends_vmm",
        "boot",
        2,
        &[
            "RIG: L1 host up",
            "VMM-GUEST: init reached",
            "RIG: bzimage-2cpu ok",
            "RIG: vmlinux-1cpu ok",
            "RIG-RESULT",
        ],
    );
}

#[test]
fn linux_guest_disk_survives_reboot_and_network_carries_64mib() {
    scenario(
        "linux_guest_disk_survives_reboot_and_network_carries_64mib",
        "disk-net",
        // One L1 CPU, as in the two-host scenarios: in 2-CPU L1 hosts, Linux guests under
        // network load (ours and QEMU's alike) have died with a triple fault (README, Known
        // problems); no 1-CPU L1 has shown it.
        1,
        &[
            "RIG: L1 host up",
            "RIG: disk ok",
            "VMM-GUEST: ping-host ok",
            "RIG: tcp stream ok",
            "RIG: guest answers ping",
            "RIG-RESULT",
        ],
    );
}

/// A Linux guest with a disk on a shared LUN and a NIC bridged onto the hosts' network moves
/// from host1 to host2 and back, `rounds` times (resources/rig/scenarios/migrate-linux).
/// Always in the rig: it needs two hosts.
fn migrate_between_hosts(
    test: &str,
    storage: &str,
    vcpus: u32,
    (first, back): (&str, &str),
    rounds: u32,
) {
    if !require_rig(test) {
        return;
    }
    let dir = vmm_tests::RuntimeDir::new("lun");
    let lun = dir.0.join("shared-lun.img");
    make_shared_lun(&lun, 64);
    let hosts = two_hosts(
        "migrate-linux",
        &lun,
        &format!("rig.vcpus={vcpus} rig.first={first} rig.back={back} rig.storage={storage} rig.rounds={rounds}"),
    );
    let name = format!("migrate-linux-{storage}-{vcpus}cpu-{first}-{back}-x{rounds}");
    let run = run_hosts(
        &name,
        &hosts,
        Duration::from_secs(1500),
        &[
            "RIG: host1 network up",
            "CONT: started",
            "RIG: migrated",
            "RIG: records ok",
            "RIG-RESULT",
        ],
    );
    report_and_check(&run, &name, "two nested-rig L1 hosts", 80, |l| {
        l.contains("RIG:") || l.contains("VMM-GUEST:") || l.contains("CONT: CORRUPT")
    });
    if storage == "nfs" {
        assert!(
            run.lines.iter().any(|l| l
                .2
                .contains("RIG: a second VMM on host1 is refused the disk on NFS")),
            "the second-VMM check on NFS did not run"
        );
    }
    let clock = clock_report(&run.lines);
    println!(
        "guest clock: stretches (host, heartbeats, min offset ms) {:?}; largest jump {:.0} ms; longest heartbeat gap the guest saw {} ms",
        clock.stretches, clock.max_jump_ms, clock.guest_max_gap_ms
    );
    let hosts_seen: Vec<usize> = clock.stretches.iter().map(|s| s.0).collect();
    let expected: Vec<usize> = (0..=2 * rounds as usize).map(|i| i % 2).collect();
    assert_eq!(
        hosts_seen, expected,
        "the heartbeat should come from host1 and host2 in turn, {rounds} round trip(s)"
    );
    assert!(
        clock.max_jump_ms < 1000.0,
        "the guest clock jumped by {:.0} ms at a migration",
        clock.max_jump_ms
    );
    // The guest kernel's own word on its clocks (continuity copies them from /dev/kmsg): what
    // it said after the first migration must not be a clock it finds unstable. (At boot, on
    // the rig's emulated CPUs, it may already distrust the TSC; that is not a migration's.)
    let migrated_at = run
        .lines
        .iter()
        .find(|l| l.2.contains("RIG: migrated"))
        .map_or(f64::MAX, |l| l.1);
    let kmsg: Vec<(f64, &str)> = run
        .lines
        .iter()
        .filter_map(|l| l.2.split_once("CONT: KMSG ").map(|(_, m)| (l.1, m)))
        .collect();
    println!("guest kernel clock messages (seconds into the run): {kmsg:?}");
    let after: Vec<&str> = kmsg
        .iter()
        .filter(|(t, _)| *t > migrated_at)
        .map(|(_, m)| *m)
        .collect();
    assert!(
        !after
            .iter()
            .any(|m| m.contains("unstable") || m.contains("skew")),
        "the guest found a clock unstable after migrating: {after:?}"
    );
}

#[test]
fn linux_guest_one_vcpu_migrates_live_to_host2_and_offline_back() {
    migrate_between_hosts(
        "linux_guest_one_vcpu_migrates_live_to_host2_and_offline_back",
        "lun",
        1,
        ("live", "offline"),
        1,
    );
}

#[test]
fn linux_guest_two_vcpus_migrates_offline_to_host2_and_live_back() {
    migrate_between_hosts(
        "linux_guest_two_vcpus_migrates_offline_to_host2_and_live_back",
        "lun",
        2,
        ("offline", "live"),
        1,
    );
}

/// The guest's disk is an iSCSI LUN (LIO on host1, open-iscsi on both hosts), under the same
/// /dev/disk/by-path name on both.
#[test]
fn linux_guest_on_iscsi_migrates_live_to_host2_and_offline_back() {
    migrate_between_hosts(
        "linux_guest_on_iscsi_migrates_live_to_host2_and_offline_back",
        "iscsi",
        1,
        ("live", "offline"),
        1,
    );
}

/// The guest's disk is a raw image on NFS (host1 serves it; both hosts mount it), opened with
/// O_DIRECT; a second VMM on host1 is refused the disk while the guest runs on host2. Four live
/// hops (host1 -> host2 -> host1 -> host2 -> host1): from the second on, the source is a VMM
/// that itself received the guest, so what it sends (CPUID, TSC, clock, device state) is what
/// it was given.
#[test]
fn linux_guest_on_nfs_migrates_live_four_hops_between_two_hosts() {
    migrate_between_hosts(
        "linux_guest_on_nfs_migrates_live_four_hops_between_two_hosts",
        "nfs",
        1,
        ("live", "live"),
        2,
    );
}

/// Scenarios on hardware KVM, straight from the built artifacts.
mod direct {
    pub fn run(name: &str) {
        let out = vmm_tests::rig::run_scenario_direct(name);
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        assert!(
            out.status.success(),
            "scenario {name} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
