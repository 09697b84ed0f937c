//! The migration protocol (DESIGN.md section 5), source and destination sides, over any byte
//! stream (TCP, a Unix socket, an in-memory pipe in tests).
//!
//! ```text
//! source                                   destination
//!   Hello ------------------------------------>
//!   <------------------------------------ Hello (auth required?)
//!   <------------------------------------ Challenge(nonce_d)        } with a key
//!   Response(proof_s, nonce_s) --------------->                      }
//!   <------------------------------------ Response(proof_d)         }
//!   Config ----------------------------------->  checks, builds the empty VM
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

use crate::auth::{self, Key};
use crate::envelope;
use crate::wire::{self, FrameKind, WireError};

pub const PROTOCOL_VERSION: u32 = 1;
const HELLO_MAGIC: &str = "vmm-migration";

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub magic: String,
    pub version: u32,
    #[serde(default)]
    pub auth_required: bool,
    #[serde(default)]
    pub features: Vec<String>,
}

impl Hello {
    pub fn new(auth_required: bool) -> Self {
        Hello {
            magic: HELLO_MAGIC.into(),
            version: PROTOCOL_VERSION,
            auth_required,
            features: vec![],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    #[error("the peer is not a vmm migration endpoint or speaks protocol {0} (this is {PROTOCOL_VERSION})")]
    Protocol(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("the destination refused the VM: {0}")]
    Refused(String),
    #[error("the source VM: {0}")]
    Source(String),
    #[error("the destination VM: {0}")]
    Target(String),
    #[error("migration did not converge: {0}")]
    NotConverged(String),
    #[error("cancelled")]
    Cancelled,
    #[error("commit was sent but the destination did not confirm the resume: {0}; the source will not resume the guest (two copies would corrupt the disk); check the destination")]
    AfterCommit(String),
}

/// Both sides: exchange hellos and check the peer speaks our protocol.
pub(crate) async fn exchange_hello<S>(
    stream: &mut S,
    mine: &Hello,
    i_speak_first: bool,
) -> Result<Hello, MigrationError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let send = envelope::seal(mine)?;
    if i_speak_first {
        wire::write_frame(stream, FrameKind::Hello, &send).await?;
    }
    let theirs: Hello = envelope::open(&wire::expect_frame(stream, FrameKind::Hello).await?)
        .map_err(|_| MigrationError::Protocol("garbled hello".into()))?;
    if theirs.magic != HELLO_MAGIC || theirs.version != PROTOCOL_VERSION {
        return Err(MigrationError::Protocol(format!(
            "{} v{}",
            theirs.magic, theirs.version
        )));
    }
    if !i_speak_first {
        wire::write_frame(stream, FrameKind::Hello, &send).await?;
    }
    Ok(theirs)
}

/// Source side of the mutual challenge-response.
pub(crate) async fn authenticate_source<S>(
    stream: &mut S,
    key: Option<&Key>,
    auth_required: bool,
) -> Result<(), MigrationError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match (key, auth_required) {
        (None, false) => Ok(()),
        (None, true) => Err(MigrationError::Auth("the destination requires a key: pass --auth-key-file".into())),
        (Some(_), false) => Err(MigrationError::Auth(
            "the destination does not authenticate its sources (started without --auth-key-file); refusing to send guest memory to it".into(),
        )),
        (Some(key), true) => {
            let nonce_d = wire::expect_frame(stream, FrameKind::Challenge).await?;
            if nonce_d.len() != auth::NONCE_LEN {
                return Err(MigrationError::Auth("malformed challenge".into()));
            }
            let nonce_s = auth::nonce().map_err(|e| MigrationError::Auth(e.to_string()))?;
            let mut resp = key.prove("source", &nonce_d).to_vec();
            resp.extend_from_slice(&nonce_s);
            wire::write_frame(stream, FrameKind::Response, &resp).await?;
            let proof_d = wire::expect_frame(stream, FrameKind::Response).await.map_err(|e| match e {
                WireError::Remote(m) => MigrationError::Auth(m),
                other => MigrationError::Wire(other),
            })?;
            if !key.verify("destination", &nonce_s, &proof_d) {
                return Err(MigrationError::Auth("the destination does not hold the same key".into()));
            }
            Ok(())
        }
    }
}

/// Destination side of the mutual challenge-response.
pub(crate) async fn authenticate_destination<S>(
    stream: &mut S,
    key: Option<&Key>,
) -> Result<(), MigrationError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(key) = key else { return Ok(()) };
    let nonce_d = auth::nonce().map_err(|e| MigrationError::Auth(e.to_string()))?;
    wire::write_frame(stream, FrameKind::Challenge, &nonce_d).await?;
    let resp = wire::expect_frame(stream, FrameKind::Response).await?;
    if resp.len() != auth::MAC_LEN + auth::NONCE_LEN
        || !key.verify("source", &nonce_d, &resp[..auth::MAC_LEN])
    {
        let _ = wire::write_frame(
            stream,
            FrameKind::Error,
            b"authentication failed: wrong key",
        )
        .await;
        return Err(MigrationError::Auth(
            "the source does not hold the same key".into(),
        ));
    }
    let proof_d = key.prove("destination", &resp[auth::MAC_LEN..]);
    wire::write_frame(stream, FrameKind::Response, &proof_d).await?;
    Ok(())
}
