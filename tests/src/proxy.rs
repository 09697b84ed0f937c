//! An on-path relay for the migration tests: it forwards one TCP connection to a destination
//! on loopback, records what the source sends, and can tamper with it: flip a byte at an
//! offset, flip a byte inside the Nth record of a key-secured stream, or cut the connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone, Copy, Debug)]
pub enum Tamper {
    None,
    /// Flip the byte at this offset of the source's stream.
    FlipAt(usize),
    /// Close both connections after this many bytes of the source's stream.
    CutAt(usize),
    /// After this many bytes of the source's stream, forward nothing more either way and stop
    /// reading, but keep both connections open: a black-holed network, a hung destination.
    StallAt(usize),
    /// In a `--auth-key-file` stream: pass the preface and the handshake, then flip a byte in
    /// the middle of the body of record N after it (0 is the Hello frame, 1 the Config, then
    /// pages).
    FlipRecord(usize),
}

pub struct Proxy {
    pub port: u16,
    captured: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and relays the first connection to `target`.
    pub fn start(target: u16, tamper: Tamper) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        let thread = std::thread::spawn(move || {
            let Ok((from_src, _)) = listener.accept() else {
                return;
            };
            let Ok(to_dst) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            relay(from_src, to_dst, tamper, sink);
        });
        Proxy {
            port,
            captured,
            thread: Some(thread),
        }
    }

    /// Everything the source sent through the relay so far.
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }

    /// Waits for the relayed connection to end.
    pub fn join(mut self) -> Vec<u8> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.captured()
    }
}

fn relay(
    mut from_src: TcpStream,
    mut to_dst: TcpStream,
    tamper: Tamper,
    sink: Arc<Mutex<Vec<u8>>>,
) {
    let mut back_src = from_src.try_clone().unwrap();
    let mut back_dst = to_dst.try_clone().unwrap();
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_dst, &mut back_src);
        let _ = back_src.shutdown(Shutdown::Write);
    });
    let mut forward = |data: &mut [u8], seen: &mut usize| -> bool {
        sink.lock().unwrap().extend_from_slice(data);
        *seen += data.len();
        to_dst.write_all(data).is_ok()
    };
    let mut seen = 0usize;
    match tamper {
        Tamper::FlipRecord(n) => {
            let mut read_exact = |len: usize| -> Option<Vec<u8>> {
                let mut b = vec![0u8; len];
                from_src.read_exact(&mut b).ok().map(|_| b)
            };
            // Preface, then the Noise handshake's first message ([u16 be length][message]),
            // untouched; then records: [u32 le body length][body][16-byte tag].
            let mut ok = read_exact(9).is_some_and(|mut p| forward(&mut p, &mut seen));
            if ok {
                ok = read_exact(2)
                    .and_then(|len| {
                        let msg = read_exact(u16::from_be_bytes([len[0], len[1]]) as usize)?;
                        Some([len, msg].concat())
                    })
                    .is_some_and(|mut m| forward(&mut m, &mut seen));
            }
            let mut record = 0usize;
            while ok {
                let Some(len) = read_exact(4) else { break };
                let body_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let Some(mut rest) = read_exact(body_len + 16) else {
                    break;
                };
                if record == n {
                    rest[body_len / 2] ^= 0x20;
                }
                record += 1;
                ok = forward(&mut [len, rest].concat(), &mut seen);
            }
        }
        _ => {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match from_src.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &mut buf[..n];
                match tamper {
                    Tamper::FlipAt(at) if seen <= at && seen + n > at => chunk[at - seen] ^= 0x5a,
                    Tamper::StallAt(at) if seen + n > at => {
                        let keep = at.saturating_sub(seen);
                        forward(&mut chunk[..keep], &mut seen);
                        // Hold both sockets open, unread, until the test ends.
                        loop {
                            std::thread::sleep(std::time::Duration::from_secs(3600));
                        }
                    }
                    Tamper::CutAt(at) if seen + n > at => {
                        let keep = at.saturating_sub(seen);
                        forward(&mut chunk[..keep], &mut seen);
                        let _ = to_dst.shutdown(Shutdown::Both);
                        let _ = from_src.shutdown(Shutdown::Both);
                        break;
                    }
                    _ => {}
                }
                if !forward(chunk, &mut seen) {
                    break;
                }
            }
        }
    }
    // Let the destination's answer (its reason for failing) reach the source, as it would
    // without a relay in between, then close.
    let _ = to_dst.shutdown(Shutdown::Write);
    let _ = back.join();
    let _ = from_src.shutdown(Shutdown::Both);
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a [`Relay`] does with the bytes it is handed, switched while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Forward,
    /// Nothing gets through either way any more, and nothing is closed: a partition. Bytes are
    /// read and dropped, so each sender sees its writes succeed and its reads wait.
    Silent,
    /// Every connection is reset (RST) at once, and new ones too.
    Reset,
}

/// A relay for every connection of a migration (the extra ones too) between a source and a
/// destination on loopback, whose link the test switches at a chosen moment.
pub struct Relay {
    pub port: u16,
    link: Arc<Mutex<Link>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = Arc::new(Mutex::new(Link::Forward));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (l, s) = (link.clone(), streams.clone());
        std::thread::spawn(move || {
            for src in listener.incoming() {
                let Ok(src) = src else { break };
                if *l.lock().unwrap() == Link::Reset {
                    reset(&src);
                    continue;
                }
                let Ok(dst) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut all = s.lock().unwrap();
                    all.push(src.try_clone().unwrap());
                    all.push(dst.try_clone().unwrap());
                }
                for (from, to) in [
                    (src.try_clone().unwrap(), dst.try_clone().unwrap()),
                    (dst, src),
                ] {
                    let l = l.clone();
                    std::thread::spawn(move || pump(from, to, l));
                }
            }
        });
        Relay {
            port,
            link,
            streams,
        }
    }

    pub fn set(&self, link: Link) {
        *self.link.lock().unwrap() = link;
        if link == Link::Reset {
            for s in self.streams.lock().unwrap().drain(..) {
                reset(&s);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.set(Link::Reset);
    }
}

/// Closes a connection with a reset: SO_LINGER of zero, then shutdown.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we hold, reading a linger struct that lives for the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    let _ = s.shutdown(Shutdown::Both);
}

fn pump(mut from: TcpStream, mut to: TcpStream, link: Arc<Mutex<Link>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match *link.lock().unwrap() {
            Link::Forward => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Link::Silent => {}
            Link::Reset => break,
        }
    }
    if *link.lock().unwrap() == Link::Forward {
        let _ = to.shutdown(Shutdown::Write);
    }
}
