//! Where the outgoing migration of this VMM stands, shared between the migration worker (which
//! writes it) and the API server (which answers `vm.migration-progress` from it without asking
//! the VM's owner thread).

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::api::types::{
    ChMemoryTransmissionInfo, ChMigrationProgress, ChMigrationState, ChOngoingPhase,
    ChTransportationMode, MigrationOutcome, MigrationPhase, MigrationProgress,
};

/// What a migration was asked to do, for the Cloud Hypervisor view of its progress.
#[derive(Clone, Debug)]
pub(crate) struct MigrationPlan {
    pub(crate) downtime_ms: u64,
    pub(crate) transport: ChTransportationMode,
    pub(crate) memory_bytes: u64,
}

const PAGE: u64 = 4096;

#[derive(Default)]
pub(crate) struct MigrationStatus {
    inner: Mutex<Inner>,
}

struct Inner {
    progress: MigrationProgress,
    started: Option<Instant>,
    /// Set once a client has read the outcome of a finished migration.
    outcome_read: bool,
    plan: Option<MigrationPlan>,
    /// UNIX times of the start and of the end, milliseconds.
    begin_ms: u64,
    end_ms: Option<u64>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            progress: MigrationProgress::none(),
            started: None,
            outcome_read: false,
            plan: None,
            begin_ms: 0,
            end_ms: None,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    /// The progress in Cloud Hypervisor's fields (see [`ChMigrationProgress`]).
    fn cloud_hypervisor_view(&self) -> Option<ChMigrationProgress> {
        let plan = self.plan.as_ref()?;
        let p = &self.progress;
        let round = p.progress.as_ref();
        let snapshot_ms = self.end_ms.unwrap_or_else(unix_ms);
        let throttle = round.map_or(0, |r| r.throttle_percent);
        let ongoing = |phase| ChMigrationState::Ongoing {
            phase,
            vcpu_throttle_percent: throttle,
        };
        let failed = || {
            let msg = p
                .error
                .clone()
                .unwrap_or_else(|| "the migration failed".into());
            ChMigrationState::Failed {
                error_msg_debug: format!("{msg:?}"),
                error_msg: msg,
            }
        };
        let state = match (p.outcome, p.phase) {
            (MigrationOutcome::Completed, _) => ChMigrationState::Finished {},
            (MigrationOutcome::Cancelled, _) => ChMigrationState::Cancelled {},
            (MigrationOutcome::Failed, _) => failed(),
            // The commit went out and its confirmation is still awaited: not over yet.
            (MigrationOutcome::Unknown, Some(MigrationPhase::Committed)) => {
                ongoing(ChOngoingPhase::Completing)
            }
            // Over without a confirmation: the guest stays paused here (vm.resume is refused
            // unless forced), never a success.
            (MigrationOutcome::Unknown, _) => failed(),
            (_, Some(MigrationPhase::Memory)) => ongoing(ChOngoingPhase::MemoryPrecopy),
            (_, Some(MigrationPhase::Committed | MigrationPhase::Done)) => {
                ongoing(ChOngoingPhase::Completing)
            }
            (_, _) => ongoing(ChOngoingPhase::Starting),
        };
        let downtime_estimated_ms = match (&p.summary, round) {
            (Some(summary), _) => summary.downtime_ms.round() as u64,
            (None, Some(r)) if r.expected_downtime_ms > 0.0 => {
                r.expected_downtime_ms.round() as u64
            }
            _ => plan.downtime_ms,
        };
        let memory_transmission_info = match round {
            None => ChMemoryTransmissionInfo {
                memory_bytes_total: plan.memory_bytes,
                ..Default::default()
            },
            Some(r) => ChMemoryTransmissionInfo {
                memory_iteration: u64::from(r.round),
                memory_transmission_bps: r.rate_bytes_per_sec as u64,
                memory_bytes_total: plan.memory_bytes,
                memory_bytes_transmitted: r.bytes_sent,
                memory_bytes_remaining_iteration: r.remaining_bytes,
                memory_pages_4k_transmitted: r.pages_sent,
                memory_pages_4k_remaining_iteration: r.remaining_bytes / PAGE,
                memory_pages_constant_count: r.zero_pages,
                memory_dirty_rate_pps: (r.dirty_rate_bytes_per_sec / PAGE as f64) as u64,
            },
        };
        Some(ChMigrationProgress {
            timestamp_begin_ms: self.begin_ms,
            timestamp_snapshot_ms: snapshot_ms,
            timestamp_snapshot_relative_ms: snapshot_ms.saturating_sub(self.begin_ms),
            downtime_configured_ms: plan.downtime_ms,
            downtime_estimated_ms,
            transportation_mode: plan.transport.clone(),
            state,
            memory_transmission_info,
        })
    }
}

impl MigrationStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A migration to `destination` starts: the previous one's outcome is forgotten.
    pub(crate) fn start(&self, destination: &str, plan: MigrationPlan) {
        let mut s = self.lock();
        s.plan = Some(plan);
        s.begin_ms = unix_ms();
        s.end_ms = None;
        s.progress = MigrationProgress {
            outcome: MigrationOutcome::Active,
            phase: Some(MigrationPhase::Connecting),
            destination: Some(destination.to_string()),
            ..MigrationProgress::none()
        };
        s.started = Some(Instant::now());
        s.outcome_read = false;
    }

    /// A round's figures.
    pub(crate) fn round(&self, p: &migration::progress::Progress) {
        let mut s = self.lock();
        s.progress.phase = Some(MigrationPhase::Memory);
        s.progress.progress = Some(p.clone());
    }

    /// Commit is being sent.
    pub(crate) fn committed(&self) {
        self.lock().progress.phase = Some(MigrationPhase::Committed);
    }

    /// The destination did not confirm the commit: the outcome is unknown (still waited for).
    pub(crate) fn unconfirmed(&self, why: &str) {
        let mut s = self.lock();
        s.progress.outcome = MigrationOutcome::Unknown;
        s.progress.error = Some(why.to_string());
    }

    /// The migration ended.
    pub(crate) fn finish(
        &self,
        outcome: MigrationOutcome,
        summary: Option<migration::progress::Summary>,
        error: Option<String>,
    ) {
        let mut s = self.lock();
        s.progress.outcome = outcome;
        s.progress.phase = Some(MigrationPhase::Done);
        s.progress.elapsed_secs = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        s.progress.summary = summary;
        s.progress.error = error;
        s.end_ms = Some(unix_ms());
    }

    /// What `vm.migration-progress` answers; reading a finished migration's outcome is noted.
    pub(crate) fn snapshot(&self) -> MigrationProgress {
        let mut s = self.lock();
        let mut p = s.progress.clone();
        p.cloud_hypervisor = s.cloud_hypervisor_view();
        match p.outcome {
            MigrationOutcome::Active => {
                p.elapsed_secs = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64())
            }
            MigrationOutcome::None => {}
            _ => s.outcome_read = true,
        }
        p
    }

    /// Whether the outcome of the last migration has been read, or there is none to read.
    pub(crate) fn outcome_read(&self) -> bool {
        let s = self.lock();
        s.outcome_read || s.progress.outcome == MigrationOutcome::None
    }
}
