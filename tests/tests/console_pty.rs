//! A VM whose serial console is a PTY (`vmm run --serial pty`) or a Unix socket (`--serial
//! socket=PATH`) needs no terminal of its own: `vmm console NAME` attaches, carries keys to
//! the guest and its answers back, detaches on Ctrl-] while the guest runs on, and attaches
//! again; `vmm info` names the PTY or socket, and the console reports when the VMM exits. A
//! socket serves one client at a time and is gone with its VMM.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::{
    guest, require_kvm, start_tiny, vmm_bin, vmm_cli, wait_running, RuntimeDir, Screen, VmProcess,
};

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

    /// Types '.': the echo guest says goodbye and resets, its VMM exits 0 and so does this
    /// console (it closed).
    fn reset_the_guest(mut self, vm: VmProcess) {
        self.type_keys(b".");
        self.wait_for("echo done");
        assert_eq!(self.exit_code(), 0);
        let (status, _) = vm.wait_exit(T);
        assert!(status.success(), "{status:?}");
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

/// The echo guest as `name`, its serial console `--serial serial`.
fn start_echo(dir: &RuntimeDir, name: &str, serial: &str) -> VmProcess {
    start_tiny(&dir.0, &[], ("echo", "64M"), name, &["--serial", serial])
}

/// Boots the echo guest with `--serial serial`, waits until `vmm info` names `names` as its
/// console, and checks one attach, detach, attach again and the VMM's end through `vmm
/// console`. Before anyone attaches, a PTY keeps the guest's greeting; a socket drops it.
fn attach_detach_and_attach_again(dir: &RuntimeDir, serial: &str, names: &str) {
    let vm = start_echo(dir, "echo", serial);
    // Up, with its console where `vmm info` says.
    let info: serde_json::Value = serde_json::from_str(&wait_running(&dir.0, "echo")).unwrap();
    let text = info.to_string();
    assert!(
        text.contains(names),
        "vmm info does not name the console {names}: {text}"
    );

    // Attached: the guest's answers (and, from a PTY, its greeting printed before).
    let mut console = Attached::start(&dir.0, "echo");
    if serial == "pty" {
        console.wait_for("echo ready");
    }
    console.type_keys(b"hello");
    console.wait_for("HELLO");
    // Ctrl-] detaches; the guest runs on.
    console.type_keys(&[0x1d]);
    assert_eq!(console.exit_code(), 0);
    let (_, out, _) = vmm_cli(&dir.0, &["info", "echo"], T);
    assert!(out.contains("running"), "{out}");

    // Attached again: keys still reach it; '.' makes the guest reset, the VMM exits and the
    // console says it closed.
    let mut console = Attached::start(&dir.0, "echo");
    console.type_keys(b"again");
    console.wait_for("AGAIN");
    console.reset_the_guest(vm);
}

#[test]
fn vmm_console_attaches_to_a_pty_console_detaches_and_attaches_again() {
    if !require_kvm("vmm_console_attaches_to_a_pty_console_detaches_and_attaches_again") {
        return;
    }
    let dir = RuntimeDir::new("console-pty");
    attach_detach_and_attach_again(&dir, "pty", "/dev/pts/");
}

#[test]
fn vmm_console_attaches_to_a_socket_console_one_client_at_a_time() {
    if !require_kvm("vmm_console_attaches_to_a_socket_console_one_client_at_a_time") {
        return;
    }
    let dir = RuntimeDir::new("console-socket");
    let socket = dir.0.join("echo.serial");
    let serial = format!("socket={}", socket.display());
    attach_detach_and_attach_again(&dir, &serial, &format!("socket {}", socket.display()));
    assert!(!socket.exists(), "the console socket outlived its VMM");

    // A second client while one is attached is told so and closed.
    let vm = start_echo(&dir, "busy", &serial);
    wait_running(&dir.0, "busy");
    let mut first = Attached::start(&dir.0, "busy");
    first.type_keys(b"one");
    first.wait_for("ONE");
    let second = Attached::start(&dir.0, "busy");
    second.wait_for("has a client attached already");
    assert_eq!(second.exit_code(), 0);
    first.type_keys(b"two");
    first.wait_for("TWO");
    first.reset_the_guest(vm);
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
        err.contains("neither a PTY nor a socket") && err.contains("--serial pty"),
        "{err}"
    );
    let (st, _, err) = vmm_cli(
        &dir.0,
        &["run", "--name", "x", "--kernel", "/k", "--serial", "pipe"],
        T,
    );
    assert!(!st.success());
    assert!(
        err.contains("tty, pty, socket=PATH, file=PATH or null"),
        "{err}"
    );
}
