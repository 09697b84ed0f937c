//! Live migration of tiny guests between two VMM processes on this machine's /dev/kvm, each
//! with its own runtime directory standing for a host, over the key-secured channel: a dirtier guest that checks every page
//! against what it last wrote must keep going on the destination with no corruption.

use std::time::Duration;

use vmm_tests::{
    free_port, migrate_retrying, require_kvm, test_key, vmm_cli, RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);

fn pass_of(line: &str) -> u64 {
    line.split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn start_dirtier(dir: &RuntimeDir, name: &str, vcpus: u8) -> VmProcess {
    vmm_tests::start_dirtier(&dir.0, name, vcpus, &[])
}

fn migrate(
    dir: &RuntimeDir,
    name: &str,
    to: &str,
    extra: &[&str],
) -> (std::process::ExitStatus, String, String) {
    let key = test_key(&dir.0);
    let mut args = vec![
        "migrate",
        name,
        "--to",
        to,
        "--auth-key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    migrate_retrying(&dir.0, &args, T)
}

/// Moves the running VM `name` from `src` to a new destination process in `dst_dir`, checks
/// the guest goes on there, and returns the destination process.
fn move_vm(
    src: VmProcess,
    src_dir: &RuntimeDir,
    dst_dir: &RuntimeDir,
    name: &str,
    vcpus: u8,
    extra: &[&str],
) -> VmProcess {
    let port = free_port();
    let to = format!("tcp:127.0.0.1:{port}");
    let key = test_key(&dst_dir.0);
    let mut dst = VmProcess::start(
        &dst_dir.0,
        &[
            "--name",
            name,
            "--incoming",
            &to,
            "--auth-key-file",
            key.to_str().unwrap(),
        ],
    );
    let (st, out, err) = migrate(src_dir, name, &to, extra);
    assert!(st.success(), "vmm migrate failed: {out}\n{err}");
    if extra.contains(&"--json") {
        let summary: serde_json::Value = serde_json::from_str(&out).expect("a JSON summary");
        assert!(
            summary["downtime_ms"].as_f64().is_some()
                && summary["bytes_sent"].as_u64().unwrap() > 0,
            "{out}"
        );
        if extra.contains(&"--offline") {
            assert_eq!(summary["switchover"], "offline", "{out}");
        }
        if let Some(i) = extra.iter().position(|&a| a == "--connections") {
            assert_eq!(summary["connections"].to_string(), extra[i + 1], "{out}");
        }
        if extra.contains(&"--compress") {
            let raw = summary["page_bytes_uncompressed"].as_f64().unwrap();
            let sent = summary["page_bytes_sent"].as_f64().unwrap();
            assert!(sent < raw, "compressed pages are smaller: {out}");
        }
    } else {
        assert!(out.contains(&format!("{name}: migrated to {to}")), "{out}");
    }
    let src_tail = src.tail(50);
    let (status, src_err) = src.wait_exit(T);
    assert_eq!(
        status.code(),
        Some(0),
        "the source exits cleanly: {src_err}"
    );
    assert!(src_err.contains("migrated to"), "{src_err}");
    let last_src_pass = |cpu: u8| {
        src_tail
            .iter()
            .filter(|l| l.starts_with(&format!("cpu{cpu} pass ")))
            .map(|l| pass_of(l))
            .max()
            .unwrap_or(0)
    };
    // Every vCPU keeps passing its self-check on the destination, beyond where it was.
    // (The dirtier prints every 16 passes, so the destination's next line is at most 16
    // passes beyond the source's last; a guest that restarted from scratch would print pass 16.)
    for cpu in 0..vcpus {
        let line = dst.wait_for(&format!("cpu{cpu} pass"), T);
        let before = last_src_pass(cpu);
        assert!(
            pass_of(&line) > before,
            "cpu{cpu} went on from pass {before}: {line}"
        );
    }
    let console = dst.console.lock().unwrap().clone();
    assert!(
        !console
            .iter()
            .chain(&src_tail)
            .any(|l| l.contains("CORRUPT")),
        "memory corrupted: {console:?}"
    );
    let (_, out, _) = vmm_cli(&dst_dir.0, &["info", name, "--json"], T);
    assert!(out.contains("\"running\""), "{out}");
    dst
}

fn assert_no_corruption(vm: &VmProcess) {
    let console = vm.console.lock().unwrap().clone();
    assert!(
        !console.iter().any(|l| l.contains("CORRUPT")),
        "memory corrupted: {console:?}"
    );
}

#[test]
fn live_migration_with_one_vcpu_there_and_back() {
    if !require_kvm("live_migration_with_one_vcpu_there_and_back") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let vm = start_dirtier(&a, "m1", 1);
    let vm = move_vm(vm, &a, &b, "m1", 1, &[]);
    let vm = move_vm(vm, &b, &a, "m1", 1, &[]);
    assert_no_corruption(&vm);
}

#[test]
fn live_migration_with_two_vcpus_there_and_back() {
    if !require_kvm("live_migration_with_two_vcpus_there_and_back") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let vm = start_dirtier(&a, "m2", 2);
    let vm = move_vm(vm, &a, &b, "m2", 2, &["--downtime-ms", "100"]);
    let vm = move_vm(vm, &b, &a, "m2", 2, &[]);
    assert_no_corruption(&vm);
}

#[test]
fn offline_migration_with_one_and_two_vcpus() {
    if !require_kvm("offline_migration_with_one_and_two_vcpus") {
        return;
    }
    for vcpus in [1u8, 2] {
        let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
        let name = format!("off{vcpus}");
        let vm = start_dirtier(&a, &name, vcpus);
        let vm = move_vm(vm, &a, &b, &name, vcpus, &["--offline", "--json"]);
        assert_no_corruption(&vm);
    }
}

#[test]
fn several_connections_and_compression_carry_a_dirtying_guest_there_and_back() {
    if !require_kvm("several_connections_and_compression_carry_a_dirtying_guest_there_and_back") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let vm = start_dirtier(&a, "mc", 2);
    let vm = move_vm(vm, &a, &b, "mc", 2, &["--connections", "4", "--json"]);
    let vm = move_vm(
        vm,
        &b,
        &a,
        "mc",
        2,
        &["--connections", "2", "--compress", "zstd:3", "--json"],
    );
    assert_no_corruption(&vm);
}
