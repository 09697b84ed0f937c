//! The migration protocol (docs/design.md section 5), source and destination sides, over
//! connections secured by [`crate::channel`] and framed by [`crate::wire`].
//!
//! ```text
//! source                                   destination
//!   preface (magic, version, mode) ------------>
//!   <------------------------------------ preface
//!   handshake of the mode (Noise NNpsk0 | TLS 1.3 | none): channel::secure_*
//!   ==== everything below is encrypted and authenticated (unless both ends are --insecure)
//!   Hello (session id, connections N) -------->
//!   <------------------------------------ Hello
//!   Config ----------------------------------->  checks against its grants, builds the empty VM
//!   <------------------------------------ Accept | Error(why)
//!   [N-1 more connections, each: preface, handshake, Join(session id, index)]
//!   on every connection: Pages... RoundEnd   (round 0: all non-zero pages; then dirty rounds;
//!                                             a page always travels on the same connection)
//!   [pause] last Pages; extra connections: Done
//!   State (on the first connection) -------->  restores, once every connection is Done
//!   <------------------------------------ Ready (its restore time)
//!   Commit ----------------------------------->  takes the disks, resumes the guest
//!   <------------------------------------ Resumed (its resume time)
//! ```
//! Exactly one copy of the guest, whatever is lost:
//!
//! ```text
//! source:       Running --pause--> Paused --send Commit--> Committed --Resumed--> Gone (success)
//!                  ^                  |                        |
//!                  +---any failure----+      no Resumed within io-timeout / connection ended
//!                  (resumed as it was)                         v
//!                                   Unknown (paused, intact, disks released; a late Resumed
//!                                   still succeeds) --operator: resume --force (disks re-taken
//!                                   first, refused while held) | stop (discard)-->
//! destination:  Waiting --Hello..State--> Restored --read Commit--> Committed --disks taken
//!                  |                         |                      (retried)--> Running
//!                  +---any failure, stop-----+--> discarded         a stop waits for Running
//! ```
//! Before Commit any failure resumes the guest on the source; after sending Commit the source
//! never runs it again on its own; after reading Commit the destination never discards it.

use serde::{Deserialize, Serialize};

use std::future::Future;
use std::pin::Pin;

use crate::channel::{Channel, ChannelError, PROTOCOL_VERSION};
use crate::envelope;
use crate::wire::WireError;

const HELLO_MAGIC: &str = "vmm-migration";
/// Connections one migration may use at most.
pub const MAX_CONNECTIONS: u32 = 128;
/// Length of the random id that binds a migration's extra connections to it.
pub(crate) const SESSION_LEN: usize = 16;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Hello {
    pub magic: String,
    pub version: u32,
    #[serde(default)]
    pub features: Vec<String>,
    /// The source's: how many connections carry the migration (1 to [`MAX_CONNECTIONS`]).
    #[serde(default = "one")]
    pub connections: u32,
    /// The source's: the id each extra connection presents in its Join frame.
    #[serde(default)]
    pub session: Vec<u8>,
    /// The source's: zstd level of compressed page frames, if any.
    #[serde(default)]
    pub compress: Option<i32>,
}

fn one() -> u32 {
    1
}

impl Hello {
    pub fn new() -> Self {
        Hello {
            magic: HELLO_MAGIC.into(),
            version: u32::from(PROTOCOL_VERSION),
            connections: 1,
            ..Default::default()
        }
    }
}

/// Boxed futures for the connection traits below (they are called through `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens one more connection to the destination, secured like the first one.
pub trait Connector: Send + Sync {
    fn connect(&self) -> BoxFuture<'_, Result<Channel, MigrationError>>;
}

/// Accepts one more authenticated connection from the source.
pub trait Acceptor: Send {
    fn accept(&mut self) -> BoxFuture<'_, Result<Channel, MigrationError>>;
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
    /// The guest reset, powered off or failed while it was being migrated: the migration was
    /// cancelled and the VM ends as its guest asked.
    #[error(
        "the guest ended during the migration ({0}); the migration was cancelled before the commit"
    )]
    GuestEnded(String),
    #[error("timed out: the migration was not done within {0} s (--timeout); the guest runs on at the source")]
    TimedOut(u64),
    /// Commit was sent (or its sending failed half-way) and the destination's Resumed did not
    /// arrive: the guest may run there. The source keeps it paused, intact, until its operator
    /// decides (`vmm resume NAME --force` or `vmm stop NAME`).
    #[error("commit was sent but the destination did not confirm the resume: {0}; the outcome is unknown: the guest stays paused here, intact, and runs nowhere unless the destination has it. Check the destination: if it runs the guest, discard this copy with `vmm stop`; if not, resume it here with `vmm resume --force`")]
    CommitUnknown(String),
}

/// Checks a peer's hello.
pub(crate) fn check_hello(payload: &[u8]) -> Result<Hello, MigrationError> {
    let theirs: Hello =
        envelope::open(payload).map_err(|_| MigrationError::Protocol("garbled hello".into()))?;
    if theirs.magic != HELLO_MAGIC || theirs.version != u32::from(PROTOCOL_VERSION) {
        return Err(MigrationError::Protocol(format!(
            "hello of another protocol (version {})",
            theirs.version
        )));
    }
    if theirs.connections == 0 || theirs.connections > MAX_CONNECTIONS {
        return Err(MigrationError::Protocol(format!(
            "{} connections (1 to {MAX_CONNECTIONS})",
            theirs.connections
        )));
    }
    if theirs.connections > 1 && theirs.session.len() != SESSION_LEN {
        return Err(MigrationError::Protocol("no session id".into()));
    }
    if let Some(level) = theirs.compress {
        if !(1..=19).contains(&level) {
            return Err(MigrationError::Protocol(format!(
                "zstd level {level} (1 to 19)"
            )));
        }
    }
    Ok(theirs)
}

/// A Join frame's payload: the session id, then the connection's index (u32 le).
pub(crate) fn join_payload(session: &[u8], index: u32) -> Vec<u8> {
    [session, &index.to_le_bytes()].concat()
}

/// Parses a Join payload for `session`; returns the index.
pub(crate) fn parse_join(payload: &[u8], session: &[u8]) -> Option<u32> {
    if payload.len() != session.len() + 4 || &payload[..session.len()] != session {
        return None;
    }
    Some(u32::from_le_bytes(
        payload[session.len()..].try_into().ok()?,
    ))
}
