//! Exactly one copy of the guest around the commit, whatever message is lost: a named fault
//! point (the `failpoints` build) holds one side at a protocol step while the test cuts the
//! link, holds a disk or sends a stop, and each test checks that exactly one guest runs, or
//! that the source keeps exactly one paused copy, flagged unknown, which resumes on an
//! explicit `vmm resume --force` with its memory intact.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_tests::proxy::{Link, Relay};
use vmm_tests::{
    assert_source_intact, free_port, require_kvm, start_dirtier_env, test_key, vmm_cli, RuntimeDir,
    VmProcess,
};

const T: Duration = Duration::from_secs(120);
/// Both ends' I/O timeout: how long a lost message takes to notice.
const IO_TIMEOUT: &str = "3";

struct Pair {
    a: RuntimeDir,
    b: RuntimeDir,
    src: VmProcess,
    dst: VmProcess,
    relay: Relay,
    disk: PathBuf,
    name: &'static str,
}

/// The `FAILPOINTS` value that holds a process 2.5 s at `point`.
fn failpoint(point: Option<&str>) -> Option<String> {
    point.map(|p| format!("{p}=sleep(2500)"))
}

/// The environment that sets `failpoints`, if any.
fn env(failpoints: &Option<String>) -> Vec<(&'static str, &str)> {
    failpoints
        .iter()
        .map(|v| ("FAILPOINTS", v.as_str()))
        .collect()
}

/// A dirtier guest with a writable disk on "host1", a destination granting the same disk on
/// "host2", a relay between them; `src_point` / `dst_point` hold that side at a step.
fn pair(name: &'static str, src_point: Option<&str>, dst_point: Option<&str>) -> Pair {
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let disk = a.0.join("shared.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (src_fp, dst_fp) = (failpoint(src_point), failpoint(dst_point));
    let src = start_dirtier_env(
        &a.0,
        &env(&src_fp),
        name,
        1,
        &["--disk", disk.to_str().unwrap()],
    );
    let port = free_port();
    let key = test_key(&b.0);
    let mut dst = VmProcess::start_env(
        &[],
        &env(&dst_fp),
        &b.0,
        &[
            "--name",
            name,
            "--incoming",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            key.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
            "--io-timeout",
            IO_TIMEOUT,
        ],
    );
    dst.wait_for_stderr("waiting for VM", T);
    let relay = Relay::start(port);
    Pair {
        a,
        b,
        src,
        dst,
        relay,
        disk,
        name,
    }
}

impl Pair {
    /// Starts `vmm migrate` through the relay; its exit status and stderr when it ends.
    fn migrate(&self) -> JoinHandle<(Option<i32>, String)> {
        let dir = self.a.0.clone();
        let key = test_key(&dir);
        let (name, to) = (self.name, format!("tcp:127.0.0.1:{}", self.relay.port));
        std::thread::spawn(move || {
            let (st, _, err) = vmm_cli(
                &dir,
                &[
                    "migrate",
                    name,
                    "--to",
                    &to,
                    "--auth-key-file",
                    key.to_str().unwrap(),
                    "--io-timeout",
                    IO_TIMEOUT,
                ],
                T,
            );
            (st.code(), err)
        })
    }
}

/// `vmm info NAME --json` on a host: its state, or None when no VM answers there.
fn state(dir: &Path, name: &str) -> Option<String> {
    let (st, out, _) = vmm_cli(dir, &["info", name, "--json"], T);
    if !st.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["state"].as_str().map(str::to_string)
}

fn wait_state(dir: &Path, name: &str, want: &str) {
    let deadline = Instant::now() + T;
    loop {
        let s = state(dir, name);
        if s.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "state {s:?}, waited for {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const UNKNOWN: &str = "paused (migration outcome unknown)";

#[test]
fn a_lost_commit_leaves_one_paused_copy_that_resumes_on_request() {
    if !require_kvm("a_lost_commit_leaves_one_paused_copy_that_resumes_on_request") {
        return;
    }
    let mut p = pair("c1", Some("source.before_commit"), None);
    let migrate = p.migrate();
    p.src
        .wait_for_stderr("fault point source.before_commit reached", T);
    // A partition as the Commit goes out: the destination never reads it.
    p.relay.set(Link::Silent);
    let (code, err) = migrate.join().unwrap();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("outcome is unknown"), "{err}");
    // The destination discards its VM (its commit point was not reached).
    let (st, dst_err) = p.dst.wait_exit(T);
    assert_eq!(st.code(), Some(1), "{dst_err}");
    assert!(dst_err.contains("nothing was started here"), "{dst_err}");
    // The source keeps one paused copy, flagged unknown; a plain resume is refused.
    assert_eq!(state(&p.a.0, p.name).as_deref(), Some(UNKNOWN));
    let (st, _, err) = vmm_cli(&p.a.0, &["resume", p.name], T);
    assert!(!st.success() && err.contains("--force"), "{err}");
    // SIGTERM does not discard it either.
    p.src.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&p.a.0, p.name).as_deref(), Some(UNKNOWN));
    // The operator resumes it here: the disk is taken back, the guest runs on, intact.
    let (st, out, err) = vmm_cli(&p.a.0, &["resume", p.name, "--force"], T);
    assert!(st.success(), "{out}{err}");
    assert_source_intact(&p.a.0, &mut p.src, p.name);
}

#[test]
fn a_lost_resumed_leaves_the_guest_at_the_destination_and_the_source_refuses_to_resume() {
    if !require_kvm(
        "a_lost_resumed_leaves_the_guest_at_the_destination_and_the_source_refuses_to_resume",
    ) {
        return;
    }
    let mut p = pair("c2", None, Some("destination.resumed"));
    let migrate = p.migrate();
    p.dst
        .wait_for_stderr("fault point destination.resumed reached", T);
    p.relay.set(Link::Silent);
    let (code, err) = migrate.join().unwrap();
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(state(&p.a.0, p.name).as_deref(), Some(UNKNOWN));
    wait_state(&p.b.0, p.name, "running");
    // The destination holds the disk: a forced resume on the source is refused.
    let (st, _, err) = vmm_cli(&p.a.0, &["resume", p.name, "--force"], T);
    assert!(!st.success(), "a second copy was resumed");
    assert!(err.contains("another process holds the disk"), "{err}");
    assert_eq!(state(&p.a.0, p.name).as_deref(), Some(UNKNOWN));
    // The operator discards the source's copy; the guest runs on at the destination.
    let (st, _, err) = vmm_cli(&p.a.0, &["stop", p.name], T);
    assert!(st.success(), "{err}");
    let (st, err) = p.src.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_source_intact(&p.b.0, &mut p.dst, p.name);
}

/// Holds an OFD write lock on `path`, as another VMM would.
fn hold_lock(path: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: flock is plain data; zeroed is a valid value to fill in.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: F_OFD_SETLK with a valid descriptor and a live flock struct.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "the source never released the disk"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_disk_held_after_the_commit_delays_the_resume_and_a_late_resumed_completes() {
    if !require_kvm("a_disk_held_after_the_commit_delays_the_resume_and_a_late_resumed_completes") {
        return;
    }
    let mut p = pair("c3", None, Some("destination.commit_received"));
    let migrate = p.migrate();
    p.dst
        .wait_for_stderr("fault point destination.commit_received reached", T);
    // Another process takes the disk the source just released.
    let held = hold_lock(&p.disk);
    p.dst.wait_for_stderr("waits for its disks", T);
    let (st, out, _) = vmm_cli(&p.b.0, &["api", p.name, "GET", "vm.info"], T);
    assert!(st.success() && out.contains("\"committed\""), "{out}");
    // Past the source's I/O timeout: it reports the outcome unknown, keeps waiting.
    let (code, err) = migrate.join().unwrap();
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(state(&p.a.0, p.name).as_deref(), Some(UNKNOWN));
    // The disk comes free: the destination resumes, its late Resumed ends the source.
    drop(held);
    wait_state(&p.b.0, p.name, "running");

    let (st, err) = p.src.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(err.contains("migrated to"), "{err}");
    assert_source_intact(&p.b.0, &mut p.dst, p.name);
}

#[test]
fn a_stop_on_the_destination_after_the_commit_waits_for_the_guest_to_run() {
    if !require_kvm("a_stop_on_the_destination_after_the_commit_waits_for_the_guest_to_run") {
        return;
    }
    let mut p = pair("c4", None, Some("destination.commit_received"));
    let migrate = p.migrate();
    p.dst
        .wait_for_stderr("fault point destination.commit_received reached", T);
    p.dst.signal(libc::SIGTERM);
    let (dir, name) = (p.b.0.clone(), p.name);
    let stop = std::thread::spawn(move || vmm_cli(&dir, &["stop", name], T));
    // The guest ran at the destination (the source got Resumed), then stopped on request.
    let (code, err) = migrate.join().unwrap();
    assert_eq!(code, Some(0), "{err}");
    let (st, err) = p.src.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(err.contains("migrated to"), "{err}");
    let _ = stop.join().unwrap();
    let (st, err) = p.dst.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(err.contains("received") && err.contains("stop"), "{err}");
}
