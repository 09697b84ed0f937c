//! Where the outgoing migration of this VMM stands, shared between the migration worker (which
//! writes it) and the API server (which answers `vm.migration-progress` from it without asking
//! the VM's owner thread).

use std::sync::Mutex;
use std::time::Instant;

use crate::api::types::{MigrationOutcome, MigrationPhase, MigrationProgress};

#[derive(Default)]
pub struct MigrationStatus {
    inner: Mutex<Inner>,
}

struct Inner {
    progress: MigrationProgress,
    started: Option<Instant>,
    /// Set once a client has read the outcome of a finished migration.
    outcome_read: bool,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            progress: MigrationProgress::none(),
            started: None,
            outcome_read: false,
        }
    }
}

impl MigrationStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A migration to `destination` starts: the previous one's outcome is forgotten.
    pub fn start(&self, destination: &str) {
        let mut s = self.lock();
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
    pub fn round(&self, p: &migration::progress::Progress) {
        let mut s = self.lock();
        s.progress.phase = Some(MigrationPhase::Memory);
        s.progress.progress = Some(p.clone());
    }

    /// Commit is being sent.
    pub fn committed(&self) {
        self.lock().progress.phase = Some(MigrationPhase::Committed);
    }

    /// The destination did not confirm the commit: the outcome is unknown (still waited for).
    pub fn unconfirmed(&self, why: &str) {
        let mut s = self.lock();
        s.progress.outcome = MigrationOutcome::Unknown;
        s.progress.error = Some(why.to_string());
    }

    /// The migration ended.
    pub fn finish(
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
    }

    /// What `vm.migration-progress` answers; reading a finished migration's outcome is noted.
    pub fn snapshot(&self) -> MigrationProgress {
        let mut s = self.lock();
        let mut p = s.progress.clone();
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
    pub fn outcome_read(&self) -> bool {
        let s = self.lock();
        s.outcome_read || s.progress.outcome == MigrationOutcome::None
    }
}
