//! The serial console on a pseudo-terminal (`serial.mode Pty`, as Cloud Hypervisor offers it,
//! and as libvirt's ch driver asks for it): the VMM opens a PTY pair and keeps both ends. The
//! guest's output goes to the master through console::output's bounded buffer, so a PTY nobody
//! reads never blocks a vCPU; what a client types on the slave (`vmm console NAME`,
//! `virsh console`, `screen PATH`) reaches the UART. Holding the slave open keeps the master
//! from reading EIO while nobody is attached. One PTY lives as long as the VM's config: a
//! reboot keeps its path; `vm.delete` closes it.
//!
//! Threads: one input thread per PTY, polling the master with a timeout so that it ends
//! within that time once the PTY is dropped.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use devices::legacy::Serial;

/// How often the input thread checks that its PTY still exists.
const POLL_MS: libc::c_int = 250;

/// A PTY serving the serial port; see the module doc.
pub struct PtyConsole {
    master: File,
    _slave: File,
    path: PathBuf,
    /// The UART that input goes to: the running VM's, none between boots.
    target: Mutex<Option<Arc<Mutex<Serial>>>>,
    /// Asked for as the (virtio) console rather than the serial port: reported as both.
    pub(crate) via_console: bool,
}

impl std::fmt::Debug for PtyConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pty({})", self.path.display())
    }
}

/// Two handles are equal only when they are the same PTY.
impl PartialEq for PtyConsole {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for PtyConsole {}

fn last_error(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl PtyConsole {
    /// Opens a new PTY pair (slave in raw mode) and starts its input thread.
    pub(crate) fn open(via_console: bool) -> std::io::Result<Arc<Self>> {
        // SAFETY: posix_openpt takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(last_error("posix_openpt"));
        }
        // SAFETY: `fd` was just returned to us and nothing else owns it.
        let master = unsafe { File::from_raw_fd(fd) };
        // SAFETY: grantpt and unlockpt act on the master descriptor we own.
        if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
            return Err(last_error("grantpt/unlockpt"));
        }
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes at most `name.len()` bytes, NUL-terminated, into `name`.
        if unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) } != 0 {
            return Err(last_error("ptsname_r"));
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)?;
        make_raw(&slave)?;
        let pty = Arc::new(PtyConsole {
            master,
            _slave: slave,
            path: PathBuf::from(path),
            target: Mutex::new(None),
            via_console,
        });
        let weak = Arc::downgrade(&pty);
        std::thread::Builder::new()
            .name("console-pty".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
                forward_input(weak)
            })?;
        Ok(pty)
    }

    /// The slave's path, for clients (`vm.info`'s `config.serial.file`).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A handle on the master for the guest's output.
    pub(crate) fn writer(&self) -> std::io::Result<File> {
        self.master.try_clone()
    }

    /// Input goes to this UART from now on (the VM booted or was received).
    pub(crate) fn attach(&self, serial: Arc<Mutex<Serial>>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(serial);
    }
}

fn make_raw(tty: &File) -> std::io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal descriptor we own.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) } != 0 {
        return Err(last_error("tcgetattr"));
    }
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: setting the attributes of a terminal descriptor we own.
    if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(last_error("tcsetattr"));
    }
    Ok(())
}

/// The input thread: master -> the attached UART, until the PTY is dropped.
fn forward_input(pty: Weak<PtyConsole>) {
    let mut buf = [0u8; 256];
    loop {
        let Some(pty) = pty.upgrade() else { return };
        let mut pfd = libc::pollfd {
            fd: pty.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call; the descriptor is kept open by `pty`.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready <= 0 || pfd.revents & libc::POLLIN == 0 {
            if ready > 0 && pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                log::warn!("console PTY {}: input ended", pty.path.display());
                return;
            }
            continue;
        }
        let n = match (&pty.master).read(&mut buf) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("console PTY {}: input ended: {e}", pty.path.display());
                return;
            }
        };
        let target = pty.target.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Between boots, typed input is dropped, as on a machine that is off.
        if let Some(serial) = target {
            crate::console::terminal::feed_uart(&serial, &buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn output_reaches_a_client_of_the_slave_and_the_path_is_a_pty() {
        let pty = PtyConsole::open(false).unwrap();
        assert!(pty.path().starts_with("/dev/pts"), "{:?}", pty.path());
        let mut client = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.path())
            .unwrap();
        pty.writer().unwrap().write_all(b"hello\n").unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        // Raw mode: no "\r\n" translation.
        assert_eq!(&got, b"hello\n");
        let weak = Arc::downgrade(&pty);
        drop(pty);
        // The input thread holds the PTY only across one poll: it is gone within that time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while weak.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the PTY outlived its owner"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
