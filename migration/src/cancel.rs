//! Cancelling a migration from outside (an API call, Ctrl-C on `vmm migrate`, `vmm stop`), with
//! the commit rule built in: once the source has decided to commit, a cancel is refused, and
//! once a cancel is in, the source does not commit.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Cancelled,
    Committed,
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

/// What the migration watches.
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

impl Canceller {
    /// Asks the migration to stop; refused after commit. Cancelling twice is fine.
    pub fn cancel(&self) -> Result<(), AlreadyCommitted> {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if *phase == Phase::Committed {
            return Err(AlreadyCommitted);
        }
        *phase = Phase::Cancelled;
        let _ = self.tx.send(true);
        Ok(())
    }
}

impl CancelToken {
    /// A token that never fires (a migration nobody can cancel, in tests).
    pub fn never() -> Self {
        cancel_pair().1
    }

    /// Resolves once a cancel has come in.
    pub async fn cancelled(&mut self) {
        if self.rx.wait_for(|c| *c).await.is_err() {
            // The canceller is gone: nobody can cancel any more.
            std::future::pending::<()>().await;
        }
    }

    /// Moves to the committed phase, unless a cancel came in first (then false).
    pub fn commit(&self) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if *phase == Phase::Cancelled {
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
    }
}
