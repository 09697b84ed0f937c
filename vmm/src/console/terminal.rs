//! The serial console's host side: stdin bytes go into the UART's receive FIFO; when stdin is
//! a terminal it is switched to raw mode and restored on every way out (normal exit, error,
//! signal, panic). Ctrl-A x ends the VM, Ctrl-A Ctrl-A sends a literal Ctrl-A.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::Serial;

const ESCAPE: u8 = 0x01; // Ctrl-A

/// The terminal settings to put back, if we changed them.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts stdin in raw mode while alive, if it is a terminal.
pub(crate) struct RawTerminal(());

impl RawTerminal {
    pub(crate) fn enable() -> Option<Self> {
        if !stdin_is_tty() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above; STDIN_FILENO is open (isatty said it is a terminal).
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return None;
        }
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        let mut raw = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so "\n" from the guest still returns the carriage.
        raw.c_oflag = t.c_oflag;
        // SAFETY: setting attributes of our own stdin terminal.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) };
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        Some(RawTerminal(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Puts the terminal back as it was; safe to call more than once.
pub(crate) fn restore_terminal() {
    if let Some(t) = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        // SAFETY: restoring attributes previously read from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

/// Puts host input into the UART's receive FIFO, waiting while the guest has not drained it.
pub(crate) fn feed_uart(serial: &Mutex<Serial>, bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let taken = serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(rest);
        rest = &rest[taken..];
        if !rest.is_empty() {
            // The guest has not drained its FIFO yet.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Copies stdin into the UART until stdin ends. The thread is detached: a blocking read on
/// stdin cannot be interrupted portably, and the process exits with the VM.
///
/// Ctrl-A x triggers `on_quit` (the owner's console-quit line) and ends the thread.
pub(crate) fn spawn_stdin_forwarder(
    serial: Arc<Mutex<Serial>>,
    on_quit: impl devices::Interrupt + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            let mut escape_pending = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if escape_pending {
                        escape_pending = false;
                        match b {
                            b'x' | b'X' => {
                                let _ = on_quit.trigger();
                                return;
                            }
                            ESCAPE => out.push(ESCAPE),
                            other => out.extend_from_slice(&[ESCAPE, other]),
                        }
                    } else if b == ESCAPE && stdin_is_tty() {
                        escape_pending = true;
                    } else {
                        out.push(b);
                    }
                }
                feed_uart(&serial, &out);
            }
        });
    if let Err(e) = spawned {
        log::warn!("no console input: cannot start the stdin thread: {e}");
    }
}
