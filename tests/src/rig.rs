//! The nested test rig from the outside: boots an L1 host under QEMU (software emulation of an
//! AMD CPU with SVM, so a real /dev/kvm exists inside) through resources/rig/run-l1.sh, watches
//! its serial console for the scenario's verdict, nudges a silent L1 over QMP (where are its
//! CPUs, then stop and continue), and retries up to three attempts when the L1 hangs (console
//! silent for too long, a known Debian QEMU 7.2 TCG problem described in docs/design.md
//! section 10). A scenario may span two L1 hosts joined by a network and a shared disk
//! (run_hosts).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Console silence after which an L1 is taken as hung (a lockup report also counts).
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// Console silence after which the harness asks each L1's QEMU (over QMP) where its CPUs are
/// and whether they are halted, records that in the log, and stops and continues it: a vCPU
/// whose wake-up QEMU lost (docs/design.md section 10) re-checks its pending interrupts then.
/// A host that is merely quiet loses a few milliseconds.
const NUDGE_AFTER: Duration = Duration::from_secs(20);

pub struct RigRun {
    pub passed: bool,
    pub verdict: String,
    /// Console lines; with several L1 hosts each is prefixed "hN| " (N from 1).
    pub console: Vec<String>,
    /// Every line with its host (0-based) and arrival time in seconds since the start.
    pub lines: Vec<(usize, f64, String)>,
    pub elapsed: Duration,
    /// Seconds from QEMU start to the first line containing each marker seen.
    pub marks: Vec<(String, f64)>,
}

/// One L1 host of a scenario: the scenario it runs and the run-l1.sh environment
/// (RIG_NET, RIG_LUN, RIG_APPEND, ...).
#[derive(Clone, Default)]
pub struct L1Host {
    pub scenario: String,
    pub env: Vec<(String, String)>,
}

enum Attempt {
    Finished(RigRun),
    Hung(Vec<String>),
}

/// Directory with the L1 kernel and initramfs: $RIG_DIR, else build/rig in the workspace.
pub fn rig_dir() -> PathBuf {
    std::env::var_os("RIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join("build/rig")
        })
}

/// True when the rig is built and QEMU is installed. Without them: a failure under CI=true,
/// otherwise false after saying why the test is skipped.
pub fn require_rig(test: &str) -> bool {
    let dir = rig_dir();
    let missing: Vec<String> = ["vmlinuz", "initramfs.cpio.gz"]
        .iter()
        .filter(|f| !dir.join(f).exists())
        .map(|f| dir.join(f).display().to_string())
        .chain(
            which("qemu-system-x86_64")
                .is_none()
                .then(|| "qemu-system-x86_64".to_string()),
        )
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "the nested rig is not built (missing {}); `make rig` builds it",
        missing.join(", ")
    );
    crate::skip(test, &why)
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.exists())
}

/// Runs `scenario` in an L1 host, retrying when the L1 hangs. `markers` are console
/// substrings whose first appearance times are reported.
pub fn run_scenario(scenario: &str, timeout: Duration, markers: &[&str]) -> RigRun {
    run_hosts(
        scenario,
        &[L1Host {
            scenario: scenario.into(),
            env: vec![],
        }],
        timeout,
        markers,
    )
}

/// Runs one scenario over several L1 hosts started together (each with its own console),
/// retrying when an L1 hangs. It passes when every host reports PASS; a FAIL from any host
/// ends the attempt. `name` labels the logs under build/rig-logs.
pub fn run_hosts(name: &str, hosts: &[L1Host], timeout: Duration, markers: &[&str]) -> RigRun {
    // An L1 that hangs is the rig's fault (docs/design.md section 10), not the scenario's: retry it.
    // A scenario that reports FAIL is never retried.
    for attempt in 1..=3 {
        match attempt_once(name, hosts, timeout, markers, attempt) {
            Attempt::Finished(run) => return run,
            Attempt::Hung(console) => {
                let last = console.last().map_or("", String::as_str);
                crate::note_retry(
                    &format!("rig scenario {name}"),
                    &format!(
                        "attempt {attempt}: L1 hung (console silent for {SILENCE_LIMIT:?} or a lockup report); last line {last:?}; log build/rig-logs/{name}-{attempt}.log"
                    ),
                );
            }
        }
    }
    panic!("rig: scenario {name} hung three times (console silent for {SILENCE_LIMIT:?} or an L1 lockup report); logs under build/rig-logs");
}

/// The L1 kernel noticed one of its CPUs stuck (the TCG wake-up loss seen as an IPI that is
/// never answered): the attempt will not finish.
fn is_lockup_report(line: &str) -> bool {
    line.contains("soft lockup")
        || line.contains("rcu_sched self-detected stall")
        || line.contains("rcu: INFO: rcu_preempt")
}

fn attempt_once(
    name: &str,
    hosts: &[L1Host],
    timeout: Duration,
    markers: &[&str],
    attempt: u32,
) -> Attempt {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("resources/rig/run-l1.sh");
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::new();
    let qmp_dir = crate::RuntimeDir::new(&format!("rig-qmp-{attempt}"));
    let qmp_paths: Vec<PathBuf> = (0..hosts.len())
        .map(|i| qmp_dir.0.join(format!("l1-{i}.qmp")))
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        let mut child = Command::new(&script)
            .arg(rig_dir())
            .arg(&host.scenario)
            .envs(host.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RIG_QMP", &qmp_paths[i])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the L1 host (run-l1.sh)");
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Bytes, not UTF-8 lines: a guest's console may print anything, and a reader that
            // stopped at a bad byte would look like a silent L1.
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_string();
                buf.clear();
                if tx.send((i, line)).is_err() {
                    break;
                }
            }
        });
        children.push(child);
    }
    drop(tx);
    let multi = hosts.len() > 1;
    let mut console = Vec::new();
    let mut lines = Vec::new();
    let mut marks: Vec<(String, f64)> = Vec::new();
    let mut verdicts: Vec<Option<String>> = vec![None; hosts.len()];
    let deadline = start + timeout;
    let mut hung = false;
    let mut last_line = Instant::now();
    let mut nudged = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let silence_left = if nudged {
            SILENCE_LIMIT.saturating_sub(last_line.elapsed())
        } else {
            NUDGE_AFTER.saturating_sub(last_line.elapsed())
        };
        match rx.recv_timeout(left.min(silence_left)) {
            Ok((host, line)) => {
                last_line = Instant::now();
                if nudged {
                    crate::note_nudge(
                        &format!("rig scenario {name}"),
                        &format!("attempt {attempt}: console silent for {NUDGE_AFTER:?}; it spoke again after QMP stop and continue"),
                    );
                    nudged = false;
                }
                let t = start.elapsed().as_secs_f64();
                let line = line.trim_end_matches('\r').to_string();
                for m in markers {
                    if line.contains(m) && !marks.iter().any(|(k, _)| k == m) {
                        marks.push((m.to_string(), t));
                    }
                }
                let failed = line.contains("RIG-RESULT: FAIL");
                if line.contains("RIG-RESULT:") {
                    verdicts[host] = Some(if multi {
                        format!("host{}: {line}", host + 1)
                    } else {
                        line.clone()
                    });
                }
                let lockup = is_lockup_report(&line);
                console.push(if multi {
                    format!("h{}| {line}", host + 1)
                } else {
                    line.clone()
                });
                lines.push((host, t, line));
                if lockup {
                    hung = true;
                    break;
                }
                if failed || verdicts.iter().all(Option::is_some) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !nudged && Instant::now() < deadline => {
                // Silent for NUDGE_AFTER: say where each L1's CPUs are, then stop and continue it.
                for (i, path) in qmp_paths.iter().enumerate() {
                    let report = match nudge(path) {
                        Ok(cpus) => format!("CPUs {cpus}; stopped and continued"),
                        Err(e) => format!("QMP failed: {e}"),
                    };
                    let line = format!(
                        "RIG-HARNESS: console silent for {NUDGE_AFTER:?}; L1 host {}: {report}",
                        i + 1
                    );
                    eprintln!("{line}");
                    console.push(line);
                }
                nudged = true;
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
    while Instant::now() < exit_deadline
        && children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in &mut children {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    save_log(name, attempt, &console);
    let failed = verdicts
        .iter()
        .flatten()
        .find(|v| v.contains("FAIL"))
        .cloned();
    if hung && failed.is_none() {
        return Attempt::Hung(console);
    }
    let verdict = failed.unwrap_or_else(|| {
        if verdicts.iter().all(Option::is_some) {
            verdicts
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            format!("no RIG-RESULT from every host within {timeout:?}")
        }
    });
    let passed = verdicts
        .iter()
        .all(|v| v.as_deref().is_some_and(|v| v.contains("RIG-RESULT: PASS")));
    Attempt::Finished(RigRun {
        passed,
        verdict,
        console,
        lines,
        elapsed: start.elapsed(),
        marks,
    })
}

/// Over an L1's QMP socket: each CPU's RIP and halt flag (HMP's `info registers -a`), then
/// `stop` and `cont`.
fn nudge(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut reply = |command: &str| -> std::io::Result<serde_json::Value> {
        writer.write_all(command.as_bytes())?;
        writer.write_all(b"\n")?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("QMP closed"));
            }
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(std::io::Error::other)?;
            // Greeting and events (STOP, RESUME) come between the replies.
            if value.get("return").is_some() || value.get("error").is_some() {
                return Ok(value);
            }
        }
    };
    reply(r#"{"execute":"qmp_capabilities"}"#)?;
    let registers = reply(
        r#"{"execute":"human-monitor-command","arguments":{"command-line":"info registers -a"}}"#,
    )?;
    let text = registers["return"].as_str().unwrap_or_default();
    let cpus: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.starts_with("RIP=") || w.starts_with("HLT="))
        .map(str::to_string)
        .collect();
    reply(r#"{"execute":"stop"}"#)?;
    reply(r#"{"execute":"cont"}"#)?;
    Ok(cpus.join(" "))
}

fn save_log(scenario: &str, attempt: u32, console: &[String]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("build/rig-logs");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join(format!("{scenario}-{attempt}.log")),
            console.join("\n"),
        );
    }
}

/// Runs a scenario of resources/rig/scenarios directly on this host (hardware KVM), in a private
/// network namespace standing for the L1 host's own network, with the built guest artifacts.
pub fn run_scenario_direct(name: &str) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let guest = root.join("build/guest");
    assert!(
        guest.join("bzImage").exists(),
        "guest artifacts missing under {}; run `make artifacts`",
        guest.display()
    );
    let bin_dir = crate::vmm_bin().parent().unwrap().to_path_buf();
    let work = crate::RuntimeDir::new(name);
    Command::new("unshare")
        .args(["--net", "sh"])
        .arg(root.join("resources/rig/scenarios").join(name))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("RIG_GUEST", &guest)
        .env("RIG_WORK", &work.0)
        .env("VMM_RUNTIME_DIR", &work.0)
        .output()
        .expect("run the scenario")
}

/// Two L1 hosts for a migration scenario: joined by a UDP socket network (host1 10.0.0.1,
/// host2 10.0.0.2 inside) and sharing `lun` as their /dev/vda. `append` is added to both
/// kernel command lines (rig.NAME=VALUE reach the scenario as RIG_NAME).
pub fn two_hosts(scenario: &str, lun: &Path, append: &str) -> Vec<L1Host> {
    let udp_port = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (p1, p2) = (udp_port(), udp_port());
    (1..=2)
        .map(|h| L1Host {
            scenario: scenario.into(),
            env: vec![
                ("RIG_SMP".into(), "1".into()),
                ("RIG_MEM".into(), "2G".into()),
                (
                    "RIG_NET".into(),
                    if h == 1 {
                        format!("{p1}:{p2}")
                    } else {
                        format!("{p2}:{p1}")
                    },
                ),
                ("RIG_MAC".into(), format!("52:54:00:00:00:0{h}")),
                ("RIG_LUN".into(), lun.display().to_string()),
                ("RIG_APPEND".into(), format!("rig.host={h} {append}")),
            ],
        })
        .collect()
}

/// A raw image of `mib` MiB holding an empty ext4 filesystem, the shared LUN of a two-host
/// scenario.
pub fn make_shared_lun(path: &Path, mib: u32) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "shared"])
        .arg(path)
        .arg(format!("{mib}M"))
        .status()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(st.success(), "mkfs.ext4 {} failed", path.display());
}

/// What the guest's heartbeat ("CONT: hb=... real_ms=...") says about its clock across the
/// hosts it ran on: per stretch of heartbeats on one host, the smallest difference between
/// the line's arrival time here and the guest's wall clock (queueing only adds to it), so the
/// change of that minimum between stretches is the guest clock's jump at a migration.
pub struct ClockReport {
    /// (host index, heartbeats, min offset ms) per stretch, in order.
    pub stretches: Vec<(usize, usize, f64)>,
    /// The largest |change| of the minimum offset between consecutive stretches, ms.
    pub max_jump_ms: f64,
    /// The longest gap between two heartbeats the guest itself measured, ms.
    pub guest_max_gap_ms: u64,
}

pub fn clock_report(lines: &[(usize, f64, String)]) -> ClockReport {
    let field = |l: &str, k: &str| -> Option<u64> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    let mut stretches: Vec<(usize, usize, f64)> = Vec::new();
    let mut guest_max_gap_ms = 0;
    // In the guest's own order (its heartbeat counter), not the order of arrival: two hosts'
    // consoles reach us through two pipes, and the first line from the new host can overtake
    // the old host's last one.
    let mut beats: Vec<&(usize, f64, String)> = lines
        .iter()
        .filter(|(_, _, l)| l.contains("CONT: hb="))
        .collect();
    beats.sort_by_key(|(_, _, l)| field(l, "hb=").unwrap_or(u64::MAX));
    for (host, t, line) in beats {
        let (Some(real), Some(gap)) = (field(line, "real_ms="), field(line, "maxgap_ms=")) else {
            continue;
        };
        guest_max_gap_ms = guest_max_gap_ms.max(gap);
        let offset = t * 1000.0 - real as f64;
        match stretches.last_mut() {
            Some((h, n, min)) if h == host => {
                *n += 1;
                *min = min.min(offset);
            }
            _ => stretches.push((*host, 1, offset)),
        }
    }
    let max_jump_ms = stretches
        .windows(2)
        .map(|w| (w[1].2 - w[0].2).abs())
        .fold(0.0, f64::max);
    ClockReport {
        stretches,
        max_jump_ms,
        guest_max_gap_ms,
    }
}
