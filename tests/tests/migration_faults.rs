//! Migrations that fail: each must leave the guest running on the source with its memory
//! intact, and make `vmm migrate` fail with a message that says what happened.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use vmm_tests::{free_port, guest, migrate_retrying, require_kvm, vmm_cli, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(120);

fn start_dirtier(dir: &RuntimeDir, name: &str, extra: &[&str]) -> VmProcess {
    let g = guest("dirtier");
    let mut args = vec![
        "--name",
        name,
        "--kernel",
        g.to_str().unwrap(),
        "--memory",
        "128M",
    ];
    args.extend_from_slice(extra);
    let mut vm = VmProcess::start(&dir.0, &args);
    vm.wait_for("cpu0 pass 16 ok", T);
    vm
}

fn migrate_until_connected(
    dir: &RuntimeDir,
    args: &[&str],
) -> (std::process::ExitStatus, String, String) {
    migrate_retrying(&dir.0, args, T)
}

/// The source VM is running, answering, and its guest still passes its memory self-check.
fn assert_source_intact(dir: &RuntimeDir, vm: &mut VmProcess, name: &str) {
    let (st, out, err) = vmm_cli(&dir.0, &["info", name, "--json"], T);
    assert!(st.success(), "{err}");
    assert!(out.contains("\"running\""), "{out}");
    vm.drain();
    vm.wait_for("pass", T);
    vm.wait_for("pass", T);
    let console = vm.console.lock().unwrap().clone();
    assert!(
        !console.iter().any(|l| l.contains("CORRUPT")),
        "memory corrupted: {:?}",
        &console[console.len().saturating_sub(10)..]
    );
}

/// Relays one TCP connection from `listen` to `target`, damaging the source-to-destination
/// direction after `after` bytes: cut (close both ends) or flip one byte.
fn damaging_proxy(
    listen: TcpListener,
    target: u16,
    after: usize,
    flip: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok((mut from_src, _)) = listen.accept() else {
            return;
        };
        let Ok(mut to_dst) = TcpStream::connect(("127.0.0.1", target)) else {
            return;
        };
        let mut back_src = from_src.try_clone().unwrap();
        let mut back_dst = to_dst.try_clone().unwrap();
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_dst, &mut back_src);
        });
        let mut seen = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match from_src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if seen + n > after && seen <= after {
                if flip {
                    buf[after - seen] ^= 0x5a;
                } else {
                    let _ = to_dst.write_all(&buf[..after - seen]);
                    break;
                }
            }
            seen += n;
            if to_dst.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        if flip {
            // The destination rejects the damaged frame and closes; let its error reach the
            // source before the relay goes away, as it would without a proxy in between.
            let _ = to_dst.shutdown(std::net::Shutdown::Write);
            let _ = back.join();
            let _ = from_src.shutdown(std::net::Shutdown::Both);
        } else {
            let _ = to_dst.shutdown(std::net::Shutdown::Both);
            let _ = from_src.shutdown(std::net::Shutdown::Both);
            let _ = back.join();
        }
    })
}

#[test]
fn a_cut_connection_or_a_corrupted_frame_leaves_the_guest_on_the_source() {
    if !require_kvm("a_cut_connection_or_a_corrupted_frame_leaves_the_guest_on_the_source") {
        return;
    }
    for (flip, after, expected) in [
        (false, 2_000_000, "connection lost"),
        (true, 3_000_000, "checksum"),
    ] {
        let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
        let mut src = start_dirtier(&a, "f1", &[]);
        let dst_port = free_port();
        let dst = VmProcess::start(
            &b.0,
            &[
                "--name",
                "f1",
                "--incoming",
                &format!("tcp:127.0.0.1:{dst_port}"),
            ],
        );
        std::thread::sleep(Duration::from_millis(300));
        let proxy_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_port = proxy_listener.local_addr().unwrap().port();
        let proxy = damaging_proxy(proxy_listener, dst_port, after, flip);
        let (st, _, err) = migrate_until_connected(
            &a,
            &[
                "migrate",
                "f1",
                "--to",
                &format!("tcp:127.0.0.1:{proxy_port}"),
            ],
        );
        assert_eq!(st.code(), Some(1), "flip={flip}: {err}");
        assert!(
            err.to_lowercase().contains(expected),
            "flip={flip}: expected {expected:?} in {err}"
        );
        let _ = proxy.join();
        // The destination discards its half-built VM and exits with an error.
        let (dst_status, dst_err) = dst.wait_exit(T);
        assert_eq!(dst_status.code(), Some(1), "{dst_err}");
        assert!(dst_err.contains("nothing was started here"), "{dst_err}");
        assert_source_intact(&a, &mut src, "f1");
    }
}

#[test]
fn a_destination_killed_mid_transfer_leaves_the_guest_on_the_source() {
    if !require_kvm("a_destination_killed_mid_transfer_leaves_the_guest_on_the_source") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let mut src = start_dirtier(&a, "k1", &[]);
    let port = free_port();
    let dst = VmProcess::start(
        &b.0,
        &[
            "--name",
            "k1",
            "--incoming",
            &format!("tcp:127.0.0.1:{port}"),
        ],
    );
    let dst_pid = dst.pid();
    // A bandwidth cap keeps the transfer going long enough to kill the destination in it.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
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
    assert_source_intact(&a, &mut src, "k1");
}

#[test]
fn a_wrong_key_is_refused_on_both_ends() {
    if !require_kvm("a_wrong_key_is_refused_on_both_ends") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let k1 = a.0.join("key1");
    let k2 = a.0.join("key2");
    std::fs::write(&k1, "correct horse battery staple\n").unwrap();
    std::fs::write(&k2, "incorrect horse battery staple\n").unwrap();
    let mut src = start_dirtier(&a, "a1", &[]);
    let port = free_port();
    let dst = VmProcess::start(
        &b.0,
        &[
            "--name",
            "a1",
            "--incoming",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            k1.to_str().unwrap(),
        ],
    );
    let (st, _, err) = migrate_until_connected(
        &a,
        &[
            "migrate",
            "a1",
            "--to",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            k2.to_str().unwrap(),
        ],
    );
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("authentication failed"), "{err}");
    let (dst_status, dst_err) = dst.wait_exit(T);
    assert_eq!(dst_status.code(), Some(1));
    assert!(dst_err.contains("authentication failed"), "{dst_err}");
    assert_source_intact(&a, &mut src, "a1");

    // With the same key on both ends it goes through.
    let port = free_port();
    let mut dst = VmProcess::start(
        &b.0,
        &[
            "--name",
            "a1",
            "--incoming",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            k1.to_str().unwrap(),
        ],
    );
    let (st, out, err) = migrate_until_connected(
        &a,
        &[
            "migrate",
            "a1",
            "--to",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            k1.to_str().unwrap(),
        ],
    );
    assert!(st.success(), "{out}{err}");
    dst.wait_for("pass", T);
    assert_eq!(src.wait_exit(T).0.code(), Some(0));
}

#[test]
fn an_unauthenticated_listener_on_the_network_is_refused() {
    let b = RuntimeDir::new("host2");
    let (st, _, err) = vmm_cli(
        &b.0,
        &[
            "run",
            "--name",
            "x",
            "--incoming",
            &format!("tcp:0.0.0.0:{}", free_port()),
        ],
        T,
    );
    assert_eq!(st.code(), Some(1));
    assert!(
        err.contains("--auth-key-file") && err.contains("--insecure"),
        "{err}"
    );
}

#[test]
fn a_destination_without_the_disk_refuses_with_the_reason() {
    if !require_kvm("a_destination_without_the_disk_refuses_with_the_reason") {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let shared = a.0.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let disk = shared.join("web1.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut src = start_dirtier(&a, "d1", &["--disk", disk.to_str().unwrap()]);
    let port = free_port();
    // The destination runs in its own mount namespace where the shared directory is empty:
    // a host that does not see the shared storage.
    let script = format!(
        "mount -t tmpfs none {} && exec {} --runtime-dir {} run --name d1 --incoming tcp:127.0.0.1:{port}",
        shared.display(),
        vmm_tests::vmm_bin().display(),
        b.0.display()
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
        err.contains("refused the VM") && err.contains("web1.img is not reachable here"),
        "{err}"
    );
    let status = dst.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_source_intact(&a, &mut src, "d1");
}
