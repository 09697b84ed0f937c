//! A VM whose serial console is a PTY (`vmm run --serial pty`) needs no terminal of its own:
//! `vmm console NAME` attaches, carries keys to the guest and its answers back, detaches on
//! Ctrl-] while the guest runs on, and attaches again; `vmm info` names the PTY, and the
//! console reports when the VMM exits.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::{guest, require_kvm, vmm_bin, vmm_cli, RuntimeDir, Screen, VmProcess};

const T: Duration = Duration::from_secs(60);

/// A `vmm console` process: its stdin, and everything it printed so far.
struct Attached {
    child: Child,
    keys: ChildStdin,
    screen: Screen,
}

impl Attached {
    fn start(dir: &std::path::Path, name: &str) -> Self {
        let mut child = Command::new(vmm_bin())
            .arg("--runtime-dir")
            .arg(dir)
            .args(["console", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vmm console");
        let keys = child.stdin.take().unwrap();
        let screen = Screen::collect(child.stdout.take().unwrap());
        Attached {
            child,
            keys,
            screen,
        }
    }

    fn wait_for(&self, needle: &str) {
        self.screen.wait_for(needle, T);
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits (bounded) for the console process to exit; its exit code.
    fn exit_code(mut self) -> i32 {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("vmm console did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn vmm_console_attaches_to_a_pty_console_detaches_and_attaches_again() {
    if !require_kvm("vmm_console_attaches_to_a_pty_console_detaches_and_attaches_again") {
        return;
    }
    let dir = RuntimeDir::new("console-pty");
    let g = guest("echo");
    let vm = VmProcess::start(
        &dir.0,
        &[
            "--name",
            "echo",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--serial",
            "pty",
        ],
    );
    // Up, with its console on a PTY that `vmm info` names.
    let deadline = Instant::now() + T;
    let info = loop {
        let (st, out, _) = vmm_cli(&dir.0, &["info", "echo", "--json"], T);
        if st.success() && out.contains("running") {
            break out;
        }
        assert!(Instant::now() < deadline, "the VM never ran: {out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let text = info.to_string();
    assert!(
        text.contains("/dev/pts/"),
        "vmm info does not name the PTY: {text}"
    );

    // Attached: the guest's greeting (printed before anyone attached) and its answers.
    let mut console = Attached::start(&dir.0, "echo");
    console.wait_for("echo ready");
    console.type_keys(b"hello");
    console.wait_for("HELLO");
    // Ctrl-] detaches; the guest runs on.
    console.type_keys(&[0x1d]);
    assert_eq!(console.exit_code(), 0);
    let (_, out, _) = vmm_cli(&dir.0, &["info", "echo"], T);
    assert!(out.contains("running"), "{out}");

    // Attached again: keys still reach it; '.' makes the guest reset, the VMM exits and the
    // console says its PTY closed.
    let mut console = Attached::start(&dir.0, "echo");
    console.type_keys(b"again");
    console.wait_for("AGAIN");
    console.type_keys(b".");
    console.wait_for("echo done");
    assert_eq!(console.exit_code(), 0);
    let (status, _) = vm.wait_exit(T);
    assert!(status.success(), "{status:?}");
}

#[test]
fn vmm_console_explains_a_console_that_is_not_a_pty() {
    if !require_kvm("vmm_console_explains_a_console_that_is_not_a_pty") {
        return;
    }
    let dir = RuntimeDir::new("console-tty");
    let g = guest("echo");
    let mut vm = VmProcess::start(
        &dir.0,
        &[
            "--name",
            "plain",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
        ],
    );
    vm.wait_for("echo ready", T);
    let (st, _, err) = vmm_cli(&dir.0, &["console", "plain"], T);
    assert!(!st.success());
    assert!(
        err.contains("not a PTY") && err.contains("--serial pty"),
        "{err}"
    );
    let (st, _, err) = vmm_cli(
        &dir.0,
        &["run", "--name", "x", "--kernel", "/k", "--serial", "pipe"],
        T,
    );
    assert!(!st.success());
    assert!(err.contains("tty, pty, file=PATH or null"), "{err}");
}
