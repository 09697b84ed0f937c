//! `--user`: VMMs started as root that become an ordinary user (nobody, 65534) before opening
//! anything of the VM's run a guest with a disk and migrate it live between them (TCP, key
//! file) with its memory checked by the guest; each runs with that user's IDs, no
//! supplementary group, no capability and seccomp on; a disk the user may not read is refused,
//! naming it, although the VMM was started as root. And without root at all: a VMM started as
//! nobody, given a /dev/kvm node nobody may open, runs a guest.

use std::path::Path;
use std::time::Duration;

use vmm_tests::{
    destination, free_port, migrate_to_port, require_kvm, require_root, start_dirtier_kernel,
    test_key, vmm_cli, Incoming, RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);
const NOBODY: u32 = 65534;

fn give_to_nobody(path: &Path) {
    vmm_tests::chown_tree(path, NOBODY, NOBODY);
}

/// A copy of the guest `name`'s ELF in `dir` that nobody may read (the checkout may be
/// closed to nobody).
fn guest_for_nobody(name: &str, dir: &Path) -> std::path::PathBuf {
    vmm_tests::copy_for_user(&vmm_tests::guest(name), dir, NOBODY, NOBODY)
}

/// The `Uid`, `Gid`, `Groups`, `CapPrm`, `CapEff` and `Seccomp` lines of every thread.
fn assert_unprivileged(vm: &VmProcess) {
    let pid = vm.pid();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| vmm_tests::status_field(&status, name);
        let ids = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
        assert_eq!(field("Uid:"), ids, "{status}");
        assert_eq!(field("Gid:"), ids, "{status}");
        assert_eq!(field("Groups:"), "", "{status}");
        assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
        assert_eq!(field("Seccomp:"), "2", "{status}");
    }
}

#[test]
fn two_vmms_that_left_root_migrate_a_guest_with_its_disk() {
    if !require_kvm("two_vmms_that_left_root_migrate_a_guest_with_its_disk")
        || !require_root("two_vmms_that_left_root_migrate_a_guest_with_its_disk")
    {
        return;
    }
    let (a, b) = (RuntimeDir::new("user-src"), RuntimeDir::new("user-dst"));
    for dir in [&a.0, &b.0] {
        give_to_nobody(dir);
        give_to_nobody(&test_key(dir));
    }
    let disk = a.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    give_to_nobody(&disk);
    let disk_arg = disk.to_str().unwrap();
    let as_nobody = ["--user", "nobody", "--disk", disk_arg];

    let kernel = guest_for_nobody("dirtier", &a.0);
    let src = start_dirtier_kernel(&a.0, &[], &kernel, "u1", 2, &as_nobody);
    assert_unprivileged(&src);
    let port = free_port();
    let mut dst = destination(
        &b.0,
        "u1",
        port,
        Incoming {
            extra: &as_nobody,
            ..Incoming::default()
        },
    );
    assert_unprivileged(&dst);
    let (st, out, err) = migrate_to_port(&a.0, "u1", port);
    assert!(st.success(), "vmm migrate failed: {out}\n{err}");
    let (status, src_err) = src.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{src_err}");
    // The guest's self-check goes on at the destination, every vCPU, nothing corrupted.
    vmm_tests::assert_dirtier_goes_on(&mut dst, 2);
    assert_unprivileged(&dst);
    let (st, _, err) = vmm_cli(&b.0, &["stop", "u1"], T);
    assert!(st.success(), "{err}");
    let (status, _) = dst.wait_exit(T);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_vmm_that_left_root_cannot_open_what_its_user_may_not() {
    if !require_kvm("a_vmm_that_left_root_cannot_open_what_its_user_may_not")
        || !require_root("a_vmm_that_left_root_cannot_open_what_its_user_may_not")
    {
        return;
    }
    let dir = RuntimeDir::new("user-denied");
    give_to_nobody(&dir.0);
    let secret = dir.0.join("root-only.img");
    std::fs::write(&secret, vec![0u8; 1 << 20]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let g = guest_for_nobody("heartbeat", &dir.0);
    let (st, _, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--user",
            "65534",
            "--name",
            "denied",
            "--kernel",
            g.to_str().unwrap(),
            "--disk",
            secret.to_str().unwrap(),
        ],
        T,
    );
    assert!(!st.success());
    assert!(
        err.contains("root-only.img") && err.contains("Permission denied"),
        "{err}"
    );
    // Only root may switch users, and never to root.
    let (st, _, err) = vmm_cli(
        &dir.0,
        &["run", "--user", "0", "--name", "x", "--kernel", "/k"],
        T,
    );
    assert!(!st.success() && err.contains("root (uid 0)"), "{err}");
}

#[test]
fn an_ordinary_user_who_may_open_dev_kvm_runs_a_vm_without_root() {
    let name = "an_ordinary_user_who_may_open_dev_kvm_runs_a_vm_without_root";
    if !require_kvm(name) || !require_root(name) {
        return;
    }
    // This host's /dev/kvm is root's (0600). In a mount namespace of the VMM's own, a node of
    // the same device that nobody owns takes its place; the VMM then starts as nobody (never
    // root, no groups) and must manage with what that user may open.
    let dir = RuntimeDir::new("user-plain");
    give_to_nobody(&dir.0);
    let node = dir.0.join("kvm");
    let st = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "10", "232"])
        .status()
        .unwrap();
    assert!(st.success());
    give_to_nobody(&node);
    // The VMM and the guest run from copies nobody may read: the checkout may be closed to
    // nobody. The script drops the path of the VMM it is handed ($1) for the copy's.
    let vmm = vmm_tests::copy_for_user(&vmm_tests::vmm_bin(), &dir.0, NOBODY, NOBODY);
    let script = format!(
        "mount --bind {} /dev/kvm && shift && exec setpriv --reuid {NOBODY} --regid {NOBODY} --clear-groups {} \"$@\"",
        node.display(),
        vmm.display()
    );
    let g = guest_for_nobody("heartbeat", &dir.0);
    let mut vm = VmProcess::start_in(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ],
        &dir.0,
        &[
            "--name",
            "plain",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
        ],
    );
    vm.wait_for("cpu0 tick 2", T);
    assert_unprivileged(&vm);
    let (st, _, err) = vmm_cli(&dir.0, &["stop", "plain"], T);
    assert!(st.success(), "{err}");
    let (status, _) = vm.wait_exit(T);
    assert!(status.success(), "{status:?}");
}
