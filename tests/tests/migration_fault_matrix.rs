//! The fault matrix of the commit protocol: at every named fault point of a migration (the
//! `failpoints` build holds the side that owns the point there for a moment), each fault in
//! turn: the source process killed, the destination process killed, the network silent both
//! ways, the connections reset, a stop requested on the source, a stop requested on the
//! destination. Each row then settles and checks the one rule: exactly one copy of the guest
//! runs (its memory self-check intact), or the source keeps exactly one paused copy flagged
//! `unknown`, which `vmm resume --force` resumes (when the destination has none) or which is
//! refused and discarded (when the destination runs it). Never two running; none only where
//! the operator asked for a stop or the killed process held the only copy. The table is
//! printed (`--nocapture`) and copied into the README.
//!
//! The rows run one after another: the tiny guests spin their vCPUs, and two pairs at once on
//! two cores slow every row down more than they save.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use migration::faults::POINTS;
use vmm_tests::pair::{hold, state, Pair, T, UNKNOWN};
use vmm_tests::proxy::Link;
use vmm_tests::{assert_source_intact, require_kvm, vmm_cli};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillSource,
    KillDestination,
    Silence,
    Reset,
    StopSource,
    StopDestination,
}

const FAULTS: [Fault; 6] = [
    Fault::KillSource,
    Fault::KillDestination,
    Fault::Silence,
    Fault::Reset,
    Fault::StopSource,
    Fault::StopDestination,
];

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::KillSource => "kill src",
            Fault::KillDestination => "kill dst",
            Fault::Silence => "silence",
            Fault::Reset => "reset",
            Fault::StopSource => "stop src",
            Fault::StopDestination => "stop dst",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The migration failed before the commit; the guest runs on at the source.
    Source,
    /// The guest runs at the destination; the source's copy is gone.
    Destination,
    /// The source kept a paused copy flagged unknown, the destination has none:
    /// `vmm resume --force` resumed it at the source.
    ForcedAtSource,
    /// The source kept a paused copy flagged unknown, the destination runs the guest:
    /// `vmm resume --force` was refused (the disk is held) and `vmm stop` discarded the copy.
    DiscardedAtSource,
    /// The stop was carried out: before the commit at the source, or at the destination once
    /// the guest ran there.
    Stopped,
    /// The killed process held the only copy (as killing any VMM that runs a guest does).
    Killed,
}

impl Outcome {
    fn cell(self) -> &'static str {
        match self {
            Outcome::Source => "runs at source",
            Outcome::Destination => "runs at destination",
            Outcome::ForcedAtSource => "paused, unknown; forced resume at source",
            Outcome::DiscardedAtSource => {
                "paused, unknown; force refused, discarded; runs at destination"
            }
            Outcome::Stopped => "stopped on request",
            Outcome::Killed => "gone with the killed process",
        }
    }
}

/// Where the point lies in the protocol, for what each fault may lead to there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the source commits: the source owns the guest.
    BeforeCommit,
    /// The state is sent; the destination, not held, restores it and sends Ready, which may
    /// reach the source before the fault does (the source then commits).
    StateSent,
    /// The source has committed (it will not resume on its own), the Commit is not sent.
    SourceCommitted,
    /// The Commit is sent; the destination, not held, reads it at once.
    CommitSent,
    /// The destination has read the Commit and not yet run the guest.
    DestinationCommitted,
    /// The destination runs the guest; its Resumed is not sent.
    DestinationRuns,
    /// The source has read Resumed.
    Confirmed,
}

fn phase(point: &str) -> Phase {
    match point {
        "source.state_sent" => Phase::StateSent,
        "source.before_commit" => Phase::SourceCommitted,
        "source.commit_sent" => Phase::CommitSent,
        "destination.commit_received" | "destination.disks_acquired" => Phase::DestinationCommitted,
        "destination.resumed" => Phase::DestinationRuns,
        "source.resumed_received" => Phase::Confirmed,
        _ => Phase::BeforeCommit,
    }
}

/// The outcomes the commit rule allows for a fault at a phase. More than one only where the
/// side that is not held races the fault: the source held just after its state or its Commit
/// went out, the destination's Ready or Resumed may or may not be back (and the relay may or
/// may not have handed the Commit on) when the link fails or the destination dies.
fn allowed(phase: Phase, fault: Fault) -> &'static [Outcome] {
    use Fault::*;
    use Outcome::*;
    match (phase, fault) {
        (Phase::BeforeCommit, KillSource) => &[Killed],
        (Phase::BeforeCommit, StopSource) => &[Stopped],
        (Phase::BeforeCommit, _) => &[Source],
        (Phase::StateSent, KillSource) => &[Killed],
        (Phase::StateSent, StopSource) => &[Stopped],
        (Phase::StateSent, _) => &[Source, ForcedAtSource],
        (Phase::SourceCommitted, KillSource) => &[Killed],
        (Phase::SourceCommitted, StopSource) => &[Destination],
        (Phase::SourceCommitted, _) => &[ForcedAtSource],
        (Phase::CommitSent, KillSource | StopSource) => &[Destination],
        (Phase::CommitSent, KillDestination) => &[Killed, ForcedAtSource],
        (Phase::CommitSent, Silence | Reset) => &[Destination, DiscardedAtSource, ForcedAtSource],
        (Phase::CommitSent, StopDestination) => &[Stopped],
        (Phase::DestinationCommitted | Phase::DestinationRuns, KillSource | StopSource) => {
            &[Destination]
        }
        (Phase::DestinationCommitted | Phase::DestinationRuns, KillDestination) => {
            &[ForcedAtSource]
        }
        (Phase::DestinationCommitted | Phase::DestinationRuns, Silence | Reset) => {
            &[DiscardedAtSource]
        }
        (Phase::DestinationCommitted | Phase::DestinationRuns, StopDestination) => &[Stopped],
        (Phase::Confirmed, KillDestination) => &[Killed],
        (Phase::Confirmed, StopDestination) => &[Stopped],
        (Phase::Confirmed, _) => &[Destination],
    }
}

/// How long the held side waits at its point: enough for the test to act on the announcement.
const HOLD_MS: u32 = 1500;

#[derive(PartialEq, Eq, Debug)]
enum Side {
    Exited,
    Running,
    Unknown,
}

/// What a side settles into after the fault: exited, running, or (the source) paused unknown.
fn settle(p: &mut Pair) -> (Side, Side) {
    let deadline = Instant::now() + T;
    loop {
        let src = if p.src.has_exited() {
            Some(Side::Exited)
        } else {
            match state(&p.a.0, p.name).as_deref() {
                Some("running") => Some(Side::Running),
                Some(UNKNOWN) => Some(Side::Unknown),
                _ => None,
            }
        };
        let dst = if p.dst.has_exited() {
            Some(Side::Exited)
        } else {
            match state(&p.b.0, p.name).as_deref() {
                Some("running") => Some(Side::Running),
                _ => None,
            }
        };
        if let (Some(s), Some(d)) = (src, dst) {
            return (s, d);
        }
        assert!(Instant::now() < deadline, "the pair did not settle");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stderr_of(vm: &vmm_tests::VmProcess) -> String {
    vm.stderr.lock().unwrap().join("\n")
}

/// One row: a pair, a migration, `fault` when the held side reaches `point`; the outcome,
/// checked against the commit rule.
fn row(point: &'static str, fault: Fault) -> Outcome {
    let fp = Some(hold(point, HOLD_MS));
    let at_source = point.starts_with("source.");
    let mut p = if at_source {
        Pair::start("fm", fp, None)
    } else {
        Pair::start("fm", None, fp)
    };
    let migrate = p.migrate();
    let announcement = format!("fault point {point} reached");
    if at_source {
        p.src.wait_for_stderr(&announcement, T);
    } else {
        p.dst.wait_for_stderr(&announcement, T);
    }
    let stop = |dir: std::path::PathBuf| {
        let name = p.name;
        std::thread::spawn(move || vmm_cli(&dir, &["stop", name], T))
    };
    let stopping = match fault {
        Fault::KillSource => {
            p.src.signal(libc::SIGKILL);
            None
        }
        Fault::KillDestination => {
            p.dst.signal(libc::SIGKILL);
            None
        }
        Fault::Silence => {
            p.relay.set(Link::Silent);
            None
        }
        Fault::Reset => {
            p.relay.set(Link::Reset);
            None
        }
        Fault::StopSource => Some(stop(p.a.0.clone())),
        Fault::StopDestination => Some(stop(p.b.0.clone())),
    };
    let (code, migrate_err) = migrate.join().unwrap();
    if let Some(s) = stopping {
        let _ = s.join().unwrap();
    }
    let (src, dst) = settle(&mut p);
    let context = || {
        format!(
            "migrate exit {code:?}: {migrate_err}\n--- source stderr:\n{}\n--- destination stderr:\n{}",
            stderr_of(&p.src),
            stderr_of(&p.dst)
        )
    };
    match (src, dst) {
        (Side::Running, Side::Running) => panic!("two running copies\n{}", context()),
        (Side::Unknown, Side::Running) => {
            assert_eq!(code, Some(3), "{}", context());
            let (st, _, err) = vmm_cli(&p.a.0, &["resume", p.name, "--force"], T);
            assert!(!st.success(), "a second copy was resumed\n{}", context());
            assert!(err.contains("another process holds the disk"), "{err}");
            let (st, _, err) = vmm_cli(&p.a.0, &["stop", p.name], T);
            assert!(st.success(), "{err}");
            assert_source_intact(&p.b.0, &mut p.dst, p.name);
            Outcome::DiscardedAtSource
        }
        (Side::Unknown, Side::Exited) => {
            assert_eq!(code, Some(3), "{}", context());
            let (st, out, err) = vmm_cli(&p.a.0, &["resume", p.name, "--force"], T);
            assert!(st.success(), "{out}{err}\n{}", context());
            assert_source_intact(&p.a.0, &mut p.src, p.name);
            Outcome::ForcedAtSource
        }
        (Side::Running, Side::Exited) => {
            assert_source_intact(&p.a.0, &mut p.src, p.name);
            Outcome::Source
        }
        (Side::Exited, Side::Running) => {
            assert_source_intact(&p.b.0, &mut p.dst, p.name);
            Outcome::Destination
        }
        (Side::Exited, Side::Exited) => match fault {
            Fault::StopSource | Fault::StopDestination => Outcome::Stopped,
            Fault::KillSource => {
                // Only if the destination never committed: it discarded its half-built VM.
                let dst = stderr_of(&p.dst);
                assert!(dst.contains("nothing was started here"), "{}", context());
                Outcome::Killed
            }
            Fault::KillDestination => {
                // Only if the source had handed the guest over, confirmed.
                let src = stderr_of(&p.src);
                assert!(src.contains("migrated to"), "{}", context());
                Outcome::Killed
            }
            Fault::Silence | Fault::Reset => panic!("no copy left\n{}", context()),
        },
        (Side::Exited, Side::Unknown) | (_, Side::Unknown) => unreachable!(),
    }
}

#[test]
fn every_fault_at_every_point_leaves_exactly_one_copy() {
    if !require_kvm("every_fault_at_every_point_leaves_exactly_one_copy") {
        return;
    }
    let only: Option<String> = std::env::var("FAULT_MATRIX_ONLY").ok();
    let started = Instant::now();
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for &point in POINTS {
        if only.as_deref().is_some_and(|o| !point.contains(o)) {
            continue;
        }
        let mut cells = Vec::new();
        for fault in FAULTS {
            let t = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| row(point, fault)));
            let cell = match result {
                Ok(outcome) if allowed(phase(point), fault).contains(&outcome) => {
                    outcome.cell().to_string()
                }
                Ok(outcome) => {
                    failures.push(format!(
                        "{point} / {}: {:?}, the rule allows {:?}",
                        fault.label(),
                        outcome,
                        allowed(phase(point), fault)
                    ));
                    format!("**{}** (not allowed)", outcome.cell())
                }
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{point} / {}: {msg}", fault.label()));
                    "**FAILED**".to_string()
                }
            };
            eprintln!(
                "fault matrix: {point} / {}: {cell} ({:.1} s)",
                fault.label(),
                t.elapsed().as_secs_f64()
            );
            cells.push(cell);
        }
        table.push((point, cells));
    }
    println!(
        "\n| fault point | {} |",
        FAULTS.map(Fault::label).join(" | ")
    );
    println!("|---|{}", "---|".repeat(FAULTS.len()));
    for (point, cells) in &table {
        println!("| `{point}` | {} |", cells.join(" | "));
    }
    println!(
        "\nfault matrix: {} rows in {:.0} s",
        table.len() * FAULTS.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
