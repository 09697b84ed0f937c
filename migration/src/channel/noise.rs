//! The pre-shared-key handshake: Noise `NNpsk0_25519_AESGCM_SHA256` (snow, ring underneath).
//! Both ends mix the PSK in before anything else, so each handshake message is authenticated
//! by the key; ephemeral X25519 keys give every connection fresh session keys (forward
//! secrecy). The handshake's split gives one key per direction, which the record layer
//! ([`crate::record`]) uses exactly as a Noise transport would: AES-256-GCM, counter nonces.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ChannelError;
use crate::key::Key;
use crate::record::RecordKeys;

const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Largest Noise message.
const MAX_MESSAGE: usize = 65535;
const LEN_BYTES: usize = 2;

fn handshake(
    key: &Key,
    prologue: &[u8],
    initiator: bool,
) -> Result<snow::HandshakeState, ChannelError> {
    let psk = key.noise_psk();
    let builder = snow::Builder::new(PATTERN.parse().map_err(ChannelError::Noise)?)
        .prologue(prologue)
        .and_then(|b| b.psk(0, &psk))
        .map_err(ChannelError::Noise)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(ChannelError::Noise)
}

async fn write_message<S: AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(LEN_BYTES + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await?;
    s.flush().await
}

async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Vec<u8>> {
    let mut len = [0u8; LEN_BYTES];
    s.read_exact(&mut len).await?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

/// The session keys after a completed handshake: the initiator sends with the first.
fn keys(mut hs: snow::HandshakeState, initiator: bool) -> RecordKeys {
    let (i_to_r, r_to_i) = hs.dangerously_get_raw_split();
    if initiator {
        RecordKeys {
            send: i_to_r,
            recv: r_to_i,
        }
    } else {
        RecordKeys {
            send: r_to_i,
            recv: i_to_r,
        }
    }
}

/// Source side (initiator) of the handshake.
pub(crate) async fn initiate<S>(
    s: &mut S,
    key: &Key,
    prologue: &[u8],
) -> Result<RecordKeys, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = handshake(key, prologue, true)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(ChannelError::Noise)?;
    write_message(s, &buf[..n])
        .await
        .map_err(ChannelError::Handshake)?;
    let reply = read_message(s).await.map_err(|e| match e.kind() {
        // The destination closes without a word when our first message does not verify.
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ChannelError::KeyMismatch,
        _ => ChannelError::Handshake(e),
    })?;
    hs.read_message(&reply, &mut buf)
        .map_err(|_| ChannelError::KeyMismatch)?;
    Ok(keys(hs, true))
}

/// Destination side (responder) of the handshake.
pub(crate) async fn respond<S>(
    s: &mut S,
    key: &Key,
    prologue: &[u8],
) -> Result<RecordKeys, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = handshake(key, prologue, false)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let first = read_message(s).await.map_err(ChannelError::Handshake)?;
    // A source without the key fails here; it learns nothing but that the connection closed.
    hs.read_message(&first, &mut buf)
        .map_err(|_| ChannelError::KeyMismatch)?;
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(ChannelError::Noise)?;
    write_message(s, &buf[..n])
        .await
        .map_err(ChannelError::Handshake)?;
    Ok(keys(hs, false))
}
