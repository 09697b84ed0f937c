//! The secured migration channel (docs/design.md section 7): every byte of the migration after the
//! handshake is encrypted and integrity-protected with keys from that handshake.
//!
//! A connection starts with a plaintext preface each way (magic, protocol version, security
//! mode), so that two ends configured differently fail with a message that says so instead of
//! a garbled handshake; the mode is fixed by each end's own options, so a peer (or anyone on
//! the path) cannot talk a secured end down to plaintext: it can only make the connection
//! fail. Then, by mode:
//! - [`Mode::Psk`]: a Noise `NNpsk0` handshake keyed by the pre-shared key ([`noise`]), with
//!   both prefaces as its prologue, so tampering with them is detected;
//! - [`Mode::Tls`]: mutual TLS 1.3 ([`tls`]); once both certificates are checked, the session's
//!   keys come from the TLS exporter (RFC 8446 section 7.5) and TLS steps aside;
//! - [`Mode::Insecure`]: nothing (both ends chose `--insecure`, or a Unix socket whose peer the
//!   kernel vouches for).
//!
//! Either way the stream then carries the records of [`crate::record`] (AES-256-GCM with the
//! handshake's keys, one per direction), framed by [`crate::wire`], so the migration's data
//! path is the same code, with one copy of each page, whatever authenticated it.

pub mod noise;
pub mod tls;

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::key::Key;
use crate::record::{Opener, RecordKeys, Sealer};
use crate::wire::{FrameReader, FrameWriter};

const MAGIC: &[u8; 7] = b"VMMMIGR";
/// Version of the migration protocol this build speaks.
pub const PROTOCOL_VERSION: u8 = 2;
const PREFACE_LEN: usize = MAGIC.len() + 2;

/// How a connection is secured; both ends must choose the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Insecure = 0,
    Psk = 1,
    Tls = 2,
}

impl Mode {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Mode::Insecure),
            1 => Some(Mode::Psk),
            2 => Some(Mode::Tls),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Insecure => "an unencrypted, unauthenticated stream (--insecure)",
            Mode::Psk => "a pre-shared key (--auth-key-file)",
            Mode::Tls => "mutual TLS (--tls-dir)",
        })
    }
}

/// How the source secures its connection.
#[derive(Clone)]
pub enum SourceSecurity {
    Insecure,
    Psk(Key),
    Tls {
        config: Arc<rustls::ClientConfig>,
        /// The name the destination's certificate must carry.
        server_name: tls::ServerName<'static>,
    },
}

/// How the destination secures the connections it accepts.
#[derive(Clone)]
pub enum DestinationSecurity {
    Insecure,
    Psk(Key),
    Tls(Arc<rustls::ServerConfig>),
}

impl SourceSecurity {
    pub fn mode(&self) -> Mode {
        match self {
            SourceSecurity::Insecure => Mode::Insecure,
            SourceSecurity::Psk(_) => Mode::Psk,
            SourceSecurity::Tls { .. } => Mode::Tls,
        }
    }
}

impl DestinationSecurity {
    pub fn mode(&self) -> Mode {
        match self {
            DestinationSecurity::Insecure => Mode::Insecure,
            DestinationSecurity::Psk(_) => Mode::Psk,
            DestinationSecurity::Tls(_) => Mode::Tls,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the connection failed during the handshake")]
    Handshake(#[source] io::Error),
    #[error("the peer is not a vmm migration endpoint")]
    NotMigrationPeer,
    #[error("the peer speaks migration protocol {theirs}, this vmm speaks {PROTOCOL_VERSION}: use the same vmm version on both hosts")]
    Version { theirs: u8 },
    #[error(
        "the {peer} requires {theirs}, but this end uses {ours}: give both ends the same option"
    )]
    ModeMismatch {
        peer: &'static str,
        ours: Mode,
        theirs: Mode,
    },
    #[error("authentication failed: the peer does not hold the same pre-shared key")]
    KeyMismatch,
    #[error("authentication failed: TLS handshake")]
    Tls(#[source] io::Error),
    #[error("authentication failed: the destination rejected this end's TLS certificate ({0:?})")]
    CertificateRejected(rustls::AlertDescription),
    #[error("cannot set up the Noise handshake")]
    Noise(#[source] snow::Error),
}

/// A connection's byte stream (TCP, a Unix socket, an in-memory pipe in tests).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

pub type Reader = FrameReader<ReadHalf<Box<dyn Transport>>>;
pub type Writer = FrameWriter<WriteHalf<Box<dyn Transport>>>;

/// A connection after its handshake: frames in, frames out, each in its own record.
pub struct Channel {
    pub reader: Reader,
    pub writer: Writer,
}

impl Channel {
    fn new(io: Box<dyn Transport>, keys: Option<RecordKeys>) -> Self {
        let (r, w) = tokio::io::split(io);
        let (send, recv) = match &keys {
            Some(k) => (Some(&k.send), Some(&k.recv)),
            None => (None, None),
        };
        Channel {
            reader: FrameReader::new(r, Opener::new(recv)),
            writer: FrameWriter::new(w, Sealer::new(send)),
        }
    }
}

fn preface(mode: Mode) -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..MAGIC.len()].copy_from_slice(MAGIC);
    p[MAGIC.len()] = PROTOCOL_VERSION;
    p[MAGIC.len() + 1] = mode as u8;
    p
}

/// Checks a peer's preface and returns its mode.
fn parse_preface(p: &[u8; PREFACE_LEN]) -> Result<Mode, ChannelError> {
    if &p[..MAGIC.len()] != MAGIC {
        return Err(ChannelError::NotMigrationPeer);
    }
    let version = p[MAGIC.len()];
    if version != PROTOCOL_VERSION {
        return Err(ChannelError::Version { theirs: version });
    }
    Mode::from_u8(p[MAGIC.len() + 1]).ok_or(ChannelError::NotMigrationPeer)
}

async fn read_preface<S: AsyncRead + Unpin>(s: &mut S) -> Result<[u8; PREFACE_LEN], ChannelError> {
    let mut p = [0u8; PREFACE_LEN];
    s.read_exact(&mut p).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ChannelError::NotMigrationPeer,
        _ => ChannelError::Handshake(e),
    })?;
    Ok(p)
}

async fn write_preface<S: AsyncWrite + Unpin>(s: &mut S, p: &[u8]) -> Result<(), ChannelError> {
    s.write_all(p).await.map_err(ChannelError::Handshake)?;
    s.flush().await.map_err(ChannelError::Handshake)
}

/// The source's side: prefaces, then the handshake of its mode.
pub async fn secure_source(
    mut s: Box<dyn Transport>,
    security: &SourceSecurity,
) -> Result<Channel, ChannelError> {
    let ours = security.mode();
    let mine = preface(ours);
    write_preface(&mut s, &mine).await?;
    let theirs_bytes = read_preface(&mut s).await?;
    let theirs = parse_preface(&theirs_bytes)?;
    if theirs != ours {
        return Err(ChannelError::ModeMismatch {
            peer: "destination",
            ours,
            theirs,
        });
    }
    let keys = match security {
        SourceSecurity::Insecure => None,
        SourceSecurity::Psk(key) => {
            let prologue = [&mine[..], &theirs_bytes[..]].concat();
            Some(noise::initiate(&mut s, key, &prologue).await?)
        }
        SourceSecurity::Tls {
            config,
            server_name,
        } => {
            let (io, keys) = tls::connect(s, config.clone(), server_name.clone()).await?;
            s = io;
            Some(keys)
        }
    };
    Ok(Channel::new(s, keys))
}

/// The destination's side: prefaces, then the handshake of its mode. A peer whose preface is
/// wrong gets nothing back but our own preface (which says only which mode we want).
pub async fn secure_destination(
    mut s: Box<dyn Transport>,
    security: &DestinationSecurity,
) -> Result<Channel, ChannelError> {
    let ours = security.mode();
    let theirs_bytes = read_preface(&mut s).await?;
    let theirs = parse_preface(&theirs_bytes)?;
    let mine = preface(ours);
    write_preface(&mut s, &mine).await?;
    if theirs != ours {
        return Err(ChannelError::ModeMismatch {
            peer: "source",
            ours,
            theirs,
        });
    }
    let keys = match security {
        DestinationSecurity::Insecure => None,
        DestinationSecurity::Psk(key) => {
            let prologue = [&theirs_bytes[..], &mine[..]].concat();
            Some(noise::respond(&mut s, key, &prologue).await?)
        }
        DestinationSecurity::Tls(config) => {
            let (io, keys) = tls::accept(s, config.clone()).await?;
            s = io;
            Some(keys)
        }
    };
    Ok(Channel::new(s, keys))
}

/// The TLS alert a peer ended the session with, when it is about this end's certificate (the
/// peer's check of it failed: another CA, or none).
pub(crate) fn certificate_rejection(e: &io::Error) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateRequired
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::DecryptError),
        ) => Some(*a),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
