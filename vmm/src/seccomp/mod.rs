//! seccomp: every thread of a VMM process runs under a filter of its kind (README, "Sandbox").
//! The main thread installs the widest filter before it starts any other thread; every other
//! thread installs the narrower one of its kind as its first act, before it touches guest- or
//! peer-controlled data. Filters stack (a thread keeps its creator's and adds its own), so what
//! a thread may call is the intersection, which is its own list: every creator's list holds
//! its children's.
//!
//! The kinds that open no files get a second filter under which `openat` fails with EACCES
//! rather than ending the process: glibc opens a few files by itself, once, from whichever
//! thread comes first (see [`allowlists::opens_fail`]).
//!
//! Modes, as Cloud Hypervisor spells `--seccomp`: `true` (the default) traps a forbidden call
//! and the SIGSYS handler ends the process with a message naming the thread kind and the call;
//! `log` lets the call through and the kernel logs it (dmesg: `audit: type=1326 ... syscall=N`),
//! for finding what a list misses; `false` installs nothing.
//!
//! It may call only libc and seccompiler: the threads' owners call [`confine`].

mod allowlists;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

/// The kinds of thread a VMM process has, each with its own list (see [`allowlists`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ThreadKind {
    /// The process's first thread: the lifecycle, the owner of the VM, assembly of a VM
    /// (also on reboot and after a migration), the signals; it starts every other thread.
    Main,
    /// A vCPU: KVM_RUN and the port I/O and MMIO exits it hands to the devices.
    Vcpu,
    /// The device loop (epoll): virtio queues, taps, disks.
    Devices,
    /// The API server (its own current-thread runtime).
    Api,
    /// Migration at either end: the worker and the migration runtime's threads (connections,
    /// encryption, pausing the source, acquiring the destination's disks and taps).
    Migration,
    /// The console's threads: output writer, PTY and socket input, stdin forwarder.
    Console,
    /// Small helpers: the dirty-rate throttle, memory prefaulting.
    Helper,
}

impl ThreadKind {
    #[cfg(test)]
    pub(crate) const ALL: [ThreadKind; 7] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Devices,
        ThreadKind::Api,
        ThreadKind::Migration,
        ThreadKind::Console,
        ThreadKind::Helper,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Devices => "devices",
            ThreadKind::Api => "api",
            ThreadKind::Migration => "migration",
            ThreadKind::Console => "console",
            ThreadKind::Helper => "helper",
        }
    }
}

/// `--seccomp true|false|log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// A forbidden call ends the process, saying which thread made it.
    Enforce,
    /// A forbidden call is allowed and logged by the kernel.
    Log,
    /// No filter.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("--seccomp {0}: give true, false or log")]
    Mode(String),
    #[error("cannot build the seccomp filter of the {0} threads")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter of the {0} threads")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

impl std::str::FromStr for SeccompMode {
    type Err = SeccompError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "true" => Ok(SeccompMode::Enforce),
            "false" => Ok(SeccompMode::Off),
            "log" => Ok(SeccompMode::Log),
            other => Err(SeccompError::Mode(other.to_string())),
        }
    }
}

const MODE_UNSET: u8 = 0;
const MODE_ENFORCE: u8 = 1;
const MODE_LOG: u8 = 2;
const MODE_OFF: u8 = 3;

/// The process's mode: set once by [`confine_process`]; until then threads install nothing
/// (the VMM's client commands, unit tests).
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);

thread_local! {
    /// This thread's kind, for the SIGSYS handler's message.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// `rules` compiled for this machine: a call they match gets `matched`, any other `mismatch`.
fn compile(
    kind: ThreadKind,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| SeccompError::Build(kind.name(), e))?;
    SeccompFilter::new(rules, mismatch, matched, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| SeccompError::Build(kind.name(), e))
}

fn program(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let rules = allowlists::rules(kind).map_err(|e| SeccompError::Build(kind.name(), e))?;
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    compile(kind, rules, mismatch, SeccompAction::Allow)
}

/// The second filter of a kind whose opens fail ([`allowlists::opens_fail`]): `openat`
/// returns an error, every other call is left to the kind's list. Of two stacked filters the
/// kernel takes the stricter answer, so the list's "allow" and this filter's error give the
/// error.
fn open_fails_program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    compile(
        kind,
        [(libc::SYS_openat, Vec::new())].into(),
        SeccompAction::Allow,
        SeccompAction::Errno(allowlists::OPEN_FAILS_WITH),
    )
}

/// Sets the process's mode and confines the calling (main) thread; call it before any other
/// thread starts. Every later [`confine`] follows this mode.
pub fn confine_process(mode: SeccompMode) -> Result<(), SeccompError> {
    let code = match mode {
        SeccompMode::Enforce => MODE_ENFORCE,
        SeccompMode::Log => MODE_LOG,
        SeccompMode::Off => MODE_OFF,
    };
    MODE.store(code, Ordering::SeqCst);
    if mode == SeccompMode::Enforce {
        install_sigsys_handler()?;
    }
    confine(ThreadKind::Main)
}

/// Installs the filter of `kind` on the calling thread, in the process's mode (nothing when
/// it is off or unset).
pub(crate) fn confine(kind: ThreadKind) -> Result<(), SeccompError> {
    let mode = match MODE.load(Ordering::SeqCst) {
        MODE_ENFORCE => SeccompMode::Enforce,
        MODE_LOG => SeccompMode::Log,
        _ => return Ok(()),
    };
    let program = program(kind, mode)?;
    let open_fails = allowlists::opens_fail(kind)
        .then(|| open_fails_program(kind))
        .transpose()?;
    KIND.with(|k| k.set(Some(kind)));
    if let Some(open_fails) = open_fails {
        seccompiler::apply_filter(&open_fails)
            .map_err(|e| SeccompError::Install(kind.name(), e))?;
    }
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind.name(), e))?;
    test_hook::forbidden_call_if_asked(kind);
    Ok(())
}

/// [`confine`] for a thread that has nobody to report to: a failure to install is logged and
/// ends the process, since running a thread unconfined is not an option once asked for.
pub(crate) fn confine_or_exit(kind: ThreadKind) {
    if let Err(e) = confine(kind) {
        log::error!("{}", crate::error_chain(&e));
        eprintln!("vmm: {}", crate::error_chain(&e));
        std::process::exit(1);
    }
}

/// The kernel's `siginfo_t` for SIGSYS (the `_sigsys` member of its union, as
/// include/uapi/asm-generic/siginfo.h lays it out on 64-bit): the call's number and arch.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Writes `parts` to stderr as one write(2) (async-signal-safe; one write, so the line is not
/// interleaved with another thread's output), cut at 512 bytes.
fn write_stderr(parts: &[&[u8]]) {
    let mut line = [0u8; 512];
    let mut len = 0;
    for part in parts {
        let n = part.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    // SAFETY: writes `len` initialised bytes of a stack buffer to descriptor 2.
    unsafe { libc::write(2, line.as_ptr().cast(), len) };
}

/// Formats `n` in decimal into `buf`; the digits.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a SIGSYS handler installed with SA_SIGINFO a siginfo_t whose
    // union holds the `_sigsys` member, laid out as SigsysInfo.
    let nr = unsafe { (*(info as *const SigsysInfo)).syscall };
    let kind = KIND
        .with(|k| k.get())
        .map_or("unconfined", ThreadKind::name);
    let (mut digits, mut again) = ([0u8; 10], [0u8; 10]);
    write_stderr(&[
        b"vmm: seccomp: a ",
        kind.as_bytes(),
        b" thread made a forbidden system call (number ",
        decimal(nr as u32, &mut digits),
        b"; `ausyscall ",
        decimal(nr as u32, &mut again),
        b"` names it); the VMM stops. --seccomp log lets such calls through and logs them.\n",
    ]);
    // SAFETY: _exit ends the process at once, without running anything else; 159 = 128 +
    // SIGSYS, the status of a process killed by that signal.
    unsafe { libc::_exit(159) };
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: sigaction is plain data; zeroed is a valid empty mask and no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only calls async-signal-safe functions (write, _exit)
    // and reads a thread-local Cell set before the filter was installed.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Tests only (the failpoints build): `VMM_TEST_FORBIDDEN_CALL=KIND` makes the first thread of
/// that kind make a call no list allows, right after its filter is installed;
/// `KIND:packet-socket` makes it open an AF_PACKET socket instead (a call its list has, with
/// an argument the list refuses); `KIND:open` opens a file as glibc's malloc does (it returns
/// minus the errno where the open fails).
#[cfg(feature = "failpoints")]
mod test_hook {
    use super::ThreadKind;
    use std::sync::atomic::{AtomicBool, Ordering};

    static DONE: AtomicBool = AtomicBool::new(false);

    pub(super) fn forbidden_call_if_asked(kind: ThreadKind) {
        let Ok(asked) = std::env::var("VMM_TEST_FORBIDDEN_CALL") else {
            return;
        };
        let (asked_kind, call) = asked.split_once(':').unwrap_or((&asked, "personality"));
        if asked_kind != kind.name() || DONE.swap(true, Ordering::SeqCst) {
            return;
        }
        let r = if call == "open" {
            // SAFETY: a NUL-terminated path; a descriptor it returns is closed below.
            let fd = unsafe {
                libc::open(
                    c"/proc/sys/vm/overcommit_memory".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: closes the descriptor just opened, ours alone.
                unsafe { libc::close(fd) };
                i64::from(fd)
            } else {
                -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
            }
        } else if call == "packet-socket" {
            // SAFETY: socket takes three integers; a descriptor it returns is closed below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd >= 0 {
                // SAFETY: closes the descriptor just opened, ours alone.
                unsafe { libc::close(fd) };
            }
            i64::from(fd)
        } else {
            // SAFETY: personality(0xffffffff) only reads the current persona; it is in no list.
            unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) }
        };
        log::warn!(
            "seccomp test hook: the {} thread's forbidden call returned {r}",
            kind.name()
        );
        eprintln!(
            "vmm: seccomp test hook: the {} thread's forbidden call returned {r}",
            kind.name()
        );
    }
}

#[cfg(not(feature = "failpoints"))]
mod test_hook {
    pub(super) fn forbidden_call_if_asked(_: super::ThreadKind) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds_in_both_modes() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let p = program(kind, mode).unwrap();
                assert!(p.len() > 10, "{kind:?}");
                assert!(open_fails_program(kind).unwrap().len() > 3, "{kind:?}");
            }
        }
    }

    #[test]
    fn modes_parse_as_cloud_hypervisor_spells_them() {
        assert_eq!("true".parse::<SeccompMode>().unwrap(), SeccompMode::Enforce);
        assert_eq!("false".parse::<SeccompMode>().unwrap(), SeccompMode::Off);
        assert_eq!("log".parse::<SeccompMode>().unwrap(), SeccompMode::Log);
        assert!("yes".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn the_main_list_holds_every_other_list() {
        // Filters stack: a thread started by the main thread can call only what both allow.
        let main = allowlists::syscalls(ThreadKind::Main);
        for kind in ThreadKind::ALL {
            for nr in allowlists::syscalls(kind) {
                assert!(
                    main.contains(&nr),
                    "{kind:?}'s call {nr} is not in main's list"
                );
            }
        }
    }

    #[test]
    fn decimal_formats_without_allocating() {
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(4_294_967_295, &mut b), b"4294967295");
    }
}
