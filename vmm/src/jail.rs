//! `vmm jail`: a VMM in a jail of its own, the way Firecracker's jailer builds one, then run in
//! the same process (no exec: nothing outside the jail, the VMM's binary and libraries
//! included, needs to be reachable from inside it). Started as root:
//!
//! 1. a new PID namespace (the VMM is its PID 1; this process stays outside, forwards SIGTERM,
//!    SIGINT and SIGHUP to it, and exits with its status once it ends, removing the jail);
//! 2. in the child: the network namespace `--netns` names (joined), a cgroup with the memory
//!    and CPU limits asked for (v2 where the host mounts it, else the v1 `memory` and `cpu`
//!    controllers, as these hosts mount them), rlimits (open files; no core dumps, never a
//!    dump of guest memory);
//! 3. a mount namespace whose root is `<chroot-base>/<id>/root`, holding only `/dev/kvm`,
//!    `/dev/net/tun`, `/dev/null`, `/dev/zero`, `/dev/urandom`, `/dev/ptmx` and `/dev/pts`, a
//!    fresh `/proc`, the runtime directory `/run/vmm`, and each `--grant PATH` at its own path
//!    (kernel, disks, key files, certificates): nothing else of the host is there to open;
//! 4. `--user`'s switch (privileges.rs: /dev/kvm kept, IDs set, no capability);
//! 5. the VMM, as `vmm --runtime-dir /run/vmm ARGS...` would run it, seccomp included.
//!
//! The host reaches the VM's API socket at `<chroot-base>/<id>/root/run/vmm/<name>.sock`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::privileges::User;

/// Where the VMM finds its runtime directory inside the jail.
pub(crate) const RUNTIME_DIR: &str = "/run/vmm";

/// Device nodes a VMM may need, bound into the jail when the host has them.
const DEVICES: &[&str] = &[
    "/dev/kvm",
    "/dev/net/tun",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/ptmx",
    "/dev/pts",
];

/// What `vmm jail` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct JailSpec {
    pub(crate) id: String,
    pub(crate) chroot_base: PathBuf,
    pub(crate) user: Option<User>,
    pub(crate) netns: Option<PathBuf>,
    pub(crate) memory_limit: Option<u64>,
    /// Percent of one CPU (150: one and a half).
    pub(crate) cpu_percent: Option<u32>,
    pub(crate) open_files: u64,
    pub(crate) grants: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("vmm jail must be started as root (it builds namespaces and mounts)")]
    NotRoot,
    #[error("--id {0}: letters, digits, '-' and '_' only, at most 64")]
    Id(String),
    #[error("--grant {}: cannot be granted", .0.display())]
    Grant(PathBuf, #[source] std::io::Error),
    #[error("{0} failed")]
    Call(String, #[source] std::io::Error),
    #[error("the cgroup {}", .0.display())]
    Cgroup(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
}

fn call(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<(), JailError> {
    if rc < 0 {
        return Err(JailError::Call(what(), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("a path from the OS has no NUL")
}

impl JailSpec {
    fn root(&self) -> PathBuf {
        self.chroot_base.join(&self.id).join("root")
    }

    /// The cgroup directories this jail uses, one per hierarchy.
    fn cgroups(&self) -> Vec<PathBuf> {
        let base = Path::new("/sys/fs/cgroup");
        if base.join("cgroup.controllers").exists() {
            vec![base.join(format!("vmm-{}", self.id))]
        } else {
            ["memory", "cpu"]
                .iter()
                .map(|c| base.join(c).join("vmm").join(&self.id))
                .filter(|p| p.parent().and_then(Path::parent).is_some_and(Path::exists))
                .collect()
        }
    }
}

/// Builds the jail and returns inside it, in the child, as the jailed user: the caller then
/// runs the VMM. The process that called it stays outside, waits and exits with the VMM's
/// status (it never returns).
pub(crate) fn enter(spec: &JailSpec) -> Result<(), JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    let id_ok = !spec.id.is_empty()
        && spec.id.len() <= 64
        && spec
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_ok {
        return Err(JailError::Id(spec.id.clone()));
    }
    let grants: Vec<PathBuf> = spec
        .grants
        .iter()
        .map(|g| std::fs::canonicalize(g).map_err(|e| JailError::Grant(g.clone(), e)))
        .collect::<Result<_, _>>()?;
    let root = spec.root();
    std::fs::create_dir_all(&root)
        .map_err(|e| JailError::Call(format!("creating {}", root.display()), e))?;
    // SAFETY: unshare(CLONE_NEWPID) affects only the children this process forks next.
    call(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || {
        "unshare(CLONE_NEWPID)".into()
    })?;
    // SAFETY: this process has one thread (the jail is entered before the VMM starts any),
    // so the child is a consistent copy; it only makes system calls and returns into Rust
    // code that does not rely on other threads.
    let child = unsafe { libc::fork() };
    call(child, || "fork".into())?;
    if child > 0 {
        let status = wait_forwarding_signals(child);
        for cg in spec.cgroups() {
            let _ = std::fs::remove_dir(&cg);
        }
        let _ = std::fs::remove_dir_all(spec.chroot_base.join(&spec.id));
        std::process::exit(status);
    }
    // The child: PID 1 of the new namespace.
    if let Some(netns) = &spec.netns {
        let ns = std::fs::File::open(netns)
            .map_err(|e| JailError::Call(format!("opening {}", netns.display()), e))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
        // SAFETY: setns on a descriptor we own; it moves only this process.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        call(rc, || {
            format!("joining the network namespace {}", netns.display())
        })?;
    }
    join_cgroups(spec)?;
    set_rlimits(spec.open_files)?;
    build_root(spec, &root, &grants)?;
    if let Some(user) = spec.user {
        crate::privileges::become_user(user)?;
    }
    Ok(())
}

/// Waits for the jailed VMM, handing it SIGTERM, SIGINT and SIGHUP; its exit status.
fn wait_forwarding_signals(child: libc::pid_t) -> i32 {
    // SAFETY: sigset_t is plain data; zeroed is a valid value to fill.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: these fill `set`, which we own, and block its signals for this (only) thread.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    eprintln!("vmm jail: the VMM runs as pid {child}");
    loop {
        let mut status = 0;
        // SAFETY: polls our own child; `status` is a valid out-parameter.
        let done = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if done == child {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            return 128 + libc::WTERMSIG(status);
        }
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: waits for one of the blocked signals; info is not needed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), JailError> {
    std::fs::write(path, value).map_err(|e| JailError::Cgroup(path.to_path_buf(), e))
}

fn join_cgroups(spec: &JailSpec) -> Result<(), JailError> {
    if spec.memory_limit.is_none() && spec.cpu_percent.is_none() {
        return Ok(());
    }
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for cg in spec.cgroups() {
        std::fs::create_dir_all(&cg).map_err(|e| JailError::Cgroup(cg.clone(), e))?;
        let period = 100_000u64;
        let quota = spec.cpu_percent.map(|p| u64::from(p) * period / 100);
        let controller = cg.parent().and_then(Path::parent).and_then(Path::file_name);
        match (v2, controller.and_then(|c| c.to_str())) {
            (true, _) => {
                if let Some(bytes) = spec.memory_limit {
                    write_file(&cg.join("memory.max"), &bytes.to_string())?;
                }
                if let Some(q) = quota {
                    write_file(&cg.join("cpu.max"), &format!("{q} {period}"))?;
                }
            }
            (false, Some("memory")) => {
                if let Some(bytes) = spec.memory_limit {
                    write_file(&cg.join("memory.limit_in_bytes"), &bytes.to_string())?;
                }
            }
            (false, Some("cpu")) => {
                if let Some(q) = quota {
                    write_file(&cg.join("cpu.cfs_period_us"), &period.to_string())?;
                    write_file(&cg.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
            }
            _ => {}
        }
        // "0": the writing process itself, in both versions.
        write_file(&cg.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

fn set_rlimits(open_files: u64) -> Result<(), JailError> {
    for (resource, value, name) in [
        (libc::RLIMIT_NOFILE, open_files, "RLIMIT_NOFILE"),
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
    ] {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct we pass.
        call(unsafe { libc::setrlimit(resource, &limit) }, || {
            format!("setrlimit({name})")
        })?;
    }
    Ok(())
}

/// Binds `from` (a file or a directory) at the same path under `root`.
fn bind_into(root: &Path, from: &Path) -> Result<(), JailError> {
    let to = root.join(from.strip_prefix("/").unwrap_or(from));
    let meta = std::fs::metadata(from).map_err(|e| JailError::Grant(from.to_path_buf(), e))?;
    let made = if meta.is_dir() {
        std::fs::create_dir_all(&to)
    } else {
        to.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&to)
                    .map(drop)
            })
    };
    made.map_err(|e| JailError::Grant(from.to_path_buf(), e))?;
    // SAFETY: mount with NUL-terminated paths that live across the call, no data.
    call(
        unsafe {
            libc::mount(
                cstr(from).as_ptr(),
                cstr(&to).as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        },
        || format!("binding {} into the jail", from.display()),
    )
}

fn build_root(spec: &JailSpec, root: &Path, grants: &[PathBuf]) -> Result<(), JailError> {
    let mount = |src: Option<&Path>, dst: &Path, fstype: Option<&str>, flags: libc::c_ulong| {
        let (src, fstype) = (src.map(cstr), fstype.map(|f| CString::new(f).unwrap()));
        let dst_c = cstr(dst);
        // SAFETY: mount with NUL-terminated strings that live across the call, no data.
        call(
            unsafe {
                libc::mount(
                    src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                    dst_c.as_ptr(),
                    fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                    flags,
                    std::ptr::null(),
                )
            },
            || format!("mount {}", dst.display()),
        )
    };
    // SAFETY: unshare(CLONE_NEWNS) gives this process a copy of the mount table.
    call(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "unshare(CLONE_NEWNS)".into()
    })?;
    // Nothing done here reaches the host's mounts.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)?;
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC)?;
    for dev in DEVICES.iter().map(Path::new).filter(|d| d.exists()) {
        bind_into(root, dev)?;
    }
    for grant in grants {
        bind_into(root, grant)?;
    }
    let run = root.join(RUNTIME_DIR.trim_start_matches('/'));
    let proc_dir = root.join("proc");
    for dir in [&run, &proc_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| JailError::Call(format!("creating {}", dir.display()), e))?;
    }
    if let Some(user) = spec.user {
        std::os::unix::fs::chown(&run, Some(user.uid), Some(user.gid))
            .map_err(|e| JailError::Call(format!("chown {}", run.display()), e))?;
    }
    std::env::set_current_dir(root)
        .map_err(|e| JailError::Call(format!("chdir {}", root.display()), e))?;
    let dot = CString::new(".").unwrap();
    // SAFETY: pivot_root(".", ".") with a NUL-terminated path that lives across the call
    // stacks the old root under the new one; umount2 then detaches it.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    call(rc as libc::c_int, || "pivot_root".into())?;
    // SAFETY: detaches the old root stacked at "." (a NUL-terminated path, live across the
    // call), leaving only the jail's tree.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    call(rc, || "detaching the host's root".into())?;
    std::env::set_current_dir("/").map_err(|e| JailError::Call("chdir /".into(), e))?;
    mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    Ok(())
}

/// Tests only (the failpoints build): `VMM_TEST_OPEN=PATH` makes a starting VMM try to open
/// PATH and say how that went, to show what a jailed VMM can reach of the host.
#[cfg(feature = "failpoints")]
pub(crate) fn test_open_probe() {
    if let Ok(path) = std::env::var("VMM_TEST_OPEN") {
        match std::fs::File::open(&path) {
            Ok(_) => eprintln!("vmm: test hook: opened {path}"),
            Err(e) => eprintln!(
                "vmm: test hook: cannot open {path}: {}",
                e.raw_os_error().map_or(e.to_string(), |n| {
                    if n == libc::ENOENT {
                        "ENOENT".to_string()
                    } else {
                        format!("errno {n}")
                    }
                })
            ),
        }
    }
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn test_open_probe() {}
