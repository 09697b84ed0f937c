//! The nested test rig from the outside: boots an L1 host under QEMU (software emulation of an
//! AMD CPU with SVM, so a real /dev/kvm exists inside) through resources/rig/run-l1.sh, watches
//! its serial console for the scenario's verdict, and retries once when the L1 hangs (console
//! silent for too long, a known Debian QEMU 7.2 TCG problem described in DESIGN.md).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Console silence after which an L1 is taken as hung (a lockup report also counts).
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

pub struct RigRun {
    pub passed: bool,
    pub verdict: String,
    pub console: Vec<String>,
    pub elapsed: Duration,
    /// Seconds from QEMU start to the first line containing each marker seen.
    pub marks: Vec<(String, f64)>,
}

enum Attempt {
    Finished(RigRun),
    Hung(Vec<String>),
}

/// Directory with the L1 kernel and initramfs: $RIG_DIR, else build/rig in the workspace.
pub fn rig_dir() -> PathBuf {
    std::env::var_os("RIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("build/rig"))
}

/// True when the rig is built and QEMU is installed. Without them: a failure under CI=true,
/// otherwise false after saying why the test is skipped.
pub fn require_rig(test: &str) -> bool {
    let dir = rig_dir();
    let missing: Vec<String> = ["vmlinuz", "initramfs.cpio.gz"]
        .iter()
        .filter(|f| !dir.join(f).exists())
        .map(|f| dir.join(f).display().to_string())
        .chain(which("qemu-system-x86_64").is_none().then(|| "qemu-system-x86_64".to_string()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("the nested rig is not built (missing {}); `make rig` builds it", missing.join(", "));
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{test}: {why}; CI=true, so this is a failure");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.exists())
}

/// Runs `scenario` in an L1 host, retrying once if the L1 hangs. `markers` are console
/// substrings whose first appearance times are reported.
pub fn run_scenario(scenario: &str, timeout: Duration, markers: &[&str]) -> RigRun {
    // An L1 that hangs is the rig's fault (DESIGN.md section 10), not the scenario's: retry it.
    // A scenario that reports FAIL is never retried.
    for attempt in 1..=3 {
        match attempt_once(scenario, timeout, markers, attempt) {
            Attempt::Finished(run) => return run,
            Attempt::Hung(console) => {
                eprintln!(
                    "rig: L1 console silent for {SILENCE_LIMIT:?} in attempt {attempt} of scenario {scenario}; last lines: {:?}",
                    &console[console.len().saturating_sub(5)..]
                );
            }
        }
    }
    panic!("rig: scenario {scenario} hung three times (console silent for {SILENCE_LIMIT:?} or an L1 lockup report); logs under build/rig-logs");
}

fn attempt_once(scenario: &str, timeout: Duration, markers: &[&str], attempt: u32) -> Attempt {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("resources/rig/run-l1.sh");
    let start = Instant::now();
    let mut child = Command::new(&script)
        .arg(rig_dir())
        .arg(scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the L1 host (run-l1.sh)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let mut marks: Vec<(String, f64)> = Vec::new();
    let mut verdict = None;
    let deadline = start + timeout;
    let mut hung = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left.min(SILENCE_LIMIT)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                for m in markers {
                    if line.contains(m) && !marks.iter().any(|(k, _)| k == m) {
                        marks.push((m.to_string(), start.elapsed().as_secs_f64()));
                    }
                }
                if line.contains("RIG-RESULT:") {
                    verdict = Some(line.clone());
                }
                // The L1 kernel noticed one of its CPUs stuck (the same TCG wake-up loss seen
                // as an IPI that is never answered): this attempt will not finish.
                if line.contains("soft lockup") || line.contains("rcu_sched self-detected stall") || line.contains("rcu: INFO: rcu_preempt") {
                    console.push(line);
                    hung = true;
                    break;
                }
                console.push(line);
                if verdict.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() < deadline {
                    hung = true;
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Give QEMU a moment to exit on its own (the L1 reboots with -no-reboot), then kill it by PID.
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < exit_deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
    save_log(scenario, attempt, &console);
    if hung && verdict.is_none() {
        return Attempt::Hung(console);
    }
    let verdict = verdict.unwrap_or_else(|| format!("no RIG-RESULT within {timeout:?}"));
    Attempt::Finished(RigRun { passed: verdict.contains("RIG-RESULT: PASS"), verdict, console, elapsed: start.elapsed(), marks })
}

fn save_log(scenario: &str, attempt: u32, console: &[String]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("build/rig-logs");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{scenario}-{attempt}.log")), console.join("\n"));
    }
}

/// Runs a scenario of resources/rig/scenarios directly on this host (hardware KVM), in a private
/// network namespace standing for the L1 host's own network, with the built guest artifacts.
pub fn run_scenario_direct(name: &str) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let guest = root.join("build/guest");
    assert!(guest.join("bzImage").exists(), "guest artifacts missing under {}; run `make artifacts`", guest.display());
    let bin_dir = crate::vmm_bin().parent().unwrap().to_path_buf();
    let work = crate::RuntimeDir::new(name);
    Command::new("unshare")
        .args(["--net", "sh"])
        .arg(root.join("resources/rig/scenarios").join(name))
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env("RIG_GUEST", &guest)
        .env("RIG_WORK", &work.0)
        .env("VMM_RUNTIME_DIR", &work.0)
        .output()
        .expect("run the scenario")
}
