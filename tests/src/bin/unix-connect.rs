//! Test helper: connects to a migration endpoint's Unix socket as whoever runs it (the tests
//! run it as another user with setpriv), sends a migration preface and reports what came back:
//! exit 0 "answered" (the listener spoke), 1 "closed" (it hung up without a word), 2 "refused"
//! (the connect itself failed).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn main() {
    let path = std::env::args().nth(1).expect("usage: unix-connect PATH");
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            println!("refused: {e}");
            std::process::exit(2);
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"VMMMIGR\x02\x00");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => {
            println!("answered: {n} bytes");
            std::process::exit(0);
        }
        other => {
            println!("closed: {other:?}");
            std::process::exit(1);
        }
    }
}
