//! The secured migration channel against an attacker (docs/design.md section 7): on-path tampering,
//! eavesdropping, wrong keys and certificates, mismatched modes, an unauthenticated listener, a
//! destination that grants only what its operator gave it, and Unix-socket peers of another
//! user. Every failure leaves the guest running on the source with its memory intact.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use vmm_tests::proxy::{contains, Proxy, Tamper};
use vmm_tests::{
    assert_source_intact, free_port, key_file, make_certs, migrate_retrying, require_kvm,
    require_root, start_dirtier, test_key, vmm_bin, vmm_cli, RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);
/// The 64 bytes the dirtier guest holds in its memory (tests/guests/dirtier.S).
const MARKER: &[u8] = b"vmm-test-guest-secret:0123456789abcdefghijklmnopqrstuvwxyzABCDEF";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A destination waiting on 127.0.0.1:`port` with `opts` (security, grants).
fn incoming(dir: &RuntimeDir, name: &str, port: u16, opts: &[&str]) -> VmProcess {
    let to = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["--name", name, "--incoming", &to];
    args.extend_from_slice(opts);
    let mut p = VmProcess::start(&dir.0, &args);
    p.wait_for_stderr("waiting for VM", T);
    p
}

fn migrate(dir: &RuntimeDir, name: &str, port: u16, opts: &[&str]) -> (ExitStatus, String, String) {
    let to = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["migrate", name, "--to", &to];
    args.extend_from_slice(opts);
    vmm_cli(&dir.0, &args, T)
}

/// A migration that must succeed: the source exits 0 and the guest goes on at the destination.
fn assert_moved(st: ExitStatus, out: &str, err: &str, src: VmProcess, dst: &mut VmProcess) {
    assert!(st.success(), "migration failed: {out}\n{err}");
    assert_eq!(src.wait_exit(T).0.code(), Some(0));
    dst.wait_for("pass", T);
    let console = dst.console.lock().unwrap().clone();
    assert!(
        !console.iter().any(|l| l.contains("CORRUPT")),
        "{console:?}"
    );
}

#[test]
fn tampering_on_the_path_fails_the_migration_and_the_guest_stays_on_the_source() {
    if !require_kvm("tampering_on_the_path_fails_the_migration_and_the_guest_stays_on_the_source") {
        return;
    }
    // Record 1 carries the config; record 2 is round 0's first frame of pages (a record
    // carries up to 4 MiB of them).
    for (record, what) in [(1usize, "config"), (2, "page data")] {
        let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
        let (ka, kb) = (test_key(&a.0), test_key(&b.0));
        let mut src = start_dirtier(&a.0, "t1", 1, &[]);
        let port = free_port();
        let dst = incoming(&b, "t1", port, &["--auth-key-file", s(&kb)]);
        let proxy = Proxy::start(port, Tamper::FlipRecord(record));
        let (st, _, err) = migrate(&a, "t1", proxy.port, &["--auth-key-file", s(&ka)]);
        assert_eq!(st.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("tampered"),
            "{what}: the source says why: {err}"
        );
        proxy.join();
        let (dst_status, dst_err) = dst.wait_exit(T);
        assert_eq!(dst_status.code(), Some(1), "{what}: {dst_err}");
        assert!(
            dst_err.contains("tampered") && dst_err.contains("nothing was started here"),
            "{what}: {dst_err}"
        );
        assert_source_intact(&a.0, &mut src, "t1");
    }
}

#[test]
fn a_captured_stream_holds_guest_memory_only_when_insecure() {
    if !require_kvm("a_captured_stream_holds_guest_memory_only_when_insecure") {
        return;
    }
    let hosts = [RuntimeDir::new("host1"), RuntimeDir::new("host2")];
    let certs = hosts[0].0.join("tls");
    make_certs(&certs, &["127.0.0.1"]);
    let key = test_key(&hosts[0].0);
    let mut vm = start_dirtier(&hosts[0].0, "c1", 1, &[]);
    let modes: [(&str, Vec<&str>, bool); 3] = [
        ("key file", vec!["--auth-key-file", s(&key)], false),
        ("TLS", vec!["--tls-dir", s(&certs)], false),
        ("--insecure", vec!["--insecure"], true),
    ];
    for (i, (mode, opts, readable)) in modes.iter().enumerate() {
        let (from, to) = (&hosts[i % 2], &hosts[(i + 1) % 2]);
        let port = free_port();
        let mut dst = incoming(to, "c1", port, opts);
        let proxy = Proxy::start(port, Tamper::None);
        let (st, out, err) = migrate(from, "c1", proxy.port, opts);
        let capture = proxy.join();
        assert_moved(st, &out, &err, vm, &mut dst);
        assert!(
            capture.len() > 1 << 20,
            "{mode}: {} bytes captured",
            capture.len()
        );
        assert_eq!(
            contains(&capture, MARKER),
            *readable,
            "{mode}: the guest's marker {} the capture",
            if *readable {
                "must appear in"
            } else {
                "must not appear in"
            }
        );
        vm = dst;
    }
}

/// A certificate directory made of `ca` from one set and the client identity from another.
fn mixed_certs(dir: &Path, ca_from: &Path, client_from: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(ca_from.join("ca-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    for f in ["client-cert.pem", "client-key.pem"] {
        std::fs::copy(client_from.join(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

/// Migration attempts from `from` that the destination `dst` refuses: each (source options,
/// what the source's error says, what the destination logs); the destination keeps waiting.
fn refused_attempts(
    from: &RuntimeDir,
    port: u16,
    dst: &mut VmProcess,
    attempts: &[(Vec<&str>, &str, &str)],
) {
    for (opts, source_says, destination_logs) in attempts {
        let (st, _, err) = migrate(from, "w1", port, opts);
        assert_eq!(st.code(), Some(1), "{opts:?}: {err}");
        assert!(err.contains(source_says), "{opts:?}: {err}");
        dst.wait_for_stderr(destination_logs, T);
    }
}

#[test]
fn wrong_keys_certificates_and_modes_are_refused_and_the_destination_keeps_waiting() {
    if !require_kvm(
        "wrong_keys_certificates_and_modes_are_refused_and_the_destination_keeps_waiting",
    ) {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let k1 = test_key(&a.0);
    let k2 = key_file(&a.0, "other.key", "a different key of enough length");
    let (set_a, set_b) = (a.0.join("tls-a"), a.0.join("tls-b"));
    make_certs(&set_a, &["127.0.0.1"]);
    make_certs(&set_b, &["127.0.0.1"]);
    let wrong_ca = mixed_certs(&a.0.join("tls-wrong-ca"), &set_b, &set_a);
    let foreign_client = mixed_certs(&a.0.join("tls-foreign-client"), &set_a, &set_b);
    let src = start_dirtier(&a.0, "w1", 1, &[]);

    // A key-file destination: a wrong key, a plaintext source and a TLS source are refused.
    let port = free_port();
    let mut dst = incoming(&b, "w1", port, &["--auth-key-file", s(&k1)]);
    refused_attempts(
        &a,
        port,
        &mut dst,
        &[
            (
                vec!["--auth-key-file", s(&k2)],
                "authentication failed",
                "authentication failed",
            ),
            (
                vec!["--insecure"],
                "destination requires a pre-shared key",
                "source requires an unencrypted",
            ),
            (
                vec!["--tls-dir", s(&set_a)],
                "destination requires a pre-shared key",
                "source requires mutual TLS",
            ),
        ],
    );
    let (st, out, err) = migrate(&a, "w1", port, &["--auth-key-file", s(&k1)]);
    assert_moved(st, &out, &err, src, &mut dst);

    // A TLS destination: a source trusting another CA, a source whose certificate another CA
    // signed, and a key-file source are refused.
    let src = dst;
    let port = free_port();
    let mut dst = incoming(&a, "w1", port, &["--tls-dir", s(&set_a)]);
    refused_attempts(
        &b,
        port,
        &mut dst,
        &[
            (
                vec!["--tls-dir", s(&wrong_ca)],
                "authentication failed",
                "authentication failed",
            ),
            (
                vec!["--tls-dir", s(&foreign_client)],
                "authentication failed",
                "authentication failed",
            ),
            (
                vec!["--auth-key-file", s(&k1)],
                "destination requires mutual TLS",
                "source requires a pre-shared key",
            ),
        ],
    );
    let (st, out, err) = migrate(&b, "w1", port, &["--tls-dir", s(&set_a)]);
    assert_moved(st, &out, &err, src, &mut dst);

    // A plaintext destination: a secured source refuses it; a source without any option does
    // not even connect.
    let src = dst;
    let port = free_port();
    let mut dst = incoming(&b, "w1", port, &["--insecure"]);
    let (st, _, err) = migrate(&a, "w1", port, &["--auth-key-file", s(&k1)]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("destination requires an unencrypted"), "{err}");
    dst.wait_for_stderr("source requires a pre-shared key", T);
    let (st, _, err) = migrate(&a, "w1", port, &[]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("refusing to send guest memory"), "{err}");
    let (st, out, err) = migrate(&a, "w1", port, &["--insecure"]);
    assert!(err.contains("warning: --insecure"), "{err}");
    assert_moved(st, &out, &err, src, &mut dst);
    let (_, dst_err) = {
        let (st, _, _) = vmm_cli(&b.0, &["stop", "w1"], T);
        assert!(st.success());
        dst.wait_exit(T)
    };
    assert!(dst_err.contains("warning: --insecure"), "{dst_err}");
}

#[test]
fn a_tcp_destination_needs_a_key_certificates_or_insecure_and_bounded_key_files() {
    let b = RuntimeDir::new("host2");
    for listen in ["tcp:127.0.0.1", "tcp:0.0.0.0"] {
        let to = format!("{listen}:{}", free_port());
        let (st, _, err) = vmm_cli(&b.0, &["run", "--name", "x", "--incoming", &to], T);
        assert_eq!(st.code(), Some(1), "{to}");
        assert!(
            err.contains("--auth-key-file")
                && err.contains("--tls-dir")
                && err.contains("--insecure"),
            "{to}: {err}"
        );
    }
    let to = format!("tcp:127.0.0.1:{}", free_port());
    for (key, expected) in [
        ("/dev/zero", "not a regular file"),
        ("/nonexistent/key", "cannot read"),
    ] {
        let (st, _, err) = vmm_cli(
            &b.0,
            &[
                "run",
                "--name",
                "x",
                "--incoming",
                &to,
                "--auth-key-file",
                key,
            ],
            T,
        );
        assert_eq!(st.code(), Some(1), "{key}");
        assert!(err.contains(expected), "{key}: {err}");
    }
    let big = b.0.join("big.key");
    std::fs::write(&big, vec![b'k'; 1 << 20]).unwrap();
    let (st, _, err) = vmm_cli(
        &b.0,
        &[
            "run",
            "--name",
            "x",
            "--incoming",
            &to,
            "--auth-key-file",
            s(&big),
        ],
        T,
    );
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("larger than 4096 bytes"), "{err}");
    let (st, _, err) = vmm_cli(
        &b.0,
        &[
            "run",
            "--name",
            "x",
            "--incoming",
            &to,
            "--tls-dir",
            "/nonexistent",
        ],
        T,
    );
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("ca-cert.pem"), "{err}");
}

#[test]
fn a_destination_gives_the_guest_only_the_disks_its_operator_granted() {
    if !require_kvm("a_destination_gives_the_guest_only_the_disks_its_operator_granted")
        || !require_root("a_destination_gives_the_guest_only_the_disks_its_operator_granted")
    {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let (ka, kb) = (test_key(&a.0), test_key(&b.0));
    let shared = a.0.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let disk = shared.join("web1.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut src = start_dirtier(&a.0, "g1", 1, &["--disk", s(&disk)]);
    let readonly = format!("{},readonly=on", disk.display());
    for (grants, expected) in [
        (vec![], "the VM has 1 disk(s), this destination grants 0"),
        (
            vec!["--disk", readonly.as_str()],
            "readonly=off on the source, readonly=on granted here",
        ),
    ] {
        let port = free_port();
        let mut opts = vec!["--auth-key-file", s(&kb)];
        opts.extend_from_slice(&grants);
        let dst = incoming(&b, "g1", port, &opts);
        let (st, _, err) = migrate(&a, "g1", port, &["--auth-key-file", s(&ka)]);
        assert_eq!(st.code(), Some(1), "{grants:?}: {err}");
        assert!(err.contains(expected), "{grants:?}: {err}");
        let (dst_status, dst_err) = dst.wait_exit(T);
        assert_eq!(dst_status.code(), Some(1));
        assert!(dst_err.contains(expected), "{dst_err}");
    }
    // A destination whose shared storage holds a disk of another size at the same path (its
    // own mount namespace, a tmpfs over the directory).
    let port = free_port();
    let script = format!(
        "mount -t tmpfs none {shared} && truncate -s 2M {shared}/web1.img && exec {vmm} --runtime-dir {dir} run --name g1 --incoming tcp:127.0.0.1:{port} --auth-key-file {key} --disk {shared}/web1.img",
        shared = shared.display(),
        vmm = vmm_bin().display(),
        dir = b.0.display(),
        key = kb.display(),
    );
    let mut other_size = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("unshare");
    let to = format!("tcp:127.0.0.1:{port}");
    let (st, _, err) = migrate_retrying(
        &a.0,
        &["migrate", "g1", "--to", &to, "--auth-key-file", s(&ka)],
        T,
    );
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("is 2097152 bytes here but 1048576 bytes on the source"),
        "{err}"
    );
    assert_eq!(other_size.wait().unwrap().code(), Some(1));
    assert_source_intact(&a.0, &mut src, "g1");

    // The disk granted as the source has it: the VM moves.
    let port = free_port();
    let mut dst = incoming(
        &b,
        "g1",
        port,
        &["--auth-key-file", s(&kb), "--disk", s(&disk)],
    );
    let (st, out, err) = migrate(&a, "g1", port, &["--auth-key-file", s(&ka)]);
    assert_moved(st, &out, &err, src, &mut dst);
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o777
}

/// Runs a command as the user `nobody` (setpriv from util-linux).
fn as_nobody(cmd: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(cmd)
        .output()
        .expect("setpriv")
}

#[test]
fn unix_sockets_answer_only_their_owner_or_root() {
    if !require_kvm("unix_sockets_answer_only_their_owner_or_root")
        || !require_root("unix_sockets_answer_only_their_owner_or_root")
    {
        return;
    }
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let src = start_dirtier(&a.0, "u1", 1, &[]);
    let sock_dir = b.0.join("migrate");
    std::fs::create_dir_all(&sock_dir).unwrap();
    let sock = sock_dir.join("u1.sock");
    let to = format!("unix:{}", sock.display());
    let mut dst = VmProcess::start(&b.0, &["--name", "u1", "--incoming", &to]);
    dst.wait_for_stderr("waiting for VM", T);
    assert_eq!(
        mode_of(&sock),
        0o600,
        "the migration socket is created 0600"
    );
    // Open the file permissions up, so that only the peer-credential check stands between
    // another user and the socket.
    chmod(&sock_dir, 0o755);
    chmod(&b.0, 0o755);
    chmod(&sock, 0o666);
    let probe = as_nobody(&[env!("CARGO_BIN_EXE_unix-connect"), s(&sock)]);
    let said = String::from_utf8_lossy(&probe.stdout);
    assert_eq!(
        probe.status.code(),
        Some(1),
        "nobody's connection is closed unanswered: {said}"
    );
    dst.wait_for_stderr("uid 65534", T);
    // The owner (root here) migrates over the same socket; no key is needed on a Unix socket.
    let (st, out, err) = migrate_retrying(&a.0, &["migrate", "u1", "--to", &to], T);
    assert_moved(st, &out, &err, src, &mut dst);

    // The API socket of the running VM: 0600, and refused to another user even when its
    // mode would let them connect.
    let control = b.0.join("u1.sock");
    assert_eq!(mode_of(&control), 0o600, "the API socket is created 0600");
    chmod(&control, 0o666);
    let info = as_nobody(&[s(&vmm_bin()), "--runtime-dir", s(&b.0), "info", "u1"]);
    let said = String::from_utf8_lossy(&info.stderr);
    assert_eq!(info.status.code(), Some(1), "{said}");
    assert!(
        said.contains("permission denied") && said.contains("uid 65534"),
        "{said}"
    );
    let (st, out, _) = vmm_cli(&b.0, &["info", "u1"], T);
    assert!(st.success() && out.contains("running"), "{out}");
}

/// A received VM never opens the source's kernel: without a granted payload a reboot is
/// refused with the way to grant one; with one it boots the kernel granted on this host.
#[test]
fn a_received_vm_reboots_only_into_a_kernel_its_destination_granted() {
    if !require_kvm("a_received_vm_reboots_only_into_a_kernel_its_destination_granted") {
        return;
    }
    let (a, b, c) = (
        RuntimeDir::new("host1"),
        RuntimeDir::new("host2"),
        RuntimeDir::new("host3"),
    );
    let key = test_key(&a.0);
    let src = start_dirtier(&a.0, "g1", 1, &[]);
    let source_kernel = vmm_tests::guest("dirtier");
    // No payload granted on host2.
    let port = free_port();
    let mut dst = incoming(&b, "g1", port, &["--auth-key-file", s(&key)]);
    let (st, out, err) = migrate(&a, "g1", port, &["--auth-key-file", s(&key)]);
    assert_moved(st, &out, &err, src, &mut dst);
    let (st, out, _) = vmm_cli(&b.0, &["api", "g1", "GET", "vm.info"], T);
    assert!(st.success(), "{out}");
    assert!(
        !out.contains(source_kernel.to_str().unwrap()),
        "the source's kernel path reached the destination: {out}"
    );
    let (st, _, err) = vmm_cli(&b.0, &["api", "g1", "PUT", "vm.reboot"], T);
    assert!(
        !st.success(),
        "a reboot without a granted kernel was accepted"
    );
    assert!(err.contains("granted no kernel"), "{err}");
    // host3 grants a kernel of its own (a copy at another path): the reboot boots it.
    let granted = c.0.join("granted-kernel");
    std::fs::copy(&source_kernel, &granted).unwrap();
    let port = free_port();
    let mut dst3 = incoming(
        &c,
        "g1",
        port,
        &["--auth-key-file", s(&key), "--kernel", s(&granted)],
    );
    let (st, out, err) = migrate(&b, "g1", port, &["--auth-key-file", s(&key)]);
    assert_moved(st, &out, &err, dst, &mut dst3);
    let (st, out, err) = vmm_cli(&c.0, &["api", "g1", "PUT", "vm.reboot"], T);
    assert!(st.success(), "{out}{err}");
    dst3.wait_for("cpu0 pass 16 ok", T);
    let (_, out, _) = vmm_cli(&c.0, &["api", "g1", "GET", "vm.info"], T);
    assert!(out.contains(granted.to_str().unwrap()), "{out}");
}
