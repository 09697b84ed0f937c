//! seccomp, on by default: every thread of a running VMM is under a filter (mode 2 in
//! /proc/PID/task/*/status); a call no list allows, made from a thread of each kind through the
//! failpoints build's test hook (`VMM_TEST_FORBIDDEN_CALL=KIND`), ends the VMM with status 159
//! and a message naming the kind and the call; `--seccomp log` lets the same call through (the
//! kernel logs it) and the VM runs on; `--seccomp false` installs nothing.

use std::time::Duration;

use vmm_tests::{require_kvm, start_tiny, vmm_cli, wait_running, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(60);

/// personality(2), the call the test hook makes.
const PERSONALITY: &str = "number 135";

/// The `Seccomp:` mode and name of each of the process's threads.
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let path = task.path();
        let (Ok(status), Ok(comm)) = (
            std::fs::read_to_string(path.join("status")),
            std::fs::read_to_string(path.join("comm")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let mode = vmm_tests::status_field(&status, "Seccomp:");
        modes.push((comm.trim().to_string(), mode));
    }
    modes.sort();
    modes
}

fn heartbeat(dir: &RuntimeDir, name: &str, env: &[(&str, &str)], extra: &[&str]) -> VmProcess {
    let mut args = extra.to_vec();
    if !extra.contains(&"--serial") {
        args.extend_from_slice(&["--serial", "pty"]);
    }
    start_tiny(&dir.0, env, ("heartbeat", "64M"), name, &args)
}

#[test]
fn every_thread_of_a_running_vmm_is_confined_and_false_confines_none() {
    if !require_kvm("every_thread_of_a_running_vmm_is_confined_and_false_confines_none") {
        return;
    }
    let dir = RuntimeDir::new("seccomp-modes");
    let vm = heartbeat(&dir, "confined", &[], &["--vcpus", "2"]);
    wait_running(&dir.0, "confined");
    let modes = thread_modes(vm.pid());
    for kind in [
        "vmm",
        "vcpu0",
        "vcpu1",
        "devices",
        "api",
        "console-out",
        "console-pty",
    ] {
        assert!(
            modes.iter().any(|(name, _)| name == kind),
            "no {kind} thread: {modes:?}"
        );
    }
    assert!(
        modes.iter().all(|(_, mode)| mode == "2"),
        "a thread without a filter: {modes:?}"
    );
    let (st, _, err) = vmm_cli(&dir.0, &["stop", "confined"], T);
    assert!(st.success(), "{err}");
    let (status, _) = vm.wait_exit(T);
    assert!(status.success(), "{status:?}");

    let vm = heartbeat(&dir, "open", &[], &["--seccomp", "false"]);
    wait_running(&dir.0, "open");
    let modes = thread_modes(vm.pid());
    assert!(
        modes.iter().all(|(_, mode)| mode == "0"),
        "--seccomp false left a filter: {modes:?}"
    );
    let (st, _, err) = vmm_cli(&dir.0, &["stop", "open"], T);
    assert!(st.success(), "{err}");
    let (status, _) = vm.wait_exit(T);
    assert!(status.success(), "{status:?}");
}

/// Starts a VMM in which the first thread of `kind` makes the forbidden call; expects it to
/// end with 159, naming the kind.
/// A VMM `name` that has a thread of `kind`: a waiting destination for the migration and
/// helper kinds (its receiving thread; with `--memory`, the thread prefaulting it), else the
/// heartbeat guest with `extra`.
fn with_thread_of(
    dir: &RuntimeDir,
    kind: &str,
    name: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> VmProcess {
    match kind {
        "migration" | "helper" => {
            let listen = format!("unix:{}", dir.0.join(format!("{name}.mig")).display());
            let mut args = vec!["--name", name, "--incoming", &listen, "--insecure"];
            if kind == "helper" {
                args.extend_from_slice(&["--memory", "64M"]);
            }
            VmProcess::start_env(&[], env, &dir.0, &args)
        }
        _ => heartbeat(dir, name, env, extra),
    }
}

fn forbidden_call_ends_the_vmm(dir: &RuntimeDir, kind: &str) {
    forbidden_call_ends_the_vmm_with(dir, kind, "", PERSONALITY);
}

/// As above, with the hook's call named (`:packet-socket`) and the number the message gives.
fn forbidden_call_ends_the_vmm_with(dir: &RuntimeDir, kind: &str, call: &str, number: &str) {
    let asked = format!("{kind}{call}");
    let env = [("VMM_TEST_FORBIDDEN_CALL", asked.as_str())];
    let vm = with_thread_of(dir, kind, &format!("forbid-{kind}"), &env, &[]);
    let (status, err) = vm.wait_exit(T);
    assert_eq!(status.code(), Some(159), "{kind}: {status:?}\n{err}");
    let said = format!("a {kind} thread made a forbidden system call ({number}");
    assert!(err.contains(&said), "{kind}: no '{said}' in\n{err}");
}

#[test]
fn a_forbidden_call_from_each_kind_of_thread_ends_the_vmm_naming_it() {
    if !require_kvm("a_forbidden_call_from_each_kind_of_thread_ends_the_vmm_naming_it") {
        return;
    }
    let dir = RuntimeDir::new("seccomp-kinds");
    for kind in [
        "main",
        "vcpu",
        "devices",
        "api",
        "console",
        "migration",
        "helper",
    ] {
        forbidden_call_ends_the_vmm(&dir, kind);
    }
}

/// `socket` is on the main and migration threads' lists for Unix, IP and route-netlink
/// sockets only: a packet socket (raw frames of every host interface) ends the VMM.
#[test]
fn a_packet_socket_ends_the_vmm_though_its_thread_may_open_ip_sockets() {
    if !require_kvm("a_packet_socket_ends_the_vmm_though_its_thread_may_open_ip_sockets") {
        return;
    }
    let dir = RuntimeDir::new("seccomp-socket");
    for kind in ["main", "migration"] {
        forbidden_call_ends_the_vmm_with(&dir, kind, ":packet-socket", "number 41");
    }
}

/// glibc's malloc opens /proc/sys/vm/overcommit_memory from whichever thread first gives a
/// heap back (seen from the API thread at a failed migration's end, on a loaded host, which
/// ended the VMM): from a thread that opens no files, `openat` fails with EACCES and the VM
/// runs on; from the main and migration threads, which open images and sockets, it works.
#[test]
fn an_open_from_a_thread_that_opens_no_files_fails_and_the_vm_runs_on() {
    if !require_kvm("an_open_from_a_thread_that_opens_no_files_fails_and_the_vm_runs_on") {
        return;
    }
    let dir = RuntimeDir::new("seccomp-open");
    for kind in ["vcpu", "devices", "api", "console", "helper", "main"] {
        let asked = format!("{kind}:open");
        let env = [("VMM_TEST_FORBIDDEN_CALL", asked.as_str())];
        let name = format!("open-{kind}");
        let mut vm = with_thread_of(&dir, kind, &name, &env, &["--serial", "tty"]);
        let said = vm.wait_for_stderr(&format!("the {kind} thread's forbidden call returned"), T);
        let returned = said
            .lines()
            .find_map(|l| l.split("forbidden call returned ").nth(1))
            .unwrap_or_default()
            .trim()
            .to_string();
        if kind == "main" {
            assert!(
                returned.parse::<i64>().is_ok_and(|fd| fd >= 0),
                "main opens: {returned}"
            );
        } else {
            assert_eq!(returned, format!("-{}", libc::EACCES), "{kind}: {said}");
        }
        if kind != "helper" {
            // The guest keeps beating after the call.
            vm.wait_for("tick 3", T);
        }
        let (st, _, err) = vmm_cli(&dir.0, &["stop", &name], T);
        assert!(st.success(), "{kind}: {err}");
        let (status, err) = vm.wait_exit(T);
        assert!(status.success(), "{kind}: {status:?}\n{err}");
    }
}

#[test]
fn seccomp_log_lets_the_forbidden_call_through_and_the_vm_runs_on() {
    if !require_kvm("seccomp_log_lets_the_forbidden_call_through_and_the_vm_runs_on") {
        return;
    }
    let dir = RuntimeDir::new("seccomp-log");
    let mut vm = heartbeat(
        &dir,
        "logged",
        &[("VMM_TEST_FORBIDDEN_CALL", "vcpu")],
        &["--seccomp", "log", "--serial", "tty"],
    );
    vm.wait_for_stderr("the vcpu thread's forbidden call returned", T);
    // The guest keeps beating after the call.
    vm.wait_for("tick 3", T);
    // The kernel logged it, naming the thread (where this host lets us read its log).
    if let Ok(out) = std::process::Command::new("dmesg").output() {
        if out.status.success() {
            let log = String::from_utf8_lossy(&out.stdout);
            let pid = format!("pid={} comm=\"vcpu0\"", vm.pid());
            assert!(
                log.lines().any(|l| l.contains("type=1326")
                    && l.contains(&pid)
                    && l.contains("syscall=135")),
                "no audit line for {pid} in dmesg"
            );
        }
    }
    let (st, _, err) = vmm_cli(&dir.0, &["stop", "logged"], T);
    assert!(st.success(), "{err}");
    let (status, _) = vm.wait_exit(T);
    assert!(status.success(), "{status:?}");
}
