//! The serial console's output side: the UART, on a vCPU thread, hands its bytes to a bounded
//! buffer and returns at once; a thread of its own writes them to the sink (stdout, a file).
//! A reader that stalls (a pipe nobody reads, a suspended terminal) therefore never keeps a
//! vCPU out of the guest, nor a pause (and so a migration) from completing: past the buffer,
//! bytes are dropped and counted in the log. Order is kept; nothing is dropped while the
//! reader keeps up. [`drain_all`] gives the writers a bounded time to finish at exit.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Bytes held for a slow reader before output is dropped.
const CAPACITY: usize = 1 << 20;

#[derive(Default)]
struct State {
    queued: VecDeque<u8>,
    /// Bytes the writer thread has taken and not yet finished writing.
    writing: usize,
    closed: bool,
    dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until every queued byte is written; false if time ran out.
    fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while !s.queued.is_empty() || s.writing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Every live buffer, for [`drain_all`].
static OPEN: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// The UART's side of the buffer (see the module doc).
pub(crate) struct ConsoleOutput {
    shared: Arc<Shared>,
}

/// Wraps `sink`: output goes through a bounded buffer drained by a thread of its own.
pub(crate) fn buffered(sink: Box<dyn Write + Send>) -> std::io::Result<Box<dyn Write + Send>> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    });
    let theirs = shared.clone();
    std::thread::Builder::new()
        .name("console-out".into())
        .spawn(move || {
            crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
            write_out(&theirs, sink)
        })?;
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|w| w.strong_count() > 0);
    open.push(Arc::downgrade(&shared));
    Ok(Box::new(ConsoleOutput { shared }))
}

fn write_out(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut chunk = Vec::new();
    loop {
        {
            let mut s = shared.lock();
            s.writing = 0;
            shared.changed.notify_all();
            while s.queued.is_empty() && !s.closed {
                s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.queued.is_empty() {
                if s.dropped > 0 {
                    log::warn!(
                        "the console's reader fell behind: {} bytes of guest output were dropped",
                        s.dropped
                    );
                }
                return;
            }
            chunk.clear();
            chunk.extend(s.queued.drain(..));
            s.writing = chunk.len();
        }
        // A sink that fails (a closed pipe) takes no more output; the guest is not told.
        if sink.write_all(&chunk).and_then(|()| sink.flush()).is_err() {
            let mut s = shared.lock();
            s.closed = true;
            s.queued.clear();
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut s = self.shared.lock();
        if s.closed {
            return Ok(data.len());
        }
        let room = CAPACITY.saturating_sub(s.queued.len());
        let (kept, lost) = data.split_at(data.len().min(room));
        s.queued.extend(kept);
        if !lost.is_empty() {
            if s.dropped == 0 {
                log::warn!(
                    "the console's reader is not keeping up: guest output is dropped past {CAPACITY} bytes held"
                );
            }
            s.dropped += lost.len() as u64;
        }
        self.shared.changed.notify_all();
        Ok(data.len())
    }

    /// Never waits for the reader: the writer thread flushes what it writes.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// Gives every console buffer up to `timeout` to write out what it holds (at exit: the
/// guest's last words reach the reader unless it is stalled).
pub(crate) fn drain_all(timeout: Duration) {
    let open: Vec<Arc<Shared>> = OPEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    let deadline = Instant::now() + timeout;
    for shared in open {
        shared.drain(deadline.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose writes block until the test lets them through.
    struct Gated(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut o = open.lock().unwrap();
            while !*o {
                o = cv.wait(o).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_writer_and_order_is_kept() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut out = buffered(Box::new(Gated(gate.clone(), got.clone()))).unwrap();
        let started = Instant::now();
        // Three times the buffer, with the reader stalled: returns at once, drops the excess.
        let data: Vec<u8> = (0..3 * CAPACITY).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(4096) {
            out.write_all(piece).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drain_all(Duration::from_secs(10));
        let got = got.lock().unwrap();
        // What arrived is a prefix of what was written: the buffer's worth, plus what the
        // writer thread had taken before it stalled; the rest was dropped.
        assert!(
            got.len() >= CAPACITY && got.len() < data.len(),
            "{}",
            got.len()
        );
        assert_eq!(&got[..], &data[..got.len()]);
    }
}
