//! The serial console on a Unix socket (`serial.mode Socket` with a `socket` path, as Cloud
//! Hypervisor offers it; `vmm run --serial socket=PATH`): the VMM binds the socket, owner-only
//! like its API socket, and serves one client at a time (`vmm console NAME`, `socat`, a
//! libvirt that asks for a Unix serial). What the client sends reaches the UART; the guest's
//! output goes to the client through console::output's bounded buffer, so a client that stops
//! reading never blocks a vCPU. With nobody attached the output is dropped, as on a serial
//! line nobody listens to. A second client while one is attached is told so and closed; a
//! client of another user (SO_PEERCRED) is closed unanswered. The socket lives as long as the
//! VM's config: a reboot keeps it; `vm.delete` (or the VMM's exit) closes and removes it.
//!
//! Threads: one per socket, polling the listener and the attached client with a timeout so
//! that it ends within that time once the console is dropped. The output side writes from
//! console::output's writer thread.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use devices::legacy::Serial;

/// How often the socket's thread checks that its console still exists.
const POLL_MS: libc::c_int = 250;

/// A client that takes longer than this to accept output is detached (the next may attach).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a second client is told before it is closed.
const BUSY: &[u8] = b"vmm: this console has a client attached already\r\n";

/// A Unix socket serving the serial port; see the module doc. Dropping the last handle
/// removes the socket's path at once; its thread closes the socket within [`POLL_MS`].
pub struct SocketConsole {
    shared: Arc<Shared>,
}

/// What the socket's thread and the output side share.
struct Shared {
    listener: UnixListener,
    path: PathBuf,
    /// The attached client, if any.
    client: Mutex<Option<Arc<UnixStream>>>,
    /// The UART that input goes to: the running VM's, none between boots.
    target: Mutex<Option<Arc<Mutex<Serial>>>>,
}

impl std::fmt::Debug for SocketConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Socket({})", self.shared.path.display())
    }
}

/// Two handles are equal only when they are the same socket.
impl PartialEq for SocketConsole {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for SocketConsole {}

impl SocketConsole {
    /// Binds the socket at `path` (owner-only; only a stale socket of ours is replaced) and
    /// starts its thread.
    pub(crate) fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let listener = crate::unix_socket::bind_private(path)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            listener,
            path: path.to_path_buf(),
            client: Mutex::new(None),
            target: Mutex::new(None),
        });
        let console = Arc::new(SocketConsole {
            shared: shared.clone(),
        });
        let alive = Arc::downgrade(&console);
        let spawned = std::thread::Builder::new()
            .name("console-socket".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
                serve(&shared, &alive)
            });
        // On failure `console` drops here and removes the path.
        spawned?;
        Ok(console)
    }

    /// The socket's path, for clients (`vm.info`'s `config.serial.socket`).
    pub(crate) fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The guest's output side: to the attached client, or nowhere.
    pub(crate) fn writer(&self) -> SocketWriter {
        SocketWriter {
            shared: self.shared.clone(),
        }
    }

    /// Input goes to this UART from now on (the VM booted or was received).
    pub(crate) fn attach(&self, serial: Arc<Mutex<Serial>>) {
        *self.shared.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(serial);
    }
}

impl Shared {
    fn attached(&self) -> Option<Arc<UnixStream>> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Detaches `client` if it is still the attached one.
    fn detach(&self, client: &Arc<UnixStream>) {
        let mut attached = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if attached.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *attached = None;
        }
    }

    /// A new connection: attached if nobody is and its user may use our sockets.
    fn admit(&self, stream: UnixStream) {
        match crate::unix_socket::peer_uid(&stream) {
            Ok(uid) if crate::unix_socket::peer_allowed(uid) => {}
            Ok(uid) => {
                log::warn!(
                    "console socket {}: a client of uid {uid} refused",
                    self.path.display()
                );
                return;
            }
            Err(e) => {
                log::warn!("console socket {}: {e}", self.path.display());
                return;
            }
        }
        let mut attached = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if attached.is_some() {
            let _ = (&stream).write_all(BUSY);
            return;
        }
        if stream.set_nonblocking(false).is_err()
            || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
        {
            return;
        }
        log::info!("console socket {}: client attached", self.path.display());
        *attached = Some(Arc::new(stream));
    }
}

impl Drop for SocketConsole {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.shared.path);
    }
}

/// The output side of a [`SocketConsole`] (see [`SocketConsole::writer`]).
pub(crate) struct SocketWriter {
    shared: Arc<Shared>,
}

impl Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(client) = self.shared.attached() {
            if let Err(e) = (&*client).write_all(buf) {
                log::info!(
                    "console socket {}: client detached ({e})",
                    self.shared.path.display()
                );
                self.shared.detach(&client);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The socket's thread: new connections and the attached client's input, until the last
/// handle on the console is gone.
fn serve(shared: &Shared, alive: &Weak<SocketConsole>) {
    let mut buf = [0u8; 256];
    while alive.strong_count() > 0 {
        let client = shared.attached();
        let mut fds = [
            libc::pollfd {
                fd: shared.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: client.as_ref().map_or(-1, |c| c.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds, valid for the call (a negative fd is ignored by poll); the
        // listener is kept open by `shared` and the client by `client`.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            match shared.listener.accept() {
                Ok((stream, _)) => shared.admit(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => log::warn!("console socket {}: {e}", shared.path.display()),
            }
        }
        let Some(client) = client else { continue };
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            continue;
        }
        match (&*client).read(&mut buf) {
            Ok(0) | Err(_) => {
                log::info!("console socket {}: client detached", shared.path.display());
                shared.detach(&client);
            }
            Ok(n) => {
                let target = shared
                    .target
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                // Between boots, typed input is dropped, as on a machine that is off.
                if let Some(serial) = target {
                    crate::console::terminal::feed_uart(&serial, &buf[..n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn one_client_gets_the_output_a_second_is_told_busy_and_the_socket_goes_with_the_console() {
        let dir = std::env::temp_dir().join(format!("vmm-console-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.sock");
        let console = SocketConsole::open(&path).unwrap();
        let mut out = console.writer();
        // Nobody attached: output is dropped, never an error or a wait.
        out.write_all(b"lost\n").unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        wait_until("the client attached", || {
            console.shared.attached().is_some()
        });
        out.write_all(b"hello\n").unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");

        let mut second = UnixStream::connect(&path).unwrap();
        let mut told = Vec::new();
        second.read_to_end(&mut told).unwrap();
        assert_eq!(told, BUSY);

        // The first client leaves: the next one attaches.
        drop(client);
        wait_until("the client detached", || {
            console.shared.attached().is_none()
        });
        let mut third = UnixStream::connect(&path).unwrap();
        wait_until("the third client attached", || {
            console.shared.attached().is_some()
        });
        out.write_all(b"again\n").unwrap();
        third.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"again\n");

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The path goes with the last handle at once; the socket's thread within a poll.
        let shared = Arc::downgrade(&console.shared);
        drop(console);
        assert!(!path.exists(), "the socket file outlived its console");
        drop(out);
        wait_until("the socket's thread ended", || shared.upgrade().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
