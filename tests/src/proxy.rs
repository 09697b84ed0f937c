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
