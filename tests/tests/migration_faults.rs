//! Migrations that fail: each must leave the guest running on the source with its memory
//! intact, and make `vmm migrate` fail with a message that says what happened.

use std::process::Command;
use std::time::Duration;

use vmm_tests::proxy::{Proxy, Tamper};
use vmm_tests::{
    assert_source_intact, free_port, migrate_retrying, require_kvm, require_root, start_dirtier,
    test_key, wait_for_bytes_sent, RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);

fn migrate_until_connected(
    dir: &RuntimeDir,
    args: &[&str],
) -> (std::process::ExitStatus, String, String) {
    let key = test_key(&dir.0);
    let mut args = args.to_vec();
    args.extend_from_slice(&["--auth-key-file", key.to_str().unwrap()]);
    migrate_retrying(&dir.0, &args, T)
}

/// A destination on 127.0.0.1:`port` with the test key.
fn destination(dir: &RuntimeDir, name: &str, port: u16) -> VmProcess {
    vmm_tests::destination(&dir.0, name, port, vmm_tests::Incoming::default())
}

#[test]
fn a_cut_connection_leaves_the_guest_on_the_source() {
    if !require_kvm("a_cut_connection_leaves_the_guest_on_the_source") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let mut src = start_dirtier(&a.0, "f1", 1, &[]);
    let dst_port = free_port();
    let dst = destination(&b, "f1", dst_port);
    let proxy = Proxy::start(dst_port, Tamper::CutAt(2_000_000));
    let (st, _, err) = migrate_until_connected(
        &a,
        &[
            "migrate",
            "f1",
            "--to",
            &format!("tcp:127.0.0.1:{}", proxy.port),
        ],
    );
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("connection lost"), "{err}");
    proxy.join();
    // The destination discards its half-built VM and exits with an error.
    let (dst_status, dst_err) = dst.wait_exit(T);
    assert_eq!(dst_status.code(), Some(1), "{dst_err}");
    assert!(dst_err.contains("nothing was started here"), "{dst_err}");
    assert_source_intact(&a.0, &mut src, "f1");
}

#[test]
fn a_destination_killed_mid_transfer_leaves_the_guest_on_the_source() {
    if !require_kvm("a_destination_killed_mid_transfer_leaves_the_guest_on_the_source") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let mut src = start_dirtier(&a.0, "k1", 1, &[]);
    let port = free_port();
    let dst = destination(&b, "k1", port);
    let dst_pid = dst.pid();
    // A bandwidth cap keeps the transfer going long enough to kill the destination in it.
    let source_dir = a.0.clone();
    let killer = std::thread::spawn(move || {
        // Progress is counted per round: the first round is done, the next under way.
        wait_for_bytes_sent(&source_dir, "k1", 1, T);
        // SAFETY: killing our own child process by PID.
        unsafe { libc::kill(dst_pid as i32, libc::SIGKILL) };
    });
    let (st, _, err) = migrate_until_connected(
        &a,
        &[
            "migrate",
            "k1",
            "--to",
            &format!("tcp:127.0.0.1:{port}"),
            "--max-bandwidth",
            "4",
        ],
    );
    killer.join().unwrap();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("connection lost")
            || err.contains("Connection reset")
            || err.contains("Broken pipe"),
        "{err}"
    );
    drop(dst);
    assert_source_intact(&a.0, &mut src, "k1");
}

#[test]
fn a_destination_without_the_disk_refuses_with_the_reason() {
    if !require_kvm("a_destination_without_the_disk_refuses_with_the_reason")
        || !require_root("a_destination_without_the_disk_refuses_with_the_reason")
    {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let shared = a.0.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let disk = shared.join("web1.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut src = start_dirtier(&a.0, "d1", 1, &["--disk", disk.to_str().unwrap()]);
    let port = free_port();
    let key = test_key(&b.0);
    // The destination runs in its own mount namespace where the shared directory is empty:
    // a host that does not see the shared storage (its operator grants the path anyway).
    let script = format!(
        "mount -t tmpfs none {} && exec {} --runtime-dir {} run --name d1 --incoming tcp:127.0.0.1:{port} --auth-key-file {} --disk {}",
        shared.display(),
        vmm_tests::vmm_bin().display(),
        b.0.display(),
        key.display(),
        disk.display()
    );
    let mut dst = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let (st, _, err) = migrate_until_connected(
        &a,
        &["migrate", "d1", "--to", &format!("tcp:127.0.0.1:{port}")],
    );
    assert_eq!(st.code(), Some(1));
    assert!(
        err.contains("the VM was refused") && err.contains("web1.img is not usable here"),
        "{err}"
    );
    let status = dst.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_source_intact(&a.0, &mut src, "d1");
}
