//! The pre-shared-key channel: a Noise `NNpsk0` handshake (snow, AES-GCM through ring) and the
//! record layer that carries the migration stream after it.
//!
//! `NNpsk0`: both ends mix the PSK into the handshake before anything else, so each message
//! of the handshake is authenticated by the key; ephemeral X25519 keys give each migration
//! fresh session keys (forward secrecy). Transport: one record per Noise message,
//! `[length: u16 be][ciphertext + 16-byte tag]`; each direction has its own key and an
//! implicit counter nonce, so a record that is altered, replayed, reordered or dropped fails
//! to decrypt and ends the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::ChannelError;
use crate::key::Key;

const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Largest Noise message.
const MAX_MESSAGE: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext carried by one full record.
pub(crate) const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG_LEN;
const LEN_BYTES: usize = 2;

/// The error a record that fails to decrypt turns into, inside an `io::Error` of kind
/// `InvalidData`; [`crate::wire::WireError`] recognises it.
#[derive(Debug, thiserror::Error)]
#[error("a record failed its integrity check (altered, replayed, reordered or dropped in transit, or sent with another key)")]
pub struct IntegrityError;

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

/// Source side (initiator) of the handshake.
pub(crate) async fn initiate<S>(
    mut s: S,
    key: &Key,
    prologue: &[u8],
) -> Result<NoiseStream<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = handshake(key, prologue, true)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(ChannelError::Noise)?;
    write_message(&mut s, &buf[..n])
        .await
        .map_err(ChannelError::Handshake)?;
    let reply = read_message(&mut s).await.map_err(|e| match e.kind() {
        // The destination closes without a word when our first message does not verify.
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ChannelError::KeyMismatch,
        _ => ChannelError::Handshake(e),
    })?;
    hs.read_message(&reply, &mut buf)
        .map_err(|_| ChannelError::KeyMismatch)?;
    let state = hs.into_transport_mode().map_err(ChannelError::Noise)?;
    Ok(NoiseStream::new(s, state))
}

/// Destination side (responder) of the handshake.
pub(crate) async fn respond<S>(
    mut s: S,
    key: &Key,
    prologue: &[u8],
) -> Result<NoiseStream<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = handshake(key, prologue, false)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let first = read_message(&mut s)
        .await
        .map_err(ChannelError::Handshake)?;
    // A source without the key fails here; it learns nothing but that the connection closed.
    hs.read_message(&first, &mut buf)
        .map_err(|_| ChannelError::KeyMismatch)?;
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(ChannelError::Noise)?;
    write_message(&mut s, &buf[..n])
        .await
        .map_err(ChannelError::Handshake)?;
    let state = hs.into_transport_mode().map_err(ChannelError::Noise)?;
    Ok(NoiseStream::new(s, state))
}

/// The migration stream after the handshake: plaintext in, sealed records out (and back).
/// Writes are buffered into records of up to [`MAX_PLAINTEXT`] bytes; `flush` seals a short
/// one, so every frame the protocol writes is followed by a flush.
pub struct NoiseStream<S> {
    inner: S,
    state: snow::TransportState,
    /// Plaintext not sealed yet.
    plain_out: Vec<u8>,
    /// A sealed record (length prefix included) and how much of it is written.
    sealed: Vec<u8>,
    sealed_pos: usize,
    /// The record being read: its bytes so far and its full length once the prefix is in.
    record: Vec<u8>,
    record_filled: usize,
    /// Decrypted plaintext not yet handed to the reader.
    plain_in: Vec<u8>,
    plain_pos: usize,
}

impl<S> NoiseStream<S> {
    fn new(inner: S, state: snow::TransportState) -> Self {
        NoiseStream {
            inner,
            state,
            plain_out: Vec::with_capacity(MAX_PLAINTEXT),
            sealed: Vec::with_capacity(LEN_BYTES + MAX_MESSAGE),
            sealed_pos: 0,
            record: vec![0u8; LEN_BYTES + MAX_MESSAGE],
            record_filled: 0,
            plain_in: Vec::with_capacity(MAX_MESSAGE),
            plain_pos: 0,
        }
    }

    /// Seals the buffered plaintext into the (empty) outgoing record.
    fn seal(&mut self) -> io::Result<()> {
        debug_assert!(self.sealed_pos == self.sealed.len());
        self.sealed
            .resize(LEN_BYTES + self.plain_out.len() + TAG_LEN, 0);
        let n = self
            .state
            .write_message(&self.plain_out, &mut self.sealed[LEN_BYTES..])
            .map_err(|e| io::Error::other(format!("cannot seal a record: {e}")))?;
        self.sealed[..LEN_BYTES].copy_from_slice(&(n as u16).to_be_bytes());
        self.sealed.truncate(LEN_BYTES + n);
        self.sealed_pos = 0;
        self.plain_out.clear();
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes out the sealed record, if any.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sealed_pos < self.sealed.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.sealed[self.sealed_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealed_pos += n;
        }
        self.sealed.clear();
        self.sealed_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.plain_out.len() == MAX_PLAINTEXT {
            ready!(this.poll_drain(cx))?;
            this.seal()?;
            // Start writing it; what does not fit now goes out on the next call.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        let n = buf.len().min(MAX_PLAINTEXT - this.plain_out.len());
        this.plain_out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.plain_out.is_empty() {
            this.seal()?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain_in.len() {
                let n = out.remaining().min(this.plain_in.len() - this.plain_pos);
                out.put_slice(&this.plain_in[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            // Read one whole record: the length prefix, then that many bytes.
            let want = if this.record_filled < LEN_BYTES {
                LEN_BYTES
            } else {
                LEN_BYTES + u16::from_be_bytes([this.record[0], this.record[1]]) as usize
            };
            if this.record_filled < want {
                let mut rb = ReadBuf::new(&mut this.record[this.record_filled..want]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    if this.record_filled == 0 {
                        return Poll::Ready(Ok(())); // end of stream between records
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of a record",
                    )));
                }
                this.record_filled += n;
                continue;
            }
            if want == LEN_BYTES {
                // An empty record is never sent: treat it as tampering.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    IntegrityError,
                )));
            }
            this.plain_in.resize(MAX_MESSAGE, 0);
            let n = this
                .state
                .read_message(&this.record[LEN_BYTES..want], &mut this.plain_in)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, IntegrityError))?;
            this.plain_in.truncate(n);
            this.plain_pos = 0;
            this.record_filled = 0;
        }
    }
}
