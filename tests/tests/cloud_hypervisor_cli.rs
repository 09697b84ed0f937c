//! The binary started as `cloud-hypervisor` (a link, as orchestrators find it on PATH) takes
//! Cloud Hypervisor's command line as libvirt's ch driver uses it: `--version` in the format
//! the driver parses (it requires "cloud-hypervisor v" at the start and a version of at least
//! 15.0), `--api-socket fd=N` on a socket the caller bound and listens on (the driver's way:
//! chMonitorCreateSocket, then `--api-socket fd=N`), `path=`, `-v` and `--log-file`; and a
//! descriptor that is not a listening Unix socket is refused with a message.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::{vmm_bin, RuntimeDir};

const T: Duration = Duration::from_secs(30);

/// `cloud-hypervisor`, a link to the vmm binary in `dir` (made on first use).
fn link(dir: &Path) -> PathBuf {
    let l = dir.join("cloud-hypervisor");
    if !l.exists() {
        std::os::unix::fs::symlink(vmm_bin(), &l).unwrap();
    }
    l
}

/// A child process killed (by PID) if the test ends before it exits.
struct Proc(Option<Child>);

impl Proc {
    fn wait(mut self) -> Output {
        let child = self.0.take().unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(T) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: signalling the child we started, whose PID has not been reaped.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("the VMM did not exit within {T:?}");
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `cloud-hypervisor ARGS` with `inherit` (a descriptor of ours) as descriptor `as_fd`
/// in the child, the way libvirt passes the API socket.
fn start(dir: &Path, args: &[&str], inherit: Option<(RawFd, RawFd)>) -> Proc {
    let mut cmd = Command::new(link(dir));
    cmd.args(args)
        .env("VMM_RUNTIME_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((fd, as_fd)) = inherit {
        // SAFETY: between fork and exec only async-signal-safe calls: dup2 and fcntl on
        // descriptors that exist in the child.
        unsafe {
            cmd.pre_exec(move || {
                if fd == as_fd {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                } else if libc::dup2(fd, as_fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Proc(Some(cmd.spawn().expect("start cloud-hypervisor")))
}

/// One request, the way libvirt's driver (through curl) and ch-remote send it; the status
/// code and the body.
fn request(stream: &mut UnixStream, method: &str, command: &str) -> (u16, String) {
    stream.set_read_timeout(Some(T)).unwrap();
    write!(
        stream,
        "{method} /api/v1/{command} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut res = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        res.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&res);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text
                .find("Content-Length: ")
                .map(|o| {
                    let v = &text[o + 16..];
                    v[..v.find('\r').unwrap()].trim().parse::<usize>().unwrap()
                })
                .unwrap_or(0);
            if res.len() >= head_end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[head_end + 4..].to_string());
            }
        }
    }
    panic!("no complete answer: {:?}", String::from_utf8_lossy(&res));
}

fn connect(path: &Path) -> UnixStream {
    let deadline = Instant::now() + T;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "{}: {e}", path.display());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn version_is_what_libvirt_parses() {
    let dir = RuntimeDir::new("ch-version");
    let out = start(&dir.0, &["--version"], None).wait();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // libvirt: STRSKIP(output, "cloud-hypervisor v"), then major.minor.micro, >= 15.0.0.
    let rest = text
        .strip_prefix("cloud-hypervisor v")
        .unwrap_or_else(|| panic!("libvirt needs 'cloud-hypervisor v' first: {text:?}"));
    let digits: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse().unwrap())
        .collect();
    let version = digits[0] * 1_000_000 + digits[1] * 1000 + digits[2];
    assert!(version >= 15_000_000, "below libvirt's minimum: {text:?}");
    assert!(
        text.lines().nth(1).is_some_and(|l| l.starts_with("vmm ")),
        "the second line names this VMM: {text:?}"
    );
}

#[test]
fn api_socket_inherited_as_a_descriptor_serves_the_api_and_stays_the_callers() {
    let dir = RuntimeDir::new("ch-fd");
    let path = dir.0.join("web1-socket");
    let listener = UnixListener::bind(&path).unwrap();
    let log = dir.0.join("ch.log");
    let vmm = start(
        &dir.0,
        &[
            "--api-socket",
            "fd=7",
            "-vv",
            "--log-file",
            log.to_str().unwrap(),
        ],
        Some((listener.as_raw_fd(), 7)),
    );
    drop(listener); // the VMM holds its own copy, as after libvirt's VIR_COMMAND_PASS_FD_CLOSE_PARENT
    let mut s = connect(&path);
    let (status, body) = request(&mut s, "GET", "vmm.ping");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\""), "{body}");
    let (status, _) = request(&mut connect(&path), "PUT", "vmm.shutdown");
    assert_eq!(status, 204);
    let out = vmm.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libvirt created the socket file and removes it itself.
    assert!(path.exists(), "the VMM removed a socket it did not create");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("DEBUG") || logged.contains("INFO"),
        "-vv --log-file wrote no debug or info lines: {logged:?}"
    );
}

#[test]
fn api_socket_by_path_is_bound_and_removed() {
    let dir = RuntimeDir::new("ch-path");
    let path = dir.0.join("api.sock");
    let arg = format!("path={}", path.display());
    let vmm = start(&dir.0, &["--api-socket", &arg, "--seccomp", "false"], None);
    let (status, _) = request(&mut connect(&path), "GET", "vmm.ping");
    assert_eq!(status, 200);
    let (status, _) = request(&mut connect(&path), "PUT", "vmm.shutdown");
    assert_eq!(status, 204);
    assert!(vmm.wait().status.success());
    assert!(!path.exists(), "the VMM left the socket it bound");
}

#[test]
fn a_descriptor_that_is_not_a_listening_unix_socket_is_refused() {
    let dir = RuntimeDir::new("ch-badfd");
    let file = std::fs::File::create(dir.0.join("plain")).unwrap();
    let (connected, _peer) = UnixStream::pair().unwrap();
    let cases: [(RawFd, &str); 3] = [
        (file.as_raw_fd(), "not a socket"),
        (connected.as_raw_fd(), "not listening"),
        (-1, "not an open file descriptor"),
    ];
    for (fd, why) in cases {
        let inherit = (fd >= 0).then_some((fd, 9));
        let out = start(&dir.0, &["--api-socket", "fd=9"], inherit).wait();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("fd=9") && err.contains(why), "{why}: {err}");
    }
    let out = start(&dir.0, &["--api-socket", "fd=x"], None).wait();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("path=PATH, fd=N or PATH"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = start(&dir.0, &["--kernel", "/vmlinux"], None).wait();
    assert!(
        !out.status.success(),
        "boot options under this name are refused"
    );
}
