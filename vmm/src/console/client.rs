//! `vmm console NAME`: this terminal attached to a VM's PTY or socket console. What is typed
//! goes to the guest's serial port, what it prints comes here; Ctrl-] detaches (the VM keeps
//! running), as in `virsh console`. The terminal is put in raw mode while attached and
//! restored on every way out. Two threads: the calling one copies the console to stdout,
//! another stdin to the console.

use std::io::{Read, Write};
use std::path::Path;

use crate::console::terminal::RawTerminal;

/// The byte that detaches: Ctrl-].
pub(crate) const DETACH: u8 = 0x1d;

/// What the console at a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A PTY's slave (serial mode Pty).
    Pty,
    /// A Unix socket the VMM listens on (serial mode Socket).
    Socket,
}

/// How an attachment ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Detached {
    /// Ctrl-] (or the end of stdin).
    ByUser,
    /// The console closed: the VMM exited.
    ConsoleClosed,
}

/// Attaches stdin/stdout to the console at `path` until Ctrl-], the end of stdin, or the
/// console closing.
pub(crate) fn attach(path: &Path, kind: Kind) -> std::io::Result<Detached> {
    match kind {
        Kind::Pty => {
            use std::os::unix::fs::OpenOptionsExt;
            let pty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)?;
            attach_to(pty.try_clone()?, pty)
        }
        Kind::Socket => {
            let socket = std::os::unix::net::UnixStream::connect(path)?;
            attach_to(socket.try_clone()?, socket)
        }
    }
}

fn attach_to(
    to_guest: impl Write + Send + 'static,
    from_guest: impl Read + Send + 'static,
) -> std::io::Result<Detached> {
    let _raw = RawTerminal::enable();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let user_done = done_tx.clone();
    std::thread::Builder::new()
        .name("console-keys".into())
        .spawn(move || {
            let _ = user_done.send(copy_keys(to_guest));
        })?;
    std::thread::Builder::new()
        .name("console-screen".into())
        .spawn(move || {
            let _ = done_tx.send(copy_screen(from_guest));
        })?;
    // Whichever side ends first ends the attachment; the other thread dies with the process
    // (a blocking read of stdin or of a PTY cannot be interrupted portably).
    Ok(done_rx.recv().unwrap_or(Detached::ConsoleClosed))
}

fn copy_keys(mut pty: impl Write) -> Detached {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return Detached::ByUser,
            Ok(n) => n,
        };
        let (keys, detach) = match buf[..n].iter().position(|&b| b == DETACH) {
            Some(at) => (&buf[..at], true),
            None => (&buf[..n], false),
        };
        if pty.write_all(keys).is_err() {
            return Detached::ConsoleClosed;
        }
        if detach {
            return Detached::ByUser;
        }
    }
}

fn copy_screen(mut pty: impl Read) -> Detached {
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match pty.read(&mut buf) {
            // EIO: the VMM closed the PTY's master; 0 from a socket: the VMM closed it.
            Ok(0) | Err(_) => return Detached::ConsoleClosed,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return Detached::ByUser;
                }
            }
        }
    }
}
