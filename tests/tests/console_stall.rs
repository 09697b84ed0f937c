//! A console nobody reads never stalls the guest: the VMM's stdout is a pipe the test holds
//! open and never reads (shrunk to one page, so it is full at once) while the guest prints as
//! fast as it can; the vCPU keeps running, so a pause and a whole migration complete, and the
//! source still exits on its own afterwards.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::{
    free_port, guest, migrate_to_port, raw_destination, require_kvm, vmm_bin, vmm_cli, RuntimeDir,
};

const T: Duration = Duration::from_secs(120);

/// A child process killed and reaped when dropped (a failed assertion included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_console_nobody_reads_does_not_stop_a_migration() {
    if !require_kvm("a_console_nobody_reads_does_not_stop_a_migration") {
        return;
    }
    let (a, b) = (
        RuntimeDir::new("stall-con-1"),
        RuntimeDir::new("stall-con-2"),
    );
    let g = guest("counter");
    let mut src = Command::new(vmm_bin())
        .args(["--runtime-dir"])
        .arg(&a.0)
        .args(["run", "--name", "sc", "--kernel"])
        .arg(&g)
        .args(["--memory", "64M"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmm run");
    let unread = src.stdout.take().unwrap();
    // Killed (by PID) however the test ends.
    let mut src = KillOnDrop(src);
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe this process holds.
        unsafe { libc::fcntl(unread.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    }
    // Running, and printing into the full pipe for a while.
    let deadline = Instant::now() + T;
    while !vmm_cli(&a.0, &["info", "sc"], T).1.contains("running") {
        assert!(Instant::now() < deadline, "the VM never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));

    let port = free_port();
    let dst = raw_destination(&b.0, "sc", port);
    let (st, out, err) = migrate_to_port(&a.0, "sc", port);
    assert!(
        st.success(),
        "the migration failed behind a stalled console: {out}{err}"
    );
    // The guest counts on at the destination.
    let before = dst.raw.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dst.raw.lock().unwrap().len() > before,
        "the guest does not run at the destination"
    );
    // The source ends by itself even though its console reader never read a byte.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = src.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the source did not exit after migrating away"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    drop(unread);
    let (st, _, err) = vmm_cli(&b.0, &["stop", "sc"], T);
    assert!(st.success(), "{err}");
    let (st, err) = dst.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
}
