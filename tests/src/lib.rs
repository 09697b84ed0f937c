//! Helpers for the integration tests: the tiny guests, the `vmm` binary, a VMM process wrapper
//! that watches the console, and the rule for tests that need /dev/kvm (fail in CI, skip with a
//! reason on a developer's machine).

pub mod curl;
pub mod pair;
pub mod proxy;
pub mod rig;
pub mod stalling_disk;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Path of an assembled tiny guest (tests/guests/NAME.S).
pub fn guest(name: &str) -> PathBuf {
    let p = Path::new(env!("GUEST_DIR")).join(format!("{name}.elf"));
    assert!(p.exists(), "guest {name} was not built: {}", p.display());
    p
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The libvirt build of `make libvirt` (resources/build-libvirt.sh: Debian's source package,
/// ch driver only), linked at build/libvirt; none when it was not built.
pub fn libvirt_prefix() -> Option<PathBuf> {
    let link = workspace_root().join("build").join("libvirt");
    let prefix = std::fs::canonicalize(link).ok()?;
    prefix.join(".complete").exists().then_some(prefix)
}

/// A binary that replaces [`vmm_bin`]'s for the VMM processes started from now on (None: back
/// to it). The bench uses it to run an older build against this one in the same run.
pub fn use_vmm_bin(bin: Option<PathBuf>) {
    *VMM_BIN_OVERRIDE.lock().unwrap() = bin;
}

static VMM_BIN_OVERRIDE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// The `vmm` binary: the one [`use_vmm_bin`] set, else $VMM_BIN if set, else built here once
/// with cargo.
pub fn vmm_bin() -> PathBuf {
    if let Some(bin) = VMM_BIN_OVERRIDE.lock().unwrap().clone() {
        return bin;
    }
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("VMM_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // With the protocol's named failure points (inert unless FAILPOINTS names them): the
        // fault tests use them; a release build never has them.
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "vmm",
                "--bin",
                "vmm",
                "--features",
                "failpoints",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of vmm failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug").join("vmm")
    })
    .clone()
}

/// Where skipped tests are recorded; `make test` prints and counts them at the end.
pub fn skip_log() -> PathBuf {
    workspace_root().join("build").join("test-skips.txt")
}

/// A test that cannot run here: under CI=true a failure; otherwise a "SKIPPED" line on stderr
/// and in [`skip_log`], so the summary of `make test` shows and counts it. Returns false.
pub fn skip(test: &str, why: &str) -> bool {
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{test}: {why}; CI=true, so this is a failure");
    }
    record(&skip_log(), &format!("SKIPPED {test}: {why}"));
    false
}

/// Prints `line` on stderr and appends it to `log` (a summary file of `make test`), creating
/// its directory; a log that cannot be written only loses the summary line.
fn record(log: &Path, line: &str) {
    eprintln!("{line}");
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
    }
}

/// Where retried attempts are recorded (a rig L1 host that hung and was started again);
/// `make test` lists and counts them at the end beside the skips, so a hang that passed on
/// retry is seen.
pub fn retry_log() -> PathBuf {
    workspace_root().join("build").join("test-retries.txt")
}

/// Records that `test` ran an attempt again, and why, in [`retry_log`] (and on stderr).
pub fn note_retry(test: &str, why: &str) {
    record(&retry_log(), &format!("RETRIED {test}: {why}"));
}

/// Records that the rig harness nudged a silent L1 (QMP stop and continue) and it spoke
/// again, in [`retry_log`]: a quiet phase, or a lost vCPU wake-up that the nudge repaired.
pub fn note_nudge(test: &str, why: &str) {
    record(&retry_log(), &format!("NUDGED {test}: {why}"));
}

/// True when tests needing /dev/kvm can run; otherwise see [`skip`].
pub fn require_kvm(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    ok || skip(test, "/dev/kvm is not usable on this machine")
}

/// True when the test runs as root (network namespaces, mounts, another user's processes);
/// otherwise see [`skip`].
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root || skip(test, "needs root")
}

/// Runs a test script to its end, within `limit`; past it the script gets SIGTERM (so it stops
/// what it started, by PID), then is killed, and the test fails. Its exit status.
pub fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> ExitStatus {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            // SAFETY: kill has no memory preconditions; the PID is our unreaped child's.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything a reader (a child's stdout, a terminal's master side) has produced so far, read
/// by a thread of its own until it ends, for tests that wait for what a console shows.
pub struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    pub fn collect(mut reader: impl Read + Send + 'static) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let theirs = bytes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            // Ends at EOF, or EIO once a terminal's last other holder exits.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                theirs.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Screen(bytes)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn shows(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Waits until `needle` has been shown; fails the test after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.shows(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} was never shown within {timeout:?}: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A network namespace a test made (`ip netns add`), named after `tag` and this process;
/// deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("vmm-{tag}-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs");
        assert!(st.success(), "ip netns add {name} failed");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A private runtime directory (standing for one host), removed on drop.
pub struct RuntimeDir(pub PathBuf);

impl RuntimeDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("vmm-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        RuntimeDir(p)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `vmm --runtime-dir DIR ARGS...` to completion (bounded) and returns status, stdout, stderr.
pub fn vmm_cli(dir: &Path, args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(vmm_bin())
        .arg("--runtime-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, timeout).unwrap_or_else(|| {
        kill(&mut child);
        panic!("vmm {args:?} did not finish within {timeout:?}");
    });
    (status, join_text(out), join_text(err))
}

fn collect<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn join_text(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `vmm run` process whose console output is collected line by line. Killed (by PID) on drop.
pub struct VmProcess {
    child: Child,
    lines: Receiver<String>,
    pub console: Arc<Mutex<Vec<String>>>,
    /// With [`VmProcess::start_raw`]: every byte of the console, nothing split into lines.
    pub raw: Arc<Mutex<Vec<u8>>>,
    stdout_done: Option<std::thread::JoinHandle<()>>,
    err_lines: Receiver<String>,
    /// Everything the process wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    stderr_done: Option<std::thread::JoinHandle<()>>,
}

impl VmProcess {
    /// Starts `vmm --runtime-dir DIR run ARGS...`.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_in(&[], dir, args)
    }

    /// Like [`Self::start`], behind a prefix command (e.g. `ip netns exec host1`).
    pub fn start_in(prefix: &[&str], dir: &Path, args: &[&str]) -> Self {
        Self::start_env(prefix, &[], dir, args)
    }

    /// Like [`Self::start_in`], with environment variables (e.g. `FAILPOINTS`).
    pub fn start_env(prefix: &[&str], env: &[(&str, &str)], dir: &Path, args: &[&str]) -> Self {
        Self::start_run(prefix, env, dir, args, false)
    }

    /// Like [`Self::start`], keeping the console as raw bytes only (in [`Self::raw`]): for a
    /// guest that prints more than lines are worth keeping.
    pub fn start_raw(dir: &Path, args: &[&str]) -> Self {
        Self::start_run(&[], &[], dir, args, true)
    }

    /// `vmm --runtime-dir DIR run ARGS...` (see [`Self::spawn`]).
    fn start_run(
        prefix: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
        args: &[&str],
        raw_only: bool,
    ) -> Self {
        let mut full = vec![
            OsStr::new("--runtime-dir"),
            dir.as_os_str(),
            OsStr::new("run"),
        ];
        full.extend(args.iter().map(OsStr::new));
        Self::spawn(prefix, env, &full, raw_only)
    }

    /// Starts `vmm ARGS...` as given (no runtime directory added), with environment
    /// variables: `vmm jail`, whose process stays outside the jail and forwards signals.
    pub fn start_args(env: &[(&str, &str)], args: &[&str]) -> Self {
        let full: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        Self::spawn(&[], env, &full, false)
    }

    /// Starts an empty VMM (`vmm --api-socket SOCKET`) for an API client to drive.
    pub fn empty(dir: &Path, socket: &Path, extra: &[&str]) -> Self {
        let mut full = vec![
            OsStr::new("--runtime-dir"),
            dir.as_os_str(),
            OsStr::new("--api-socket"),
            socket.as_os_str(),
        ];
        full.extend(extra.iter().map(OsStr::new));
        let mut vm = Self::spawn(&[], &[], &full, false);
        vm.wait_for_stderr("empty VMM", Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "no API socket at {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        vm
    }

    /// Runs `vmm ARGS...` (behind `prefix`), collecting its output.
    fn spawn(prefix: &[&str], env: &[(&str, &str)], args: &[&OsStr], raw_only: bool) -> Self {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(vmm_bin());
                c
            }
            None => Command::new(vmm_bin()),
        };
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm run");
        let (tx, lines) = mpsc::channel();
        let console = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = console.clone();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw_sink = raw.clone();
        let stdout_done = Some(std::thread::spawn(move || {
            if raw_only {
                let mut stdout = stdout;
                let mut buf = vec![0u8; 65536];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    raw_sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                return;
            }
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
        let (err_tx, err_lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_sink = stderr.clone();
        let err_pipe = child.stderr.take().unwrap();
        let stderr_done = Some(std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                err_sink.lock().unwrap().push(line.clone());
                let _ = err_tx.send(line);
            }
        }));
        VmProcess {
            child,
            lines,
            console,
            raw,
            stdout_done,
            err_lines,
            stderr,
            stderr_done,
        }
    }

    /// Waits for a line on the process's stderr containing `needle`; returns it.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no stderr line containing {needle:?} within {timeout:?}; stderr: {:?}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Whether the process has exited (it is reaped then).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a console line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no console line containing {needle:?} within {timeout:?}; console tail: {:?}",
                    self.tail(20)
                ),
            }
        }
    }

    /// Waits until a line containing each of `needles` has arrived, in any order.
    pub fn wait_for_each(&mut self, needles: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut missing: Vec<&str> = needles.to_vec();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => missing.retain(|n| !line.contains(n)),
                Err(_) => panic!("no console lines containing {missing:?} within {timeout:?}; console tail: {:?}", self.tail(20)),
            }
        }
    }

    /// Discards console lines received so far.
    pub fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Collects the lines that arrive within `d`.
    pub fn lines_during(&mut self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(l);
        }
        out
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        let c = self.console.lock().unwrap();
        c[c.len().saturating_sub(n)..].to_vec()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process by PID.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded) for the process to exit; returns its status and stderr.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_bounded(&mut self.child, timeout);
        let Some(status) = status else {
            kill(&mut self.child);
            panic!(
                "vmm did not exit within {timeout:?}; console tail: {:?}",
                self.tail(20)
            );
        };
        if let Some(t) = self.stderr_done.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stdout_done.take() {
            let _ = t.join();
        }
        let err = self.stderr.lock().unwrap().join("\n");
        (status, err)
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(&mut self.child);
        }
    }
}

/// Starts the dirtier guest (128 MiB) with `extra` options and waits until every vCPU has
/// made progress.
pub fn start_dirtier(dir: &Path, name: &str, vcpus: u8, extra: &[&str]) -> VmProcess {
    start_dirtier_env(dir, &[], name, vcpus, extra)
}

/// Starts the tiny guest `guest_name` as VM `name` (`vmm run --name NAME --kernel GUEST
/// --memory MEMORY EXTRA...`), with environment variables for the VMM.
pub fn start_tiny(
    dir: &Path,
    env: &[(&str, &str)],
    (guest_name, memory): (&str, &str),
    name: &str,
    extra: &[&str],
) -> VmProcess {
    start_kernel(dir, env, (&guest(guest_name), memory), name, extra)
}

/// [`start_tiny`] with the guest's ELF at `kernel` (a copy another user may read).
pub fn start_kernel(
    dir: &Path,
    env: &[(&str, &str)],
    (kernel, memory): (&Path, &str),
    name: &str,
    extra: &[&str],
) -> VmProcess {
    let mut args = vec![
        "--name",
        name,
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        memory,
    ];
    args.extend_from_slice(extra);
    VmProcess::start_env(&[], env, dir, &args)
}

/// A copy of `file` in `dir`, with its mode, given to `uid`:`gid`: for a process that runs as
/// that user, since the checkout itself may be closed to it (a clone in a `mktemp -d`
/// directory is 0700).
pub fn copy_for_user(file: &Path, dir: &Path, uid: u32, gid: u32) -> PathBuf {
    let copy = dir.join(file.file_name().unwrap());
    std::fs::copy(file, &copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(uid), Some(gid)).unwrap();
    copy
}

/// Waits (bounded) until `vmm info NAME` says the VM runs; its `--json` answer.
pub fn wait_running(dir: &Path, name: &str) -> String {
    let limit = Duration::from_secs(60);
    let deadline = std::time::Instant::now() + limit;
    loop {
        let (st, out, _) = vmm_cli(dir, &["info", name, "--json"], limit);
        if st.success() && out.contains("running") {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never ran: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A field of a `/proc/.../status` text (`name` with its colon, e.g. `"Uid:"`), its values
/// joined by single spaces; empty when absent.
pub fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Gives `path`, and everything under it when it is a directory, to `uid`:`gid`.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// [`start_dirtier`] with environment variables for the VMM (e.g. `FAILPOINTS`).
pub fn start_dirtier_env(
    dir: &Path,
    env: &[(&str, &str)],
    name: &str,
    vcpus: u8,
    extra: &[&str],
) -> VmProcess {
    start_dirtier_kernel(dir, env, &guest("dirtier"), name, vcpus, extra)
}

/// [`start_dirtier_env`] with the dirtier's ELF at `kernel` (a copy another user may read).
pub fn start_dirtier_kernel(
    dir: &Path,
    env: &[(&str, &str)],
    kernel: &Path,
    name: &str,
    vcpus: u8,
    extra: &[&str],
) -> VmProcess {
    let v = vcpus.to_string();
    let mut args = vec!["--vcpus", &v];
    args.extend_from_slice(extra);
    let mut vm = start_kernel(dir, env, (kernel, "128M"), name, &args);
    let needles: Vec<String> = (0..vcpus)
        .map(|cpu| format!("cpu{cpu} pass 16 ok"))
        .collect();
    vm.wait_for_each(
        &needles.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(120),
    );
    vm
}

/// The dirtier guest goes on: each of its `vcpus` prints another pass of its memory
/// self-check, and nothing it printed says a page was corrupted.
pub fn assert_dirtier_goes_on(vm: &mut VmProcess, vcpus: u8) {
    for cpu in 0..vcpus {
        vm.wait_for(&format!("cpu{cpu} pass"), Duration::from_secs(120));
    }
    let console = vm.console.lock().unwrap().clone();
    assert!(
        !console.iter().any(|l| l.contains("CORRUPT")),
        "memory corrupted: {console:?}"
    );
}

/// The source VM is running, answering, and its guest still passes its memory self-check.
pub fn assert_source_intact(dir: &Path, vm: &mut VmProcess, name: &str) {
    let t = Duration::from_secs(120);
    let (st, out, err) = vmm_cli(dir, &["info", name, "--json"], t);
    assert!(st.success(), "{err}");
    assert!(out.contains("\"running\""), "{out}");
    vm.drain();
    vm.wait_for("pass", t);
    vm.wait_for("pass", t);
    let console = vm.console.lock().unwrap().clone();
    assert!(
        !console.iter().any(|l| l.contains("CORRUPT")),
        "memory corrupted: {:?}",
        &console[console.len().saturating_sub(10)..]
    );
}

/// Makes a certificate set for --tls-dir in `dir` naming `names` (resources/tls/make-certs.sh).
pub fn make_certs(dir: &Path, names: &[&str]) {
    let script = workspace_root().join("resources/tls/make-certs.sh");
    let out = Command::new(&script)
        .arg(dir)
        .args(names)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (is openssl installed?)",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "make-certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a migration key file (mode 0600) in `dir` and returns its path.
pub fn key_file(dir: &Path, name: &str, key: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{key}\n").as_bytes()).unwrap();
    p
}

/// The key most tests migrate with, in `dir`.
pub fn test_key(dir: &Path) -> PathBuf {
    key_file(dir, "migration.key", "vmm-test-migration-key-0123456789")
}

/// A TCP port on 127.0.0.1 for a test's listener. A counter hands the ports out, so two tests
/// of this process (they run in parallel threads) never get the same one; they come from
/// below the kernel's ephemeral range (`ip_local_port_range`), so no outgoing connection's
/// local port takes one before its listener binds it; each is checked free when handed out;
/// and each test process starts at its own offset (from its PID), so test binaries and a
/// bench running beside them rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > LOWEST + 1000)
        .unwrap_or(32_768);
    let span = ephemeral - LOWEST;
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST + (offset + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {LOWEST}..{ephemeral}");
}

/// Waits until the migration of `name` (in runtime dir `dir`) has sent `bytes` of guest memory,
/// as its `vm.migration-progress` reports (counted at the end of each round); for tests that
/// act in the middle of a transfer.
pub fn wait_for_bytes_sent(dir: &Path, name: &str, bytes: u64, timeout: Duration) {
    let socket = dir.join(format!("{name}.sock"));
    let deadline = Instant::now() + timeout;
    loop {
        let (_, p) = curl::curl(&socket, "GET", "vm.migration-progress", None);
        if p["progress"]["bytes_sent"].as_u64().unwrap_or(0) >= bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the migration of {name} did not send {bytes} bytes in {timeout:?}: {p}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `vmm --runtime-dir DIR ARGS...` (a `migrate`), retrying while the destination is not
/// listening yet.
pub fn migrate_retrying(
    dir: &Path,
    args: &[&str],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    for _ in 0..50 {
        let (st, out, err) = vmm_cli(dir, args, timeout);
        if !st.success() && err.contains("cannot connect") {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        return (st, out, err);
    }
    panic!("the destination never listened ({args:?})");
}

/// How a test destination starts, beyond what every one has (see [`destination`]).
#[derive(Default)]
pub struct Incoming<'a> {
    /// More `vmm run` options: grants (`--disk`, `--net`), `--io-timeout`.
    pub extra: &'a [&'a str],
    /// Its environment (`FAILPOINTS`, `VMM_TEST_HIDE_CPUID`).
    pub env: &'a [(&'a str, &'a str)],
    /// Keep its console as raw bytes ([`VmProcess::start_raw`]).
    pub raw: bool,
}

/// A destination, `vmm run --name NAME --incoming tcp:127.0.0.1:PORT` with the test key of
/// `dir` and `opts`, once it waits for its source.
pub fn destination(dir: &Path, name: &str, port: u16, opts: Incoming<'_>) -> VmProcess {
    let key = test_key(dir);
    let to = format!("tcp:127.0.0.1:{port}");
    let mut args = vec![
        "--name",
        name,
        "--incoming",
        &to,
        "--auth-key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(opts.extra);
    let mut dst = VmProcess::start_run(&[], opts.env, dir, &args, opts.raw);
    dst.wait_for_stderr("waiting for VM", Duration::from_secs(120));
    dst
}

/// A destination with nothing but the test key, its console kept raw.
pub fn raw_destination(dir: &Path, name: &str, port: u16) -> VmProcess {
    destination(
        dir,
        name,
        port,
        Incoming {
            raw: true,
            ..Incoming::default()
        },
    )
}

/// `vmm migrate NAME --to tcp:127.0.0.1:PORT` with the test key of `dir`, retried until the
/// destination listens.
pub fn migrate_to_port(dir: &Path, name: &str, port: u16) -> (ExitStatus, String, String) {
    migrate_retrying(
        dir,
        &[
            "migrate",
            name,
            "--to",
            &format!("tcp:127.0.0.1:{port}"),
            "--auth-key-file",
            test_key(dir).to_str().unwrap(),
        ],
        Duration::from_secs(120),
    )
}

/// Whether this host's KVM is hardware-backed (kvm_intel or kvm_amd loaded).
pub fn hardware_kvm() -> bool {
    Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
}
