//! The API socket and lifecycle of a running VM: list, info, pause (vCPUs truly stopped),
//! resume, stop, signals, and one name per runtime directory.

use std::time::Duration;

use vmm_tests::{guest, require_kvm, vmm_cli, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(60);

fn start_heartbeat(dir: &RuntimeDir, name: &str) -> VmProcess {
    let mut vm = vmm_tests::start_tiny(&dir.0, &[], ("heartbeat", "64M"), name, &[]);
    vm.wait_for("cpu0 tick 2", T);
    vm
}

fn tick_of(line: &str) -> u64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    if !require_kvm("pause_stops_the_guest_and_resume_continues_it") {
        return;
    }
    let dir = RuntimeDir::new("pause");
    let mut vm = start_heartbeat(&dir, "p1");

    let (st, out, err) = vmm_cli(&dir.0, &["pause", "p1"], T);
    assert!(st.success(), "{out} {err}");
    // Lines already written before the pause may still be in the pipe.
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<String> = vm.drain();
    let last_tick = before.last().map(|l| tick_of(l));
    let during = vm.lines_during(Duration::from_millis(1500));
    assert!(during.is_empty(), "a paused guest printed {during:?}");
    let (_, out, _) = vmm_cli(&dir.0, &["info", "p1", "--json"], T);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["state"], "paused");

    let (st, _, err) = vmm_cli(&dir.0, &["resume", "p1"], T);
    assert!(st.success(), "{err}");
    let next = vm.wait_for("cpu0 tick", T);
    if let Some(last) = last_tick {
        assert_eq!(
            tick_of(&next),
            last + 1,
            "the guest continues where it stopped"
        );
    }
    let (_, out, _) = vmm_cli(&dir.0, &["info", "p1", "--json"], T);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["state"], "running");

    let (st, out, _) = vmm_cli(&dir.0, &["stop", "p1"], T);
    assert!(st.success());
    assert!(out.contains("p1: stopped"));
    let (status, err) = vm.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("stopped on request"), "{err}");
}

#[test]
fn list_and_info_describe_running_vms() {
    if !require_kvm("list_and_info_describe_running_vms") {
        return;
    }
    let dir = RuntimeDir::new("list");
    let vm_a = start_heartbeat(&dir, "alpha");
    let vm_b = start_heartbeat(&dir, "beta");

    let (st, out, err) = vmm_cli(&dir.0, &["list"], T);
    assert!(st.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME"));
    assert!(
        lines[1].starts_with("alpha")
            && lines[1].contains(&vm_a.pid().to_string())
            && lines[1].contains("running"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("beta") && lines[2].contains("64 MiB"),
        "{out}"
    );

    let (_, out, _) = vmm_cli(&dir.0, &["list", "--json"], T);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["pid"], vm_b.pid());
    assert_eq!(list[1]["memory_mib"], 64);

    let (st, out, _) = vmm_cli(&dir.0, &["info", "alpha"], T);
    assert!(st.success());
    assert!(
        out.contains("state:   running") && out.contains("vcpus:   1"),
        "{out}"
    );

    let (st, _, err) = vmm_cli(&dir.0, &["info", "gamma"], T);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("no VM named 'gamma' is running"), "{err}");

    for (vm, name) in [(vm_a, "alpha"), (vm_b, "beta")] {
        assert!(vmm_cli(&dir.0, &["stop", name], T).0.success());
        assert_eq!(vm.wait_exit(T).0.code(), Some(0));
    }
    let (_, out, _) = vmm_cli(&dir.0, &["list", "--json"], T);
    assert_eq!(out.trim(), "[]");
}

#[test]
fn a_second_vm_with_the_same_name_is_refused() {
    if !require_kvm("a_second_vm_with_the_same_name_is_refused") {
        return;
    }
    let dir = RuntimeDir::new("dup");
    let vm = start_heartbeat(&dir, "same");
    let g = guest("hello");
    let (st, out, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "same",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        T,
    );
    assert_eq!(st.code(), Some(1));
    assert!(!out.contains("Hello"), "the second VM must not start");
    assert!(
        err.contains("already running") && err.contains(&vm.pid().to_string()),
        "{err}"
    );
    // The first VM is unharmed and still answers.
    let (st, out, _) = vmm_cli(&dir.0, &["info", "same", "--json"], T);
    assert!(st.success());
    assert!(out.contains("running"));
    // Another runtime directory is another host: the same name is fine there.
    let other = RuntimeDir::new("dup-other");
    let (st, out, _) = vmm_cli(
        &other.0,
        &[
            "run",
            "--name",
            "same",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        T,
    );
    assert!(st.success() && out.contains("Hello"));
    drop(vm);
}

#[test]
fn sigterm_and_sigint_stop_the_vm_cleanly() {
    if !require_kvm("sigterm_and_sigint_stop_the_vm_cleanly") {
        return;
    }
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = RuntimeDir::new("sig");
        let vm = start_heartbeat(&dir, "s1");
        vm.signal(sig);
        let (status, err) = vm.wait_exit(T);
        assert_eq!(status.code(), Some(0), "{err}");
        assert!(err.contains(&format!("{name} received")), "{err}");
        assert_eq!(
            std::fs::read_dir(&dir.0).unwrap().count(),
            0,
            "socket and lock removed"
        );
    }
}
