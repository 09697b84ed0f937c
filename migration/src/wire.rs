//! Framing of the migration stream: one frame per record ([`crate::record`]), the record's
//! body being `[kind: u8][payload]`. Lengths are checked against a limit before anything is
//! read into memory, so a hostile or corrupted stream ends with an error rather than an
//! out-of-memory abort. Memory travels as raw page bytes in `Pages` frames (see
//! [`PagesWriter`]); everything else is a state envelope or a few fixed bytes.
//!
//! Each direction owns one buffer, allocated once and reused for every record: a page is
//! copied from guest memory into the outgoing record and encrypted where it lies; an incoming
//! record is read, checked and decrypted in place, and its pages copied into guest memory.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::record::{IntegrityError, Opener, Sealer, HEADER_LEN, MAX_TRAILER_LEN};

pub const PAGE_SIZE: usize = 4096;
/// Pages per `Pages` frame at most (4 MiB of data).
pub(crate) const MAX_PAGES_PER_FRAME: usize = 1024;
/// Largest frame payload: a batch of pages with their run headers, or a state envelope.
pub const MAX_FRAME: usize = 8 << 20;
/// Record body: the kind byte, then the payload.
const KIND_LEN: usize = 1;
const MAX_BODY: usize = KIND_LEN + MAX_FRAME;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    /// An extra connection of a migration presents its session and index.
    Join = 2,
    Config = 4,
    Accept = 5,
    Pages = 6,
    RoundEnd = 7,
    State = 8,
    Ready = 9,
    Commit = 10,
    Resumed = 11,
    Error = 12,
    /// A connection has sent all the pages it will send.
    Done = 14,
    /// A `Pages` frame compressed with zstd: `[payload length: u32 le][zstd frame]`.
    PagesZ = 15,
    /// The destination has applied round N (u32 le) from every connection.
    RoundAck = 16,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match b {
            1 => Hello,
            2 => Join,
            4 => Config,
            5 => Accept,
            6 => Pages,
            7 => RoundEnd,
            8 => State,
            9 => Ready,
            10 => Commit,
            11 => Resumed,
            12 => Error,
            14 => Done,
            15 => PagesZ,
            16 => RoundAck,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection lost")]
    Io(#[source] std::io::Error),
    #[error("the migration stream was tampered with")]
    Integrity(#[source] IntegrityError),
    #[error("the migration stream was corrupted in transit")]
    Corrupted(#[source] IntegrityError),
    #[error("the migration connection stalled")]
    Stalled(#[source] std::io::Error),
    #[error("unknown frame kind {0} (corrupted stream or another protocol)")]
    UnknownKind(u8),
    #[error("a record of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    #[error("an empty record")]
    Empty,
    #[error("malformed pages frame: {0}")]
    BadPages(&'static str),
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: FrameKind, got: FrameKind },
    #[error("the other end reported: {0}")]
    Remote(String),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        if e.get_ref()
            .is_some_and(|i| i.is::<crate::deadline::Stalled>())
        {
            WireError::Stalled(e)
        } else {
            WireError::Io(e)
        }
    }
}

/// Longest error text taken from a peer.
const MAX_REMOTE_TEXT: usize = 1024;

/// A peer's error text made safe for a terminal and a log: control characters (escape
/// sequences among them) become spaces, and the length is bounded.
pub(crate) fn sanitize_remote_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(MAX_REMOTE_TEXT)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Writes frames, each sealed into one record, from one reused buffer.
pub struct FrameWriter<W> {
    io: W,
    sealer: Sealer,
    buf: Vec<u8>,
    /// End of the body being built in `buf`.
    len: usize,
    /// Bytes written so far, records included.
    pub bytes: u64,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, sealer: Sealer) -> Self {
        FrameWriter {
            io,
            sealer,
            buf: Vec::new(),
            len: 0,
            bytes: 0,
        }
    }

    /// Starts a frame of `kind`; its payload is then added with [`Self::extend`] and
    /// [`Self::space`], and sent with [`Self::finish`].
    pub fn begin(&mut self, kind: FrameKind) {
        if self.buf.is_empty() {
            self.buf = vec![0u8; HEADER_LEN + MAX_BODY + MAX_TRAILER_LEN];
        }
        self.buf[HEADER_LEN] = kind as u8;
        self.len = HEADER_LEN + KIND_LEN;
    }

    /// Payload bytes of the frame being built so far.
    pub(crate) fn payload_len(&self) -> usize {
        self.len - HEADER_LEN - KIND_LEN
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.space(bytes.len()).copy_from_slice(bytes);
    }

    /// The next `n` payload bytes, to fill in place (e.g. straight from guest memory).
    pub fn space(&mut self, n: usize) -> &mut [u8] {
        assert!(self.payload_len() + n <= MAX_FRAME, "frame over its limit");
        let start = self.len;
        self.len += n;
        &mut self.buf[start..start + n]
    }

    /// Drops the last `n` payload bytes (a page found to be zero after it was copied in).
    pub(crate) fn unextend(&mut self, n: usize) {
        self.len -= n;
    }

    /// A payload byte already added, to patch (a count known only at the end).
    pub(crate) fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_LEN + KIND_LEN..self.len]
    }

    /// Compresses the `Pages` frame being built (zstd at `level`), when that makes it smaller:
    /// it becomes a `PagesZ` frame. `scratch` is the lane's reused compression buffer.
    pub(crate) fn compress_payload(
        &mut self,
        level: i32,
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let payload = &self.buf[HEADER_LEN + KIND_LEN..self.len];
        let bound = zstd::zstd_safe::compress_bound(payload.len());
        if scratch.len() < bound {
            scratch.resize(bound, 0);
        }
        let n = zstd::bulk::compress_to_buffer(payload, scratch, level)?;
        if n + 4 >= payload.len() {
            return Ok(());
        }
        let original = payload.len() as u32;
        self.begin(FrameKind::PagesZ);
        self.extend(&original.to_le_bytes());
        self.extend(&scratch[..n]);
        Ok(())
    }

    /// Seals and writes the frame begun with [`Self::begin`].
    pub async fn finish(&mut self) -> Result<(), WireError> {
        let n = self.sealer.seal(&mut self.buf, self.len);
        self.io.write_all(&self.buf[..n]).await?;
        self.bytes += n as u64;
        Ok(())
    }

    /// Sends a whole frame.
    pub async fn send(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), WireError> {
        if payload.len() > MAX_FRAME {
            return Err(WireError::TooLarge(payload.len()));
        }
        self.begin(kind);
        self.extend(payload);
        self.finish().await
    }

    /// Ends our sending side of the connection.
    pub async fn shutdown(&mut self) {
        let _ = self.io.flush().await;
        let _ = self.io.shutdown().await;
    }
}

/// Reads frames, each opened from one record, into one reused buffer.
pub struct FrameReader<R> {
    io: R,
    opener: Opener,
    /// The record being read: its header, then its body and trailer in `buf`, and how much of
    /// each is in.
    header: [u8; HEADER_LEN],
    header_filled: usize,
    buf: Vec<u8>,
    rest_filled: usize,
    /// A frame read ahead (see [`FrameReader::push_back`]), returned by the next read.
    pushed_back: Option<(FrameKind, Vec<u8>)>,
    /// Bytes read so far, records included.
    pub bytes: u64,
}

/// A frame as read: its payload lives in the reader's buffer until the next read.
pub struct Frame<'a> {
    pub kind: FrameKind,
    pub payload: &'a [u8],
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, opener: Opener) -> Self {
        FrameReader {
            io,
            opener,
            header: [0; HEADER_LEN],
            header_filled: 0,
            buf: Vec::new(),
            rest_filled: 0,
            pushed_back: None,
            bytes: 0,
        }
    }

    /// Puts a frame already read back in front of the stream: the next [`Self::recv`]
    /// returns it (a listener reads a connection's first frame to know the peer holds the
    /// session's keys, then hands the connection on).
    pub fn push_back(&mut self, kind: FrameKind, payload: Vec<u8>) {
        self.pushed_back = Some((kind, payload));
    }

    /// Reads into `buf[*filled..want]` until full; progress is kept in `filled`, so a read
    /// dropped half-way (a `select!` that took another branch) loses nothing.
    async fn fill(io: &mut R, buf: &mut [u8], filled: &mut usize) -> Result<(), WireError> {
        while *filled < buf.len() {
            let n = io.read(&mut buf[*filled..]).await?;
            if n == 0 {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            *filled += n;
        }
        Ok(())
    }

    /// The next frame. An Error frame from the peer comes back as [`WireError::Remote`].
    /// Cancel-safe: a call dropped before it completes leaves the reader where it was, and
    /// the next call goes on with the same record.
    pub async fn recv(&mut self) -> Result<Frame<'_>, WireError> {
        if let Some((kind, payload)) = self.pushed_back.take() {
            self.buf = payload;
            return Ok(Frame {
                kind,
                payload: &self.buf,
            });
        }
        Self::fill(&mut self.io, &mut self.header, &mut self.header_filled).await?;
        let header = self.header;
        let body_len = u32::from_le_bytes(header) as usize;
        if body_len > MAX_BODY {
            return Err(WireError::TooLarge(body_len));
        }
        let rest_len = self.opener.rest_len(body_len);
        if self.buf.len() < rest_len {
            self.buf.resize(rest_len, 0);
        }
        Self::fill(
            &mut self.io,
            &mut self.buf[..rest_len],
            &mut self.rest_filled,
        )
        .await?;
        // The record is in: the next call starts a new one.
        self.header_filled = 0;
        self.rest_filled = 0;
        self.bytes += (HEADER_LEN + rest_len) as u64;
        let crc_only = self.opener.rest_len(0) == 4;
        let body = self
            .opener
            .open(header, &mut self.buf[..rest_len])
            .map_err(|e| {
                if crc_only {
                    WireError::Corrupted(e)
                } else {
                    WireError::Integrity(e)
                }
            })?;
        let (&kind, payload) = body.split_first().ok_or(WireError::Empty)?;
        let kind = FrameKind::from_u8(kind).ok_or(WireError::UnknownKind(kind))?;
        if kind == FrameKind::Error {
            return Err(WireError::Remote(sanitize_remote_text(payload)));
        }
        Ok(Frame { kind, payload })
    }

    /// The next frame, which must be of `expected` kind; returns its payload.
    pub async fn expect(&mut self, expected: FrameKind) -> Result<&[u8], WireError> {
        let f = self.recv().await?;
        if f.kind != expected {
            return Err(WireError::Unexpected {
                expected,
                got: f.kind,
            });
        }
        Ok(f.payload)
    }

    /// Reads (and drops) what the peer still sends, for at most a second, so that closing
    /// with unread data does not reset the connection: a reset can make the peer lose the
    /// Error frame just written, and with it the reason the migration failed.
    pub async fn drain(&mut self) {
        let drain = async {
            let mut sink = vec![0u8; 64 * 1024];
            while let Ok(n) = self.io.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    }
}

/// A run header's count: the number of pages, with this bit set for a run of zero pages
/// (no bytes follow: the destination zeroes them).
pub(crate) const ZERO_RUN: u32 = 1 << 31;
const RUN_HEADER_LEN: usize = 12;
/// Runs in one `Pages` frame at most.
pub(crate) const MAX_RUNS_PER_FRAME: usize = MAX_PAGES_PER_FRAME;

/// One run of a `Pages` frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Run<'a> {
    /// Pages from `first` on, with their bytes.
    Data(u64, &'a [u8]),
    /// `count` pages from `first` on that are all zero.
    Zero(u64, usize),
}

/// Builds a `Pages` frame in a [`FrameWriter`]'s buffer: `[runs: u32]` then per run
/// `[first page: u64][pages: u32 | ZERO_RUN]` and, for a data run, the pages' bytes. Pages are
/// copied into the frame once (by the caller, into [`Self::page_slot`]); a page found to be
/// zero is taken back out and becomes part of a zero run.
pub struct PagesWriter {
    runs: u32,
    /// Where the open run's header sits in the payload, its first page, its pages, and
    /// whether it is a zero run.
    open: Option<(usize, u64, u32, bool)>,
    data_pages: usize,
    zero_pages: usize,
}

impl PagesWriter {
    /// Starts a `Pages` frame in `w`.
    pub fn begin<W: AsyncWrite + Unpin>(w: &mut FrameWriter<W>) -> Self {
        w.begin(FrameKind::Pages);
        w.extend(&0u32.to_le_bytes());
        PagesWriter {
            runs: 0,
            open: None,
            data_pages: 0,
            zero_pages: 0,
        }
    }

    /// Whether the frame can take another page (a data page, and a new run for it).
    pub fn has_room(&self) -> bool {
        self.data_pages < MAX_PAGES_PER_FRAME && (self.runs as usize) < MAX_RUNS_PER_FRAME
    }

    pub fn is_empty(&self) -> bool {
        self.runs == 0
    }

    /// Pages with bytes in the frame.
    pub(crate) fn data_pages(&self) -> usize {
        self.data_pages
    }

    /// Pages sent as zero-run markers.
    pub fn zero_pages(&self) -> usize {
        self.zero_pages
    }

    fn extend_run<W: AsyncWrite + Unpin>(&mut self, w: &mut FrameWriter<W>, page: u64, zero: bool) {
        if let Some((at, first, count, z)) = &mut self.open {
            if *z == zero && first.checked_add(u64::from(*count)) == Some(page) {
                *count += 1;
                let c = *count | if zero { ZERO_RUN } else { 0 };
                let at = *at;
                w.payload_mut()[at + 8..at + 12].copy_from_slice(&c.to_le_bytes());
                return;
            }
        }
        let at = w.payload_len();
        let mut header = [0u8; RUN_HEADER_LEN];
        header[..8].copy_from_slice(&page.to_le_bytes());
        header[8..].copy_from_slice(&(1u32 | if zero { ZERO_RUN } else { 0 }).to_le_bytes());
        w.extend(&header);
        self.open = Some((at, page, 1, zero));
        self.runs += 1;
    }

    /// Adds guest page `page`: `fill` copies its bytes into the slot it is given; a page that
    /// turns out all zero is sent as a marker instead, if `zero_markers` (in round 0 zero
    /// pages are simply skipped: fresh memory is zero). Returns whether the page was zero.
    pub fn push_page<W: AsyncWrite + Unpin, E>(
        &mut self,
        w: &mut FrameWriter<W>,
        page: u64,
        zero_markers: bool,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut zero = false;
        self.push_data(w, page, |slot| {
            fill(slot)?;
            zero = crate::dirty::is_zero_page(slot);
            Ok(!zero)
        })?;
        if zero && zero_markers {
            self.push_zero(w, page);
        }
        Ok(zero)
    }

    /// Adds guest page `page` with its bytes: `fill` copies them into the slot they will be
    /// sent from and says whether to keep them (false: the page is taken back out).
    pub(crate) fn push_data<W: AsyncWrite + Unpin, E>(
        &mut self,
        w: &mut FrameWriter<W>,
        page: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<bool, E>,
    ) -> Result<(), E> {
        // Copy the page where its bytes will stay: right after a run header if it starts a
        // new run, at the end of the open run if it continues it.
        let continues = matches!(self.open, Some((_, first, count, false)) if first.checked_add(u64::from(count)) == Some(page));
        let header_len = if continues { 0 } else { RUN_HEADER_LEN };
        let slot = w.space(header_len + PAGE_SIZE);
        let keep = fill(&mut slot[header_len..])?;
        // Take it back out; the run bookkeeping writes a header (if one is needed) in place,
        // and the page's bytes are then taken back in where they already are.
        w.unextend(header_len + PAGE_SIZE);
        if keep {
            self.extend_run(w, page, false);
            let _ = w.space(PAGE_SIZE);
            self.data_pages += 1;
        }
        Ok(())
    }

    /// Adds guest page `page` as part of a zero run (no bytes: the destination zeroes it).
    pub(crate) fn push_zero<W: AsyncWrite + Unpin>(&mut self, w: &mut FrameWriter<W>, page: u64) {
        self.extend_run(w, page, true);
        self.zero_pages += 1;
    }

    /// Writes the run count; the frame is then ready for [`FrameWriter::finish`].
    pub fn end<W: AsyncWrite + Unpin>(self, w: &mut FrameWriter<W>) {
        w.payload_mut()[..4].copy_from_slice(&self.runs.to_le_bytes());
    }
}

/// Decompresses a `PagesZ` payload into `out` (reused); the result is at most [`MAX_FRAME`]
/// bytes, whatever the compressed data claims.
pub fn decompress_pages(payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    if payload.len() < 4 {
        return Err(WireError::BadPages("no length"));
    }
    let len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(WireError::BadPages(
            "decompressed length over the frame limit",
        ));
    }
    out.resize(len, 0);
    let n = zstd::bulk::decompress_to_buffer(&payload[4..], out)
        .map_err(|_| WireError::BadPages("bad zstd data"))?;
    if n != len {
        return Err(WireError::BadPages("decompressed length differs"));
    }
    Ok(())
}

/// Decodes a `Pages` payload into runs, checking every count and length.
pub fn parse_pages(payload: &[u8]) -> Result<Vec<Run<'_>>, WireError> {
    let bad = WireError::BadPages;
    if payload.len() < 4 {
        return Err(bad("no run count"));
    }
    let runs = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes")) as usize;
    if runs > MAX_RUNS_PER_FRAME {
        return Err(bad("too many runs"));
    }
    let mut rest = &payload[4..];
    let mut out = Vec::with_capacity(runs);
    let mut data_pages = 0usize;
    for _ in 0..runs {
        if rest.len() < RUN_HEADER_LEN {
            return Err(bad("truncated run header"));
        }
        let first = u64::from_le_bytes(rest[0..8].try_into().expect("8 bytes"));
        let raw = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        let pages = (raw & !ZERO_RUN) as usize;
        if pages == 0 {
            return Err(bad("empty run"));
        }
        rest = &rest[RUN_HEADER_LEN..];
        if raw & ZERO_RUN != 0 {
            out.push(Run::Zero(first, pages));
            continue;
        }
        data_pages += pages;
        if data_pages > MAX_PAGES_PER_FRAME {
            return Err(bad("too many pages"));
        }
        let len = pages * PAGE_SIZE;
        if rest.len() < len {
            return Err(bad("truncated page data"));
        }
        out.push(Run::Data(first, &rest[..len]));
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
