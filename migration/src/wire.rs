//! Framing of the migration stream: every message is
//! `[kind: u8][length: u32 le][crc32 of payload: u32 le][payload]`.
//! Lengths are checked against a limit before any allocation, so a hostile or corrupted
//! stream ends with an error rather than an out-of-memory abort. Memory travels as raw page
//! bytes in `Pages` frames; everything else is a state envelope.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame payload: a batch of pages plus their range headers.
pub const MAX_FRAME: usize = 8 << 20;
/// Pages per `Pages` frame at most (4 MiB of data).
pub const MAX_PAGES_PER_FRAME: usize = 1024;
pub const PAGE_SIZE: usize = 4096;
/// Frame header: kind, length, CRC32.
pub const HEADER_LEN: usize = 9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Challenge = 2,
    Response = 3,
    Config = 4,
    Accept = 5,
    Pages = 6,
    RoundEnd = 7,
    State = 8,
    Ready = 9,
    Commit = 10,
    Resumed = 11,
    Error = 12,
    Cancel = 13,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match b {
            1 => Hello,
            2 => Challenge,
            3 => Response,
            4 => Config,
            5 => Accept,
            6 => Pages,
            7 => RoundEnd,
            8 => State,
            9 => Ready,
            10 => Commit,
            11 => Resumed,
            12 => Error,
            13 => Cancel,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection lost")]
    Io(#[source] std::io::Error),
    #[error("the migration stream was tampered with")]
    Integrity(#[source] std::io::Error),
    #[error("the migration connection stalled")]
    Stalled(#[source] std::io::Error),
    #[error("authentication failed: the peer rejected this end's TLS certificate ({0:?})")]
    CertificateRejected(rustls::AlertDescription),
    #[error("unknown frame kind {0} (corrupted stream or another protocol)")]
    UnknownKind(u8),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("{0:?} frame failed its checksum (corrupted in transit)")]
    Checksum(FrameKind),
    #[error("malformed pages frame: {0}")]
    BadPages(String),
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: FrameKind, got: FrameKind },
    #[error("the other end reported: {0}")]
    Remote(String),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        if crate::channel::is_integrity_failure(&e) {
            WireError::Integrity(e)
        } else if e
            .get_ref()
            .is_some_and(|i| i.is::<crate::deadline::Stalled>())
        {
            WireError::Stalled(e)
        } else if let Some(alert) = crate::channel::certificate_rejection(&e) {
            WireError::CertificateRejected(alert)
        } else {
            WireError::Io(e)
        }
    }
}

/// Longest error text taken from a peer.
const MAX_REMOTE_TEXT: usize = 1024;

/// A peer's error text made safe for a terminal and a log: control characters (escape
/// sequences among them) become spaces, and the length is bounded.
pub fn sanitize_remote_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(MAX_REMOTE_TEXT)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), WireError> {
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLarge(payload.len()));
    }
    let mut header = [0u8; HEADER_LEN];
    header[0] = kind as u8;
    header[1..5].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[5..9].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    w.write_all(&header).await?;
    w.write_all(payload).await?;
    // A secured stream buffers into records: each frame goes out whole, now.
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    let kind = FrameKind::from_u8(header[0]).ok_or(WireError::UnknownKind(header[0]))?;
    let len = u32::from_le_bytes(header[1..5].try_into().unwrap()) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if crc32fast::hash(&payload) != u32::from_le_bytes(header[5..9].try_into().unwrap()) {
        return Err(WireError::Checksum(kind));
    }
    if kind == FrameKind::Error {
        return Err(WireError::Remote(sanitize_remote_text(&payload)));
    }
    Ok(Frame { kind, payload })
}

/// Closes our sending side and reads (and drops) what the peer still sends, for at most a
/// second, so that closing with unread data does not reset the connection: a reset can make
/// the peer lose the Error frame just written, and with it the reason the migration failed.
pub async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// Reads a frame that must be of `expected` kind.
pub async fn expect_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    expected: FrameKind,
) -> Result<Vec<u8>, WireError> {
    let f = read_frame(r).await?;
    if f.kind != expected {
        return Err(WireError::Unexpected {
            expected,
            got: f.kind,
        });
    }
    Ok(f.payload)
}

/// Encodes runs of pages: `[count: u32]` then per run `[first page: u64][pages: u32]` followed
/// by the pages' bytes.
pub struct PagesBuilder {
    buf: Vec<u8>,
    runs: u32,
    pages: usize,
}

impl Default for PagesBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PagesBuilder {
    pub fn new() -> Self {
        PagesBuilder {
            buf: vec![0; 4],
            runs: 0,
            pages: 0,
        }
    }

    /// Pages this frame can still take.
    pub fn room(&self) -> usize {
        MAX_PAGES_PER_FRAME - self.pages
    }

    pub fn is_empty(&self) -> bool {
        self.runs == 0
    }

    /// Adds a run of pages starting at page `first` whose bytes are `data` (a multiple of PAGE_SIZE).
    pub fn push(&mut self, first: u64, data: &[u8]) {
        debug_assert!(
            data.len().is_multiple_of(PAGE_SIZE) && data.len() / PAGE_SIZE <= self.room()
        );
        self.buf.extend_from_slice(&first.to_le_bytes());
        self.buf
            .extend_from_slice(&((data.len() / PAGE_SIZE) as u32).to_le_bytes());
        self.buf.extend_from_slice(data);
        self.runs += 1;
        self.pages += data.len() / PAGE_SIZE;
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf[0..4].copy_from_slice(&self.runs.to_le_bytes());
        self.buf
    }
}

/// Decodes a `Pages` payload into (first page, bytes) runs, checking every count and length.
pub fn parse_pages(payload: &[u8]) -> Result<Vec<(u64, &[u8])>, WireError> {
    let bad = |m: &str| WireError::BadPages(m.to_string());
    if payload.len() < 4 {
        return Err(bad("no run count"));
    }
    let runs = u32::from_le_bytes(payload[0..4].try_into().unwrap()) as usize;
    if runs > MAX_PAGES_PER_FRAME {
        return Err(bad("too many runs"));
    }
    let mut rest = &payload[4..];
    let mut out = Vec::with_capacity(runs);
    let mut total = 0usize;
    for _ in 0..runs {
        if rest.len() < 12 {
            return Err(bad("truncated run header"));
        }
        let first = u64::from_le_bytes(rest[0..8].try_into().unwrap());
        let pages = u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
        total = total
            .checked_add(pages)
            .ok_or_else(|| bad("page count overflow"))?;
        if pages == 0 || total > MAX_PAGES_PER_FRAME {
            return Err(bad("bad page count"));
        }
        let len = pages * PAGE_SIZE;
        if rest.len() < 12 + len {
            return Err(bad("truncated page data"));
        }
        out.push((first, &rest[12..12 + len]));
        rest = &rest[12 + len..];
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_frame(&mut a, FrameKind::Config, b"hello")
            .await
            .unwrap();
        let f = read_frame(&mut b).await.unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (FrameKind::Config, &b"hello"[..])
        );
        // An oversized length is refused before allocating.
        a.write_all(&[6, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0])
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::TooLarge(_))
        ));
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&[99, 0, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::UnknownKind(99))
        ));
        write_frame(&mut a, FrameKind::Error, b"disk missing")
            .await
            .unwrap();
        match read_frame(&mut b).await {
            Err(WireError::Remote(m)) => assert_eq!(m, "disk missing"),
            other => panic!("{other:?}"),
        }
        a.write_all(&[4, 2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i'])
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::Checksum(FrameKind::Config))
        ));
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(WireError::Io(_))));
    }

    #[test]
    fn pages_round_trip_and_malformed_payloads_are_refused() {
        let mut p = PagesBuilder::new();
        p.push(5, &[1u8; 8192]);
        p.push(100, &[2u8; 4096]);
        let payload = p.finish();
        let runs = parse_pages(&payload).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].0, runs[0].1.len()), (5, 8192));
        assert_eq!((runs[1].0, runs[1].1[0]), (100, 2));
        assert!(parse_pages(&payload[..payload.len() - 1]).is_err());
        let mut extra = payload.clone();
        extra.push(0);
        assert!(parse_pages(&extra).is_err());
        let mut lying = payload.clone();
        lying[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(parse_pages(&lying).is_err());
        let mut zero = payload.clone();
        zero[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_pages(&zero).is_err());
        let mut huge = payload;
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_pages(&huge).is_err());
    }
}
