//! Cancelling a migration from outside (an API call, Ctrl-C on `vmm migrate`, `vmm stop`, the
//! guest ending), with the commit rule built in: once a side has committed, a cancel is
//! refused, and once a cancel is in, that side does not commit. After the commit only the
//! operator's explicit decision ([`Canceller::abandon`]) ends a side's wait for its peer.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Cancelled, with the reason when it is not the operator's request (the guest ended).
    Cancelled(Option<String>),
    Committed,
    /// Committed, then the operator decided the outcome (resumed or discarded the guest).
    Abandoned,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the migration has committed: the guest now runs at the destination and can no longer be brought back by a cancel")]
pub struct AlreadyCommitted;

/// The handle that cancels.
#[derive(Clone)]
pub struct Canceller {
    phase: Arc<Mutex<Phase>>,
    tx: Arc<watch::Sender<bool>>,
}

/// What the migration watches (a clone watches the same migration).
#[derive(Clone)]
pub struct CancelToken {
    phase: Arc<Mutex<Phase>>,
    rx: watch::Receiver<bool>,
}

pub fn cancel_pair() -> (Canceller, CancelToken) {
    let phase = Arc::new(Mutex::new(Phase::Running));
    let (tx, rx) = watch::channel(false);
    (
        Canceller {
            phase: phase.clone(),
            tx: Arc::new(tx),
        },
        CancelToken { phase, rx },
    )
}

fn lock(phase: &Mutex<Phase>) -> std::sync::MutexGuard<'_, Phase> {
    phase.lock().unwrap_or_else(|e| e.into_inner())
}

impl Canceller {
    /// Asks the migration to stop; refused after commit. Cancelling twice is fine.
    pub fn cancel(&self) -> Result<(), AlreadyCommitted> {
        self.cancel_with(None)
    }

    /// Cancels because of `reason` (the guest reset, powered off, failed): the migration
    /// reports that instead of a cancel by request.
    pub fn cancel_because(&self, reason: impl Into<String>) -> Result<(), AlreadyCommitted> {
        self.cancel_with(Some(reason.into()))
    }

    fn cancel_with(&self, reason: Option<String>) -> Result<(), AlreadyCommitted> {
        let mut phase = lock(&self.phase);
        match &*phase {
            Phase::Committed | Phase::Abandoned => return Err(AlreadyCommitted),
            // The first reason stays.
            Phase::Cancelled(_) => {}
            Phase::Running => *phase = Phase::Cancelled(reason),
        }
        let _ = self.tx.send(true);
        Ok(())
    }

    /// After the commit: the operator has decided (resumed the guest here, or discarded
    /// it), so the migration stops waiting for its peer. Before the commit it is a cancel.
    pub fn abandon(&self) {
        let mut phase = lock(&self.phase);
        match &*phase {
            Phase::Running => *phase = Phase::Cancelled(None),
            Phase::Committed => *phase = Phase::Abandoned,
            _ => {}
        }
        let _ = self.tx.send(true);
    }

    /// Whether this side has committed (it may no longer discard or resume on its own).
    pub fn is_committed(&self) -> bool {
        matches!(*lock(&self.phase), Phase::Committed | Phase::Abandoned)
    }
}

impl CancelToken {
    /// A token that never fires (a migration nobody can cancel, in tests).
    pub fn never() -> Self {
        cancel_pair().1
    }

    /// Resolves once a cancel (before commit) or an abandon (after it) has come in.
    pub async fn cancelled(&mut self) {
        if self.rx.wait_for(|c| *c).await.is_err() {
            // The canceller is gone: nobody can cancel any more.
            std::future::pending::<()>().await;
        }
    }

    /// Whether a cancel (before commit) or an abandon (after it) has come in.
    pub fn is_cancelled(&self) -> bool {
        matches!(*lock(&self.phase), Phase::Cancelled(_) | Phase::Abandoned)
    }

    /// Why the migration was cancelled, when it was not a request (the guest ended).
    pub fn reason(&self) -> Option<String> {
        match &*lock(&self.phase) {
            Phase::Cancelled(r) => r.clone(),
            _ => None,
        }
    }

    /// Moves to the committed phase, unless a cancel came in first (then false).
    pub fn commit(&self) -> bool {
        let mut phase = lock(&self.phase);
        if matches!(*phase, Phase::Cancelled(_)) {
            return false;
        }
        *phase = Phase::Committed;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_and_commit_exclude_each_other() {
        let (c, mut t) = cancel_pair();
        c.cancel().unwrap();
        t.cancelled().await;
        assert!(!t.commit(), "no commit after a cancel");
        let (c, t) = cancel_pair();
        assert!(t.commit());
        assert_eq!(c.cancel(), Err(AlreadyCommitted));
        assert!(c.is_committed());
    }

    #[tokio::test]
    async fn abandon_ends_the_wait_after_the_commit_and_keeps_it_committed() {
        let (c, mut t) = cancel_pair();
        assert!(t.commit());
        c.abandon();
        t.cancelled().await;
        assert_eq!(c.cancel(), Err(AlreadyCommitted));
        assert!(c.is_committed());
    }

    #[tokio::test]
    async fn a_cancel_keeps_its_first_reason() {
        let (c, t) = cancel_pair();
        c.cancel_because("the guest reset").unwrap();
        c.cancel().unwrap();
        assert_eq!(t.reason().as_deref(), Some("the guest reset"));
        assert!(!t.commit());
    }
}
