//! Migrations that must not hang, cannot be squatted, and can be cancelled (docs/design.md section 7):
//! a stalled network ends within the timeout, idle and hostile connections do not keep
//! the real source out, Ctrl-C, `vmm migrate-cancel` and `vmm stop` put the guest back on the
//! source, and a second migration then succeeds.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::proxy::{Proxy, Tamper};
use vmm_tests::{
    assert_source_intact, free_port, key_file, require_kvm, start_dirtier, test_key, vmm_bin,
    vmm_cli, RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// A destination on 127.0.0.1:`port` with the test key.
fn destination(dir: &RuntimeDir, name: &str, port: u16) -> VmProcess {
    vmm_tests::destination(&dir.0, name, port, vmm_tests::Incoming::default())
}

/// `vmm migrate` as a child process (so the test can signal it), with the test key.
fn spawn_migrate(dir: &RuntimeDir, name: &str, port: u16, extra: &[&str]) -> Child {
    let key = test_key(&dir.0);
    Command::new(vmm_bin())
        .arg("--runtime-dir")
        .arg(&dir.0)
        .args(["migrate", name, "--to", &format!("tcp:127.0.0.1:{port}")])
        .args(["--auth-key-file", s(&key)])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm migrate")
}

/// Waits (bounded) for a child and returns its exit code, stderr, and how long it took.
fn finish(mut child: Child, timeout: Duration) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code(), err, t0.elapsed());
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm migrate did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn info_state(dir: &RuntimeDir, name: &str) -> serde_json::Value {
    let (st, out, err) = vmm_cli(&dir.0, &["info", name, "--json"], T);
    assert!(st.success(), "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_stalled_network_ends_the_migration_within_its_timeout_live_and_offline() {
    if !require_kvm("a_stalled_network_ends_the_migration_within_its_timeout_live_and_offline") {
        return;
    }
    for mode in [&[][..], &["--offline"][..]] {
        let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
        let mut src = start_dirtier(&a.0, "s1", 1, &[]);
        let port = free_port();
        let dst = destination(&b, "s1", port);
        let proxy = Proxy::start(port, Tamper::StallAt(3_000_000));
        let mut args = vec!["--timeout", "8", "--on-timeout", "cancel"];
        args.extend_from_slice(mode);
        let started = Instant::now();
        let (code, err, _) = finish(spawn_migrate(&a, "s1", proxy.port, &args), T);
        let took = started.elapsed();
        assert_eq!(code, Some(1), "{mode:?}: {err}");
        assert!(err.contains("timed out"), "{mode:?}: {err}");
        assert!(
            took < Duration::from_secs(8 + 5),
            "{mode:?}: vmm migrate took {took:?} with --timeout 8"
        );
        // The guest runs on the source (offline: it was paused by the migration and resumed).
        assert_source_intact(&a.0, &mut src, "s1");
        drop(dst);
        drop(proxy);
    }
}

#[test]
fn idle_garbage_and_wrong_key_connections_do_not_keep_the_source_out() {
    if !require_kvm("idle_garbage_and_wrong_key_connections_do_not_keep_the_source_out") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let src = start_dirtier(&a.0, "q1", 1, &[]);
    let port = free_port();
    let mut dst = destination(&b, "q1", port);
    // A waiting destination answers on its API socket.
    let info = info_state(&b, "q1");
    assert_eq!(info["state"], "waiting", "{info}");
    assert_eq!(info["address"], format!("tcp:127.0.0.1:{port}"), "{info}");
    // An idle connection that stays open through the whole test.
    let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Garbage.
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    dst.wait_for_stderr("not a vmm migration endpoint", T);
    // The real source with a wrong key.
    let wrong = key_file(&a.0, "wrong.key", "not the key the destination holds");
    let (st, _, err) = vmm_cli(
        &a.0,
        &[
            "migrate",
            "q1",
            "--to",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            s(&wrong),
        ],
        T,
    );
    assert_eq!(st.code(), Some(1), "{err}");
    dst.wait_for_stderr("authentication failed", T);
    // Then with the right key: it goes through, the idle connection still open.
    let (code, err, _) = finish(spawn_migrate(&a, "q1", port, &[]), T);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(src.wait_exit(T).0.code(), Some(0));
    dst.wait_for("pass", T);
}

/// Starts a migration slow enough to be cancelled (a 2 MiB/s cap), waits until it is under
/// way, and returns the `vmm migrate` child and the destination.
fn slow_migration(a: &RuntimeDir, b: &RuntimeDir, name: &str) -> (Child, VmProcess) {
    let port = free_port();
    let mut dst = destination(b, name, port);
    let child = spawn_migrate(a, name, port, &["--max-bandwidth", "2"]);
    // Under way once the destination has the source (its first round takes seconds at 2 MiB/s).
    dst.wait_for_stderr("migration source", T);
    assert_eq!(info_state(a, name)["state"], "migrating");
    (child, dst)
}

/// The guest is back and running on the source; the destination discarded its VM; a second
/// migration right after succeeds.
fn assert_back_and_migrates_again(
    a: &RuntimeDir,
    b: &RuntimeDir,
    mut src: VmProcess,
    dst: VmProcess,
    name: &str,
) {
    let (dst_status, dst_err) = dst.wait_exit(T);
    assert_eq!(dst_status.code(), Some(1), "{dst_err}");
    assert!(
        dst_err.contains("cancelled") && dst_err.contains("nothing was started here"),
        "{dst_err}"
    );
    assert_source_intact(&a.0, &mut src, name);
    let port = free_port();
    let mut dst = destination(b, name, port);
    let (code, err, _) = finish(spawn_migrate(a, name, port, &[]), T);
    assert_eq!(code, Some(0), "the second migration: {err}");
    assert_eq!(src.wait_exit(T).0.code(), Some(0));
    dst.wait_for("pass", T);
}

#[test]
fn ctrl_c_on_vmm_migrate_cancels_and_the_guest_stays() {
    if !require_kvm("ctrl_c_on_vmm_migrate_cancels_and_the_guest_stays") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let src = start_dirtier(&a.0, "c1", 1, &[]);
    let (child, dst) = slow_migration(&a, &b, "c1");
    // SAFETY: signalling our own child process by PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, err, took) = finish(child, T);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(took < Duration::from_secs(5), "cancelling took {took:?}");
    assert_back_and_migrates_again(&a, &b, src, dst, "c1");
}

#[test]
fn migrate_cancel_from_another_shell_cancels_and_the_guest_stays() {
    if !require_kvm("migrate_cancel_from_another_shell_cancels_and_the_guest_stays") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let src = start_dirtier(&a.0, "c2", 1, &[]);
    let (child, dst) = slow_migration(&a, &b, "c2");
    let t0 = Instant::now();
    let (st, out, err) = vmm_cli(&a.0, &["migrate-cancel", "c2"], T);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("migration cancelled"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let (code, err, _) = finish(child, T);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    let (st, _, err) = vmm_cli(&a.0, &["migrate-cancel", "c2"], T);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("no migration is running"), "{err}");
    assert_back_and_migrates_again(&a, &b, src, dst, "c2");
}

#[test]
fn stopping_the_source_during_a_migration_cancels_it_first() {
    if !require_kvm("stopping_the_source_during_a_migration_cancels_it_first") {
        return;
    }
    for how in ["vmm stop", "SIGTERM"] {
        let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
        let src = start_dirtier(&a.0, "c3", 1, &[]);
        let (child, dst) = slow_migration(&a, &b, "c3");
        if how == "SIGTERM" {
            src.signal(libc::SIGTERM);
        } else {
            let (st, _, err) = vmm_cli(&a.0, &["stop", "c3"], T);
            assert!(st.success(), "{err}");
        }
        let (code, err, _) = finish(child, T);
        assert_eq!(code, Some(1), "{how}: {err}");
        assert!(err.contains("cancelled"), "{how}: {err}");
        let (status, src_err) = src.wait_exit(T);
        assert_eq!(status.code(), Some(0), "{how}: {src_err}");
        assert!(src_err.contains("stopped"), "{how}: {src_err}");
        let (dst_status, dst_err) = dst.wait_exit(T);
        assert_eq!(dst_status.code(), Some(1), "{how}: {dst_err}");
    }
}

#[test]
fn a_guest_paused_by_its_user_stays_paused_when_its_migration_is_cancelled() {
    if !require_kvm("a_guest_paused_by_its_user_stays_paused_when_its_migration_is_cancelled") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let mut src = start_dirtier(&a.0, "p1", 1, &[]);
    let (st, _, err) = vmm_cli(&a.0, &["pause", "p1"], T);
    assert!(st.success(), "{err}");
    src.drain();
    let (child, dst) = slow_migration(&a, &b, "p1");
    let (st, _, err) = vmm_cli(&a.0, &["migrate-cancel", "p1"], T);
    assert!(st.success(), "{err}");
    let (code, err, _) = finish(child, T);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(info_state(&a, "p1")["state"], "paused");
    // Still paused: the guest prints nothing.
    let printed = src.lines_during(Duration::from_secs(3));
    assert!(
        printed.iter().all(|l| !l.contains("pass")),
        "the guest ran while paused: {printed:?}"
    );
    drop(dst);
    let (st, _, err) = vmm_cli(&a.0, &["resume", "p1"], T);
    assert!(st.success(), "{err}");
    assert_source_intact(&a.0, &mut src, "p1");
}

#[test]
fn many_idle_connections_and_a_replayed_recording_do_not_keep_the_source_out() {
    if !require_kvm("many_idle_connections_and_a_replayed_recording_do_not_keep_the_source_out") {
        return;
    }
    let (a, b, c) = (
        RuntimeDir::new("host1"),
        RuntimeDir::new("host2"),
        RuntimeDir::new("host3"),
    );
    let src = start_dirtier(&a.0, "r1", 1, &[]);
    // A first migration, host1 -> host2, recorded on the path.
    let port_b = free_port();
    let mut dst_b = destination(&b, "r1", port_b);
    let proxy = Proxy::start(port_b, Tamper::None);
    let (code, err, _) = finish(spawn_migrate(&a, "r1", proxy.port, &[]), T);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(src.wait_exit(T).0.code(), Some(0));
    dst_b.wait_for("pass", T);
    let recording = proxy.join();
    assert!(
        recording.len() > 1 << 20,
        "{} bytes recorded",
        recording.len()
    );
    // A new destination holding the same key: idle connections, more than a small cap...
    let port_c = free_port();
    let mut dst_c = destination(&c, "r1", port_c);
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port_c)).unwrap())
        .collect();
    // ...and the recording replayed: its handshake message is accepted, its records are not.
    let mut replay = TcpStream::connect(("127.0.0.1", port_c)).unwrap();
    let _ = replay.write_all(&recording);
    dst_c.wait_for_stderr("did not decrypt", T);
    let info = info_state(&c, "r1");
    assert_eq!(info["state"], "waiting", "{info}");
    // The real source (the guest now runs on host2) still gets through.
    let (code, err, _) = finish(spawn_migrate(&b, "r1", port_c, &[]), T);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(dst_b.wait_exit(T).0.code(), Some(0));
    dst_c.wait_for("pass", T);
    drop(idle);
}
