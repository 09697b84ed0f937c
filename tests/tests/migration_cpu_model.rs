//! The guest sees the same CPU after every hop. A guest whose vCPUs print a digest of every
//! CPUID leaf they see moves between "hosts" (separate VMM processes), some made to look
//! smaller by the test build's `VMM_TEST_HIDE_CPUID` (features cleared from that VMM's
//! KVM-supported CPUID, as an older CPU lacks them):
//! - its CPUID travels: started on a small host with `--cpu-model host`, it moves to a bigger
//!   host and on to another small one (the bigger host sends the guest's tables, not its own),
//!   the digests never change;
//! - a host that lacks a feature the guest may use refuses it up front, naming the feature,
//!   and the guest runs on at the source;
//! - with a baseline model (x86-64-v2) the same hosts all take the guest, round the ring.
//!
//! The digest covers the timing leaf (0x40000010), where the guest reads its TSC frequency:
//! the rate travels and is set on every destination too.

use std::path::Path;
use std::time::Duration;

use vmm_tests::{
    destination, free_port, guest, migrate_to_port, require_kvm, vmm_cli, Incoming, RuntimeDir,
    VmProcess,
};

const T: Duration = Duration::from_secs(120);
/// PREFETCHW (leaf 0x80000001 ECX bit 8), which x86-64-v2 lacks, and PCLMULQDQ (leaf 1 ECX
/// bit 1), which it lacks too. (This machine's PVM KVM shows the guest its own CPU's leaves
/// 1, 7 and 0xD whatever the VMM programs, so only hidden bits of the extended leaves change
/// the digest here; the destination's check reads the tables on every KVM.)
const NO_PREFETCHW: &str = "0x80000001.0.ecx.8";
const NO_PREFETCHW_NO_PCLMUL: &str = "0x80000001.0.ecx.8,0x1.0.ecx.1";

/// The latest digest each of the two vCPUs printed after now.
fn digests(vm: &mut VmProcess) -> [String; 2] {
    vm.drain();
    let mut got: [Option<String>; 2] = [None, None];
    while got.iter().any(Option::is_none) {
        let line = vm.wait_for(" cpuid ", T);
        // The guest reads its TSC rate in the timing leaf: part of its CPU, kept on every hop.
        let khz: u64 = line
            .split_whitespace()
            .skip_while(|w| *w != "tsc_khz")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(khz > 0, "the guest sees no TSC frequency: {line}");
        let cpu = usize::from(line.starts_with("cpu1"));
        got[cpu] = Some(line.trim().to_string());
    }
    got.map(Option::unwrap)
}

fn start(dir: &Path, hide: &str, model: &str) -> VmProcess {
    let g = guest("cpuid_digest");
    let mut vm = VmProcess::start_env(
        &[],
        &[("VMM_TEST_HIDE_CPUID", hide)],
        dir,
        &[
            "--name",
            "cpu",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--vcpus",
            "2",
            "--cpu-model",
            model,
        ],
    );
    vm.wait_for(" cpuid ", T);
    vm
}

/// A destination on a host that hides `hide` from its supported CPUID.
fn smaller_destination(dir: &Path, hide: &str, port: u16) -> VmProcess {
    destination(
        dir,
        "cpu",
        port,
        Incoming {
            env: &[("VMM_TEST_HIDE_CPUID", hide)],
            ..Incoming::default()
        },
    )
}

/// Moves the guest from `vm` (on `from`) to a new VMM on `to` whose host hides `hide`.
fn hop(vm: VmProcess, from: &Path, to: &Path, hide: &str) -> VmProcess {
    let port = free_port();
    let dst = smaller_destination(to, hide, port);
    let (st, out, err) = migrate_to_port(from, "cpu", port);
    assert!(st.success(), "{out}{err}");
    let (st, err) = vm.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    dst
}

fn stop(mut vm: VmProcess, dir: &Path) {
    vm.drain();
    let (st, _, err) = vmm_cli(dir, &["stop", "cpu"], T);
    assert!(st.success(), "{err}");
    let (st, err) = vm.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
}

#[test]
fn the_guests_cpuid_travels_with_it_over_hosts_of_different_cpus() {
    if !require_kvm("the_guests_cpuid_travels_with_it_over_hosts_of_different_cpus") {
        return;
    }
    let h: Vec<RuntimeDir> = (1..=3)
        .map(|i| RuntimeDir::new(&format!("cpu-host{i}")))
        .collect();
    // Born on a small host (no PREFETCHW), the guest moves to a full one, then to another small
    // one: the full host must send the guest's CPUID, which the small host can offer.
    let mut vm = start(&h[0].0, NO_PREFETCHW, "host");
    let first = digests(&mut vm);
    vm = hop(vm, &h[0].0, &h[1].0, "");
    assert_eq!(
        digests(&mut vm),
        first,
        "the CPUID changed on the full host"
    );
    vm = hop(vm, &h[1].0, &h[2].0, NO_PREFETCHW);
    assert_eq!(
        digests(&mut vm),
        first,
        "the CPUID changed on the second small host"
    );
    eprintln!("host model, small -> full -> small: digests {first:?} unchanged");
    stop(vm, &h[2].0);
}

#[test]
fn a_host_lacking_a_feature_is_refused_and_a_baseline_model_goes_everywhere() {
    if !require_kvm("a_host_lacking_a_feature_is_refused_and_a_baseline_model_goes_everywhere") {
        return;
    }
    let h: Vec<RuntimeDir> = (1..=3)
        .map(|i| RuntimeDir::new(&format!("model-host{i}")))
        .collect();
    // `--cpu-model host` on a full host: the small one refuses, naming PREFETCHW's bit.
    let mut vm = start(&h[0].0, "", "host");
    let before = digests(&mut vm);
    let port = free_port();
    let dst = smaller_destination(&h[1].0, NO_PREFETCHW, port);
    let (st, out, err) = migrate_to_port(&h[0].0, "cpu", port);
    assert!(
        !st.success(),
        "a host without PREFETCHW took a guest that may use it: {out}"
    );
    assert!(err.contains("leaf 0x80000001.0 ecx bit 8"), "{err}");
    let (st, dst_err) = dst.wait_exit(T);
    assert_eq!(st.code(), Some(1), "{dst_err}");
    assert_eq!(digests(&mut vm), before, "the guest runs on at the source");
    stop(vm, &h[0].0);

    // A baseline model: every host takes it, round the ring, and it sees one CPU throughout.
    let mut vm = start(&h[0].0, "", "x86-64-v2");
    let first = digests(&mut vm);
    assert_ne!(
        first, before,
        "the model hides features the host passes through"
    );
    vm = hop(vm, &h[0].0, &h[1].0, NO_PREFETCHW);
    assert_eq!(digests(&mut vm), first);
    vm = hop(vm, &h[1].0, &h[2].0, NO_PREFETCHW_NO_PCLMUL);
    assert_eq!(digests(&mut vm), first);
    vm = hop(vm, &h[2].0, &h[0].0, "");
    assert_eq!(digests(&mut vm), first);
    let (st, out, _) = vmm_cli(&h[0].0, &["api", "cpu", "GET", "vm.info"], T);
    assert!(st.success() && out.contains("\"x86-64-v2\""), "{out}");
    eprintln!("x86-64-v2 round full -> small -> smaller -> full: digests {first:?} unchanged");
    stop(vm, &h[0].0);
}

#[test]
fn a_vm_shown_hardware_virtualization_refuses_to_migrate() {
    if !require_kvm("a_vm_shown_hardware_virtualization_refuses_to_migrate") {
        return;
    }
    let (a, b) = (RuntimeDir::new("nested-1"), RuntimeDir::new("nested-2"));
    let g = guest("cpuid_digest");
    let mut vm = VmProcess::start(
        &a.0,
        &[
            "--name",
            "cpu",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--nested",
        ],
    );
    vm.wait_for(" cpuid ", T);
    let port = free_port();
    let dst = smaller_destination(&b.0, "", port);
    let (st, _, err) = migrate_to_port(&a.0, "cpu", port);
    assert!(!st.success(), "a nested VM migrated");
    assert!(err.contains("--nested"), "{err}");
    drop(dst);
    stop(vm, &a.0);
}
