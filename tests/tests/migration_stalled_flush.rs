//! Nothing blocks a migration's deadline: a disk whose flush never returns (a FUSE file this
//! test serves, its `fdatasync` held unanswered as a `hard` NFS mount holds it while the
//! server is away) stalls the switchover's flush, and `--timeout` still ends the migration on
//! time with the guest running on at the source, its memory intact; the destination discards
//! what it had. Needs root (the FUSE mount).

use std::time::{Duration, Instant};

use vmm_tests::stalling_disk::StallingDisk;
use vmm_tests::{
    assert_source_intact, destination, free_port, require_kvm, require_root, start_dirtier,
    test_key, vmm_cli, Incoming, RuntimeDir,
};

const T: Duration = Duration::from_secs(120);
const TIMEOUT_S: u64 = 6;

#[test]
fn a_stalled_disk_flush_does_not_hold_the_migration_past_its_timeout() {
    let test = "a_stalled_disk_flush_does_not_hold_the_migration_past_its_timeout";
    if !require_kvm(test) || !require_root(test) {
        return;
    }
    let (a, b) = (RuntimeDir::new("stall-src"), RuntimeDir::new("stall-dst"));
    let disk = StallingDisk::mount(&a.0.join("nfs"), 1 << 20).expect("mount the FUSE disk");
    let image = disk.path().display().to_string();
    let mut src = start_dirtier(&a.0, "sf", 1, &["--disk", &image]);
    let port = free_port();
    let dst = destination(
        &b.0,
        "sf",
        port,
        Incoming {
            extra: &["--disk", &image],
            ..Incoming::default()
        },
    );

    // The storage goes away: from now on every flush hangs.
    disk.stall();
    let started = Instant::now();
    let (st, out, err) = vmm_cli(
        &a.0,
        &[
            "migrate",
            "sf",
            "--to",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            test_key(&a.0).to_str().unwrap(),
            "--timeout",
            &TIMEOUT_S.to_string(),
            "--on-timeout",
            "cancel",
        ],
        T,
    );
    let took = started.elapsed();
    eprintln!(
        "the migration ended after {:.1} s (--timeout {TIMEOUT_S}); flushes held: {}",
        took.as_secs_f64(),
        disk.held()
    );
    assert!(
        !st.success(),
        "the migration succeeded without a flush: {out}{err}"
    );
    assert!(err.contains("timed out"), "{err}");
    assert!(disk.held() >= 1, "the switchover never flushed the disk");
    // Bounded by the timeout (and the stop at a frame boundary), not by the flush.
    assert!(
        took < Duration::from_secs(TIMEOUT_S + 5),
        "took {took:?} with --timeout {TIMEOUT_S}"
    );
    // The guest runs on at the source while the flush is still held.
    assert_source_intact(&a.0, &mut src, "sf");
    assert!(disk.held() >= 1);
    let (st, dst_err) = dst.wait_exit(T);
    assert_eq!(st.code(), Some(1), "{dst_err}");
    assert!(dst_err.contains("nothing was started here"), "{dst_err}");

    // The storage comes back; the VM stops cleanly.
    disk.release();
    let (st, _, err) = vmm_cli(&a.0, &["stop", "sf"], T);
    assert!(st.success(), "{err}");
    let (st, err) = src.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
}
