//! `vmm jail`: VMMs in jails of their own (PID and mount namespaces with only /dev/kvm, the
//! PTYs, /proc and the granted paths; a cgroup with memory and CPU limits; rlimits), run as
//! nobody with seccomp on, carry a 2-vCPU guest with a disk from jail to jail over TCP with a
//! key file, over TLS, and over a Unix socket, its memory self-check going on after every hop.
//! From the host: the cgroup's limits are in its files, the VMM is PID 1 of its namespace, and
//! a jailed VMM trying to open /etc/shadow (the failpoints build's VMM_TEST_OPEN hook) finds
//! nothing there (ENOENT); the host's `vmm pause`, `resume` and `stop` reach the jailed VM, and
//! the jail's directory goes with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_tests::{
    free_port, guest, key_file, make_certs, migrate_retrying, require_kvm, require_root, vmm_cli,
    RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);
const NOBODY: u32 = 65534;

fn give_to_nobody(path: &Path) {
    vmm_tests::chown_tree(path, NOBODY, NOBODY);
}

/// Jails under `base`, each VM named "j".
struct Jails {
    base: PathBuf,
    files: PathBuf,
    kernel: PathBuf,
    disk: PathBuf,
}

impl Jails {
    /// The VM's runtime directory as the host sees it.
    fn runtime(&self, id: &str) -> PathBuf {
        self.base.join(id).join("root/run/vmm")
    }

    /// `vmm --user 65534 jail --id ID ... -- VMM_ARGS`, granted the kernel, the disk and the
    /// files directory (keys, certificates, the Unix socket).
    fn start(&self, id: &str, vmm_args: &[&str]) -> VmProcess {
        let mut args = vec![
            "--user".to_string(),
            NOBODY.to_string(),
            "jail".into(),
            "--id".into(),
            id.into(),
            "--chroot-base".into(),
            self.base.display().to_string(),
            "--memory-limit".into(),
            "512M".into(),
            "--cpu-quota".into(),
            "150".into(),
        ];
        for g in [&self.kernel, &self.files, &self.disk] {
            args.extend(["--grant".to_string(), g.display().to_string()]);
        }
        args.push("--".into());
        args.extend(vmm_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        VmProcess::start_args(&[("VMM_TEST_OPEN", "/etc/shadow")], &args)
    }

    /// A jailed dirtier guest with the disk.
    fn source(&self, id: &str) -> VmProcess {
        let mut vm = self.start(
            id,
            &[
                "run",
                "--name",
                "j",
                "--kernel",
                self.kernel.to_str().unwrap(),
                "--memory",
                "128M",
                "--vcpus",
                "2",
                "--disk",
                self.disk.to_str().unwrap(),
            ],
        );
        vm.wait_for_each(&["cpu0 pass 16 ok", "cpu1 pass 16 ok"], T);
        vm
    }
}

/// The jailed VMM's PID as the host sees it: the jail process's one child.
fn vmm_pid(jail: &VmProcess) -> u32 {
    let pid = jail.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children.trim().parse().unwrap()
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    vmm_tests::status_field(&status, name)
}

/// What the host sees of a jailed VMM: PID 1 inside, nobody, no capability, seccomp, the
/// cgroup's limits, and /etc/shadow out of its reach.
fn assert_jailed(id: &str, jail: &mut VmProcess) {
    // Printed once the VMM is jailed, confined and about to start.
    jail.wait_for_stderr("test hook: cannot open /etc/shadow: ENOENT", T);
    let pid = vmm_pid(jail);
    assert_eq!(status_field(pid, "NSpid:"), format!("{pid} 1"));
    assert_eq!(
        status_field(pid, "Uid:"),
        format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")
    );
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    let cgroup = Path::new("/sys/fs/cgroup");
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if cgroup.join("cgroup.controllers").exists() {
        let cg = cgroup.join(format!("vmm-{id}"));
        assert_eq!(
            read(cg.join("memory.max")).trim(),
            (512u64 << 20).to_string()
        );
        assert_eq!(read(cg.join("cpu.max")).trim(), "150000 100000");
        assert!(read(cg.join("cgroup.procs")).contains(&pid.to_string()));
    } else {
        let mem = cgroup.join("memory/vmm").join(id);
        let cpu = cgroup.join("cpu/vmm").join(id);
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")).trim(),
            (512u64 << 20).to_string()
        );
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")).trim(), "150000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")).trim(), "100000");
        assert!(read(mem.join("cgroup.procs")).contains(&pid.to_string()));
    }
}

/// Moves the VM from jail `from` (process `src`) to jail `to`, listening on `listen` with
/// `security`; the destination's process.
fn hop(
    jails: &Jails,
    src: VmProcess,
    from: &str,
    to: &str,
    listen: &str,
    security: &[&str],
) -> VmProcess {
    let mut args = vec![
        "run",
        "--name",
        "j",
        "--incoming",
        listen,
        "--disk",
        jails.disk.to_str().unwrap(),
    ];
    args.extend_from_slice(security);
    let mut dst = jails.start(to, &args);
    assert_jailed(to, &mut dst);
    dst.wait_for_stderr("waiting for VM", T);
    let runtime = jails.runtime(from);
    let mut migrate = vec!["migrate", "j", "--to", listen];
    migrate.extend_from_slice(security);
    let (st, out, err) = migrate_retrying(&runtime, &migrate, T);
    assert!(st.success(), "{from} -> {to} over {listen}: {out}\n{err}");
    let (status, src_err) = src.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{src_err}");
    vmm_tests::assert_dirtier_goes_on(&mut dst, 2);
    dst
}

#[test]
fn jailed_unprivileged_vmms_migrate_over_tcp_tls_and_a_unix_socket() {
    let name = "jailed_unprivileged_vmms_migrate_over_tcp_tls_and_a_unix_socket";
    if !require_kvm(name) || !require_root(name) {
        return;
    }
    let dir = RuntimeDir::new("jails");
    let files = dir.0.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let key = key_file(&files, "migration.key", "vmm-test-migration-key-0123456789");
    let certs = files.join("tls");
    make_certs(&certs, &["127.0.0.1"]);
    let disk = files.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    give_to_nobody(&files);
    let jails = Jails {
        base: dir.0.join("base"),
        files: files.clone(),
        kernel: guest("dirtier"),
        disk,
    };

    let mut vm = jails.source("a");
    assert_jailed("a", &mut vm);
    let key = key.to_str().unwrap();
    let vm = hop(
        &jails,
        vm,
        "a",
        "b",
        &format!("tcp:127.0.0.1:{}", free_port()),
        &["--auth-key-file", key],
    );
    let vm = hop(
        &jails,
        vm,
        "b",
        "c",
        &format!("tcp:127.0.0.1:{}", free_port()),
        &["--tls-dir", certs.to_str().unwrap()],
    );
    // The Unix socket is made in the granted directory every jail has at the same path, so
    // the source's VMM, in its own jail, reaches the socket the destination's made in its.
    let socket = files.join("j.mig");
    let vm = hop(
        &jails,
        vm,
        "c",
        "d",
        &format!("unix:{}", socket.display()),
        &[],
    );
    // The API from the host: pause and resume the jailed VM, then stop it.
    let mut vm = vm;
    for (command, state) in [("pause", "paused"), ("resume", "running")] {
        let (st, _, err) = vmm_cli(&jails.runtime("d"), &[command, "j"], T);
        assert!(st.success(), "{command}: {err}");
        let (_, out, _) = vmm_cli(&jails.runtime("d"), &["info", "j"], T);
        assert!(out.contains(state), "after {command}: {out}");
    }
    vm.drain();
    vm.wait_for("cpu0 pass", T);
    let (st, _, err) = vmm_cli(&jails.runtime("d"), &["stop", "j"], T);
    assert!(st.success(), "{err}");
    let (status, _) = vm.wait_exit(T);
    assert!(status.success(), "{status:?}");
    assert!(
        !jails.base.join("d").exists(),
        "the jail's directory outlived its VMM"
    );
}
