//! Reboot in one process with a writable disk and a tap: the old machine's disk (and its
//! lock), its tap and its guest memory are closed and unmapped before the next boot, so ten
//! reboots through `vm.reboot` (in `vmm run`) and ten through the guest itself (a reset, in an
//! empty VMM, which boots the VM again) all succeed and the process does not grow: its mapped
//! size, resident size and open descriptors stay flat. Needs root for the tap.

use std::path::Path;
use std::time::Duration;

use vmm_tests::curl::expect;
use vmm_tests::{guest, require_kvm, require_root, vmm_cli, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(60);
const REBOOTS: usize = 10;
const MEMORY_MIB: u64 = 64;

/// Mapped size and resident size (KiB) and open descriptors of a process: the smallest of a
/// few samples, so a boot in progress at one instant does not count.
fn footprint(pid: u32) -> (u64, u64, usize) {
    let mut best = (u64::MAX, u64::MAX, usize::MAX);
    for _ in 0..5 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        best = (
            best.0.min(field("VmSize:")),
            best.1.min(field("VmRSS:")),
            best.2.min(fds),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    best
}

/// A leak of even one machine per reboot shows as a whole guest's memory mapped per reboot
/// and its disk, tap, VM and vCPU descriptors kept: allow less than two guests' worth of
/// mapping and a handful of descriptors (a boot caught half-way).
fn assert_flat(what: &str, before: (u64, u64, usize), after: (u64, u64, usize)) {
    eprintln!(
        "{what}: after boot 2 / boot {}: mapped {} / {} KiB, resident {} / {} KiB, descriptors {} / {}",
        REBOOTS + 1,
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    let guest_kib = MEMORY_MIB << 10;
    assert!(
        after.0 < before.0 + 2 * guest_kib,
        "{what}: mapped size grew from {} to {} KiB over {REBOOTS} reboots",
        before.0,
        after.0
    );
    assert!(
        after.1 < before.1 + guest_kib / 2,
        "{what}: resident size grew from {} to {} KiB over {REBOOTS} reboots",
        before.1,
        after.1
    );
    assert!(
        after.2 < before.2 + 8,
        "{what}: descriptors grew from {} to {} over {REBOOTS} reboots",
        before.2,
        after.2
    );
}

fn disk(dir: &Path) -> String {
    let p = dir.join("disk.img");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p.display().to_string()
}

/// A tap name of this test process (at most 15 characters).
fn tap(tag: char) -> String {
    format!("vmrb{}{tag}", std::process::id() % 100_000)
}

#[test]
fn ten_reboots_on_request_with_a_disk_and_a_tap_leak_nothing() {
    let test = "ten_reboots_on_request_with_a_disk_and_a_tap_leak_nothing";
    if !require_kvm(test) || !require_root(test) {
        return;
    }
    let dir = RuntimeDir::new("reboot-api");
    let (g, disk, net) = (
        guest("heartbeat"),
        disk(&dir.0),
        format!("tap={}", tap('a')),
    );
    let mut vm = VmProcess::start(
        &dir.0,
        &[
            "--name",
            "rb",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            &format!("{MEMORY_MIB}M"),
            "--disk",
            &disk,
            "--net",
            &net,
        ],
    );
    vm.wait_for("cpu0 tick 2", T);
    let mut before = None;
    for boot in 2..=REBOOTS + 1 {
        vm.drain();
        let (st, out, err) = vmm_cli(&dir.0, &["api", "rb", "PUT", "vm.reboot"], T);
        assert!(st.success(), "reboot {boot}: {out}{err}");
        // The heartbeat starts counting again: the guest booted anew, with the same disk and
        // tap opened again.
        while vm.wait_for("cpu0 tick ", T).trim_end() != "cpu0 tick 1" {}
        vm.wait_for("cpu0 tick 2", T);
        if boot == 2 {
            before = Some(footprint(vm.pid()));
        }
    }
    let after = footprint(vm.pid());
    assert_flat("vm.reboot", before.unwrap(), after);
    let (st, _, err) = vmm_cli(&dir.0, &["stop", "rb"], T);
    assert!(st.success(), "{err}");
    let (st, err) = vm.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
}

#[test]
fn ten_guest_resets_in_an_empty_vmm_with_a_disk_and_a_tap_leak_nothing() {
    let test = "ten_guest_resets_in_an_empty_vmm_with_a_disk_and_a_tap_leak_nothing";
    if !require_kvm(test) || !require_root(test) {
        return;
    }
    let dir = RuntimeDir::new("reboot-guest");
    let sock = dir.0.join("api.sock");
    let mut vm = VmProcess::empty(&dir.0, &sock, &[]);
    // The hello guest prints its greeting and resets the machine at once: an empty VMM boots
    // it again, and again.
    let body = serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": MEMORY_MIB << 20},
        "payload": {"kernel": guest("hello"), "cmdline": "console=ttyS0"},
        "disks": [{"path": disk(&dir.0)}],
        "net": [{"tap": tap('b')}],
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    })
    .to_string();
    expect(&sock, "PUT", "vm.create", Some(&body), 204);
    expect(&sock, "PUT", "vm.boot", None, 204);
    vm.wait_for("Hello from a tiny guest", T);
    vm.wait_for("Hello from a tiny guest", T);
    let before = footprint(vm.pid());
    for _ in 2..=REBOOTS {
        vm.wait_for("Hello from a tiny guest", T);
    }
    let after = footprint(vm.pid());
    assert_flat("guest reset", before, after);
    expect(&sock, "PUT", "vmm.shutdown", None, 204);
    let (st, err) = vm.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(!err.contains("in use"), "{err}");
}
