//! What each kind of thread may call: the system calls it was seen to make (strace of the
//! test suite by thread name, then the whole suite in `--seccomp log` with the kernel's log
//! read back), nothing more. `ioctl` is checked by its request where the kind needs only a
//! few: a vCPU only KVM's (the request's type byte is KVMIO), the console and API threads only
//! FIONBIO/FIOCLEX, the device loop none; `socket` only for the families the VMM uses (Unix,
//! IPv4, IPv6, and route netlink, which glibc's getaddrinfo reads to sort a name's addresses),
//! never packet, crypto (AF_ALG), vsock or the rest of the kernel's socket families, and
//! `socketpair` only for Unix sockets. The main and migration threads get the wide list:
//! the main thread starts every other thread, and seccomp filters stack, so its list must hold
//! theirs; at a destination the migration threads assemble the received VM (KVM, the granted
//! disks and taps, sockets) as the main thread does at boot.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// Every thread: memory, futexes, its own exit, time, signals returning, logging to stderr.
const BASE: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_fcntl,
    libc::SYS_restart_syscall,
];

/// A vCPU: KVM_RUN and its exits (eventfd writes, the UART's buffer), save and restore.
const VCPU: &[libc::c_long] = &[libc::SYS_ioctl];

/// The device loop: epoll, the queues' disk and tap I/O.
const DEVICES: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
];

/// The API server: its runtime's epoll, connections, descriptors received with SCM_RIGHTS.
const API: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_writev,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_geteuid,
    libc::SYS_ioctl,
    // tokio's signal driver, registered from the runtime's thread.
    libc::SYS_rt_sigaction,
];

/// The console: PTY and socket input, the output writer.
const CONSOLE: &[libc::c_long] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_geteuid,
    libc::SYS_writev,
    libc::SYS_ioctl,
];

/// The throttle and the prefaulter: sleeping, touching memory, and (the throttle) kicking
/// this process's vCPU threads out of KVM_RUN (tgkill, checked to be this process).
const HELPER: &[libc::c_long] = &[libc::SYS_tgkill];

/// The main and migration threads, besides every list above.
const WIDE: &[libc::c_long] = &[
    // Files: images, taps, the runtime directory, sockets' paths, /proc and /sys.
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_flock,
    libc::SYS_fadvise64,
    libc::SYS_getcwd,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_memfd_create,
    // Sockets: the API, migration (TCP, Unix), the console socket.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    // Threads and signals: starting the others, kicking vCPUs out of KVM_RUN.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_tgkill,
    libc::SYS_kill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sched_setaffinity,
    // Identity and limits.
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getppid,
    libc::SYS_uname,
    libc::SYS_prlimit64,
    libc::SYS_sysinfo,
    libc::SYS_mlock,
    libc::SYS_munlock,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
];

/// The system calls a kind may make (their argument checks aside).
pub(super) fn syscalls(kind: ThreadKind) -> Vec<libc::c_long> {
    let own: &[&[libc::c_long]] = match kind {
        ThreadKind::Vcpu => &[VCPU],
        ThreadKind::Devices => &[DEVICES],
        ThreadKind::Api => &[API],
        ThreadKind::Console => &[CONSOLE],
        ThreadKind::Helper => &[HELPER],
        ThreadKind::Main | ThreadKind::Migration => &[VCPU, DEVICES, API, CONSOLE, HELPER, WIDE],
    };
    let mut all: Vec<libc::c_long> = BASE
        .iter()
        .chain(own.iter().copied().flatten())
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The ioctl requests a kind may make: None for any.
fn ioctl_rules(kind: ThreadKind) -> Result<Option<Vec<SeccompRule>>, BackendError> {
    let request_is = |value: u64| arg_is(1, value);
    Ok(match kind {
        // Any KVM request: its type byte (bits 8-15) is KVMIO.
        ThreadKind::Vcpu => Some(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xff00),
            u64::from(kvm_bindings::KVMIO) << 8,
        )
        .and_then(|c| SeccompRule::new(vec![c]))?]),
        ThreadKind::Api | ThreadKind::Console => {
            Some(vec![request_is(libc::FIONBIO)?, request_is(libc::FIOCLEX)?])
        }
        _ => None,
    })
}

fn arg_is(index: u8, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .and_then(|c| SeccompRule::new(vec![c]))
}

/// `socket(domain, type, protocol)`: Unix, IPv4 and IPv6 sockets, and route netlink.
fn socket_rules() -> Result<Vec<SeccompRule>, BackendError> {
    let mut rules = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .map(|family| arg_is(0, family as u64))
        .collect::<Result<Vec<_>, _>>()?;
    rules.push(SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_NETLINK as u64,
        )?,
        SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::NETLINK_ROUTE as u64,
        )?,
    ])?);
    Ok(rules)
}

/// Whether `kind`'s opens fail instead of ending the VMM: every kind but the two that open
/// files. glibc opens files behind the program's back, once per process and from whichever
/// thread comes first: malloc reads /proc/sys/vm/overcommit_memory when a thread's heap is
/// first given back to the kernel, and /sys/devices/system/cpu/online when a thread first
/// needs an arena past the eighth (seen from an API thread at a migration's end, on a loaded
/// host). Both take a failed open for the default. So these kinds may call `openat` in their
/// own list, and a second filter ([`OPEN_FAILS_WITH`]) makes it fail: they open nothing
/// either way, and the VMM does not die of its C library.
pub(super) fn opens_fail(kind: ThreadKind) -> bool {
    !matches!(kind, ThreadKind::Main | ThreadKind::Migration)
}

/// The errno an `openat` of a kind whose [`opens_fail`] gets.
pub(super) const OPEN_FAILS_WITH: u32 = libc::EACCES as u32;

/// The filter's rules for `kind`: each allowed call, with argument checks where it has them.
pub(super) fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = syscalls(kind)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    if opens_fail(kind) {
        // Let through here, failed by the kind's second filter.
        rules.insert(libc::SYS_openat, Vec::new());
    }
    if let Some(ioctl) = ioctl_rules(kind)? {
        rules.insert(libc::SYS_ioctl, ioctl);
    }
    if rules.contains_key(&libc::SYS_socket) {
        rules.insert(libc::SYS_socket, socket_rules()?);
        rules.insert(libc::SYS_socketpair, vec![arg_is(0, libc::AF_UNIX as u64)?]);
    }
    // Every thread: adding a filter (a thread started by another installs its own under its
    // creator's), naming itself (std does at a thread's start, under its creator's filter).
    if kind == ThreadKind::Helper {
        // Signals only to this process's own threads.
        // SAFETY: getpid has no preconditions and cannot fail.
        let pid = unsafe { libc::getpid() };
        rules.insert(libc::SYS_tgkill, vec![arg_is(0, pid as u64)?]);
    }
    rules.insert(
        libc::SYS_prctl,
        vec![
            arg_is(0, libc::PR_SET_NO_NEW_PRIVS as u64)?,
            arg_is(0, libc::PR_SET_NAME as u64)?,
            arg_is(0, libc::PR_GET_NAME as u64)?,
        ],
    );
    rules.insert(
        libc::SYS_seccomp,
        vec![arg_is(0, u64::from(libc::SECCOMP_SET_MODE_FILTER))?],
    );
    Ok(rules)
}
