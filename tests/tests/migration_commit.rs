//! Exactly one copy of the guest around the commit, whatever message is lost: a named fault
//! point (the `failpoints` build) holds one side at a protocol step while the test cuts the
//! link, holds a disk or sends a stop, and each test checks that exactly one guest runs, or
//! that the source keeps exactly one paused copy, flagged unknown, which resumes on an
//! explicit `vmm resume --force` with its memory intact.

use vmm_tests::pair::{hold, hold_lock, state, wait_state, Pair, T, UNKNOWN};
use vmm_tests::proxy::Link;
use vmm_tests::{assert_source_intact, require_kvm, vmm_cli};

/// A pair whose source (`src`) or destination (`dst`) is held 2.5 s at a fault point.
fn pair(name: &'static str, src: Option<&str>, dst: Option<&str>) -> Pair {
    Pair::start(name, src.map(|p| hold(p, 2500)), dst.map(|p| hold(p, 2500)))
}

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
    p.src.wait_for_stderr("ignored: the migration to", T);
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
