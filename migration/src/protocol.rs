//! The migration protocol (DESIGN.md section 5), source and destination sides, over any byte
//! stream (TCP, a Unix socket, an in-memory pipe in tests).
//!
//! ```text
//! source                                   destination
//!   preface (magic, version, mode) ------------>
//!   <------------------------------------ preface
//!   handshake of the mode (Noise NNpsk0 | TLS 1.3 | none): channel::secure_*
//!   ==== everything below is encrypted and authenticated (unless both ends are --insecure)
//!   <------------------------------------ Hello
//!   Hello ------------------------------------>
//!   Config ----------------------------------->  checks against its grants, builds the empty VM
//!   <------------------------------------ Accept | Error(why)
//!   Pages... RoundEnd (round 0: all non-zero pages; then dirty rounds)
//!   [pause] Pages... State ------------------>  restores
//!   <------------------------------------ Ready
//!   Commit ----------------------------------->  takes the disks, resumes the guest
//!   <------------------------------------ Resumed
//! ```
//! Before Commit any failure resumes the guest on the source; after Commit the source never
//! runs it again.

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelError, PROTOCOL_VERSION};
use crate::envelope;
use crate::wire::{self, FrameKind, WireError};

const HELLO_MAGIC: &str = "vmm-migration";

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub magic: String,
    pub version: u32,
    #[serde(default)]
    pub features: Vec<String>,
}

impl Hello {
    pub fn new() -> Self {
        Hello {
            magic: HELLO_MAGIC.into(),
            version: u32::from(PROTOCOL_VERSION),
            features: vec![],
        }
    }
}

impl Default for Hello {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the migration's I/O runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// This destination (its builder) turned the VM down.
    #[error("the VM was refused")]
    Refused(#[source] crate::vm::VmError),
    /// What the destination said when it gave up (its Error frame), as the source reports it.
    #[error("the destination reported: {0}")]
    Destination(String),
    #[error("on the source")]
    Source(#[source] crate::vm::VmError),
    #[error("{}; and the guest could not be resumed on the source: {}", crate::error_chain(.error), crate::error_chain(.resume))]
    NotResumed {
        error: Box<MigrationError>,
        resume: crate::vm::VmError,
    },
    #[error("on the destination")]
    Target(#[source] crate::vm::VmError),
    #[error("migration did not converge: {0}")]
    NotConverged(String),
    #[error("cancelled before the switchover; the guest runs on at the source")]
    Cancelled,
    #[error("timed out: the migration was not done within {0} s (--timeout); the guest runs on at the source")]
    TimedOut(u64),
    #[error("commit was sent but the destination did not confirm the resume: {0}; the source will not resume the guest (two copies would corrupt the disk); check the destination")]
    AfterCommit(String),
}

/// Both sides: exchange hellos (inside the secured channel) and check the peer's.
pub(crate) async fn exchange_hello<S>(
    stream: &mut S,
    i_speak_first: bool,
) -> Result<Hello, MigrationError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let send = envelope::seal(&Hello::new())?;
    if i_speak_first {
        wire::write_frame(stream, FrameKind::Hello, &send).await?;
    }
    let theirs: Hello = envelope::open(&wire::expect_frame(stream, FrameKind::Hello).await?)
        .map_err(|_| MigrationError::Protocol("garbled hello".into()))?;
    if theirs.magic != HELLO_MAGIC || theirs.version != u32::from(PROTOCOL_VERSION) {
        return Err(MigrationError::Protocol(format!(
            "hello of another protocol (version {})",
            theirs.version
        )));
    }
    if !i_speak_first {
        wire::write_frame(stream, FrameKind::Hello, &send).await?;
    }
    Ok(theirs)
}
