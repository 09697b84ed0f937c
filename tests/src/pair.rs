//! Two "hosts" for the commit and fault tests: a dirtier guest with a writable disk on host1,
//! an empty destination granting the same disk on host2, a [`Relay`] between them, and the
//! fault points (`FAILPOINTS`, the `failpoints` build) that hold either side at a protocol step.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proxy::Relay;
use crate::{
    destination, free_port, start_dirtier_env, test_key, vmm_cli, Incoming, RuntimeDir, VmProcess,
};

/// Bound of every wait in these tests.
pub const T: Duration = Duration::from_secs(120);
/// Both ends' I/O timeout: how long a lost message takes to notice.
pub const IO_TIMEOUT: &str = "3";
/// What `vmm info` says of a source whose migration committed without a confirmation.
pub const UNKNOWN: &str = "paused (migration outcome unknown)";

pub struct Pair {
    pub a: RuntimeDir,
    pub b: RuntimeDir,
    pub src: VmProcess,
    pub dst: VmProcess,
    pub relay: Relay,
    pub disk: PathBuf,
    pub name: &'static str,
}

/// The `FAILPOINTS` value that holds a process the first time it reaches `point`.
pub fn hold(point: &str, ms: u32) -> String {
    format!("{point}=1*sleep({ms})")
}

fn env(failpoints: &Option<String>) -> Vec<(&'static str, &str)> {
    failpoints
        .iter()
        .map(|v| ("FAILPOINTS", v.as_str()))
        .collect()
}

impl Pair {
    /// The two hosts; `src_fp` / `dst_fp` are `FAILPOINTS` values for that side.
    pub fn start(name: &'static str, src_fp: Option<String>, dst_fp: Option<String>) -> Pair {
        let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
        let disk = a.0.join("shared.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let src = start_dirtier_env(
            &a.0,
            &env(&src_fp),
            name,
            1,
            &["--disk", disk.to_str().unwrap()],
        );
        let port = free_port();
        let dst = destination(
            &b.0,
            name,
            port,
            Incoming {
                extra: &["--disk", disk.to_str().unwrap(), "--io-timeout", IO_TIMEOUT],
                env: &env(&dst_fp),
                raw: false,
            },
        );
        let relay = Relay::start(port);
        Pair {
            a,
            b,
            src,
            dst,
            relay,
            disk,
            name,
        }
    }

    /// Starts `vmm migrate` through the relay; its exit status and stderr when it ends.
    pub fn migrate(&self) -> JoinHandle<(Option<i32>, String)> {
        let dir = self.a.0.clone();
        let key = test_key(&dir);
        let (name, to) = (self.name, format!("tcp:127.0.0.1:{}", self.relay.port));
        std::thread::spawn(move || {
            let (st, _, err) = vmm_cli(
                &dir,
                &[
                    "migrate",
                    name,
                    "--to",
                    &to,
                    "--auth-key-file",
                    key.to_str().unwrap(),
                    "--io-timeout",
                    IO_TIMEOUT,
                ],
                T,
            );
            (st.code(), err)
        })
    }
}

/// `vmm info NAME --json` on a host: its state, or None when no VM answers there.
pub fn state(dir: &Path, name: &str) -> Option<String> {
    let (st, out, _) = vmm_cli(dir, &["info", name, "--json"], T);
    if !st.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["state"].as_str().map(str::to_string)
}

/// Waits (bounded by [`T`]) until `vmm info` on `dir` says `want`.
pub fn wait_state(dir: &Path, name: &str, want: &str) {
    let deadline = Instant::now() + T;
    loop {
        let s = state(dir, name);
        if s.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "state {s:?}, waited for {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Holds an OFD write lock on `path`, as another VMM would (waits up to 10 s for it).
pub fn hold_lock(path: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: flock is plain data; zeroed is a valid value to fill in.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: F_OFD_SETLK with a valid descriptor and a live flock struct.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "the source never released the disk"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
