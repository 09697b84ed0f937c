//! The protocol end to end between a fake source and a fake destination over an in-memory
//! pipe, through the secured channel: live convergence with a guest that keeps writing,
//! zero-page skipping, refusals, and broken or tampered streams (the source must be running again after every failure before commit).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cancel::{cancel_pair, CancelToken};
use crate::channel::{
    secure_destination, secure_source, Channel, DestinationSecurity, SourceSecurity, Transport,
};
use crate::dirty::DirtyBitmap;
use crate::key::Key;
use crate::protocol::{Acceptor, BoxFuture, Connector};
use crate::receiver::receive;
use crate::sender::{send, OnTimeout, SendOptions};
use crate::vm::{RamRegion, SourceVm, TargetBuilder, TargetVm, VmResult};
use crate::wire::FrameKind;
use crate::MigrationError;

const PAGES: usize = 256;

/// A "guest" whose memory is a Vec; every take_dirty, while running, it rewrites a few pages.
struct FakeSource {
    mem: Mutex<Vec<u8>>,
    dirty: Mutex<DirtyBitmap>,
    running: AtomicBool,
    writes_per_round: usize,
    generation: AtomicU32,
    released: AtomicBool,
    /// A device that writes guest memory while its state is captured (a used ring update).
    device_writes_at_save: AtomicBool,
    /// Behave like KVM with manual protection: reading the log clears nothing, clear_dirty
    /// does, and the log can be peeked at (the guest writes more at each peek).
    lazy: bool,
    /// Pages the guest writes while its disks are next flushed (a guest busy during a slow
    /// flush before the pause); used up by that flush.
    flush_writes: AtomicUsize,
}

impl FakeSource {
    fn new(writes_per_round: usize) -> Self {
        let mut mem = vec![0u8; PAGES * 4096];
        // Half the pages hold data, the rest stay zero.
        for p in 0..PAGES / 2 {
            mem[p * 4096] = p as u8 | 1;
        }
        FakeSource {
            mem: Mutex::new(mem),
            dirty: Mutex::new(DirtyBitmap::new(PAGES)),
            running: AtomicBool::new(true),
            writes_per_round,
            generation: AtomicU32::new(1),
            released: AtomicBool::new(false),
            device_writes_at_save: AtomicBool::new(false),
            lazy: false,
            flush_writes: AtomicUsize::new(0),
        }
    }

    fn lazy(writes_per_round: usize) -> Self {
        FakeSource {
            lazy: true,
            ..Self::new(writes_per_round)
        }
    }

    fn guest_writes(&self) {
        if !self.running.load(Ordering::SeqCst) {
            return;
        }
        let g = self.generation.fetch_add(1, Ordering::SeqCst);
        let mut mem = self.mem.lock().unwrap();
        let mut dirty = self.dirty.lock().unwrap();
        for i in 0..self.writes_per_round {
            let page = (g as usize * 7 + i * 13) % PAGES;
            mem[page * 4096 + 8..page * 4096 + 12].copy_from_slice(&g.to_le_bytes());
            dirty.set(page);
        }
        // A page that had data becomes all zero again (freed memory): after round 0 the
        // destination must be told, it holds the old bytes.
        let freed = (g as usize * 3) % (PAGES / 2);
        mem[freed * 4096..(freed + 1) * 4096].fill(0);
        dirty.set(freed);
    }
}

impl SourceVm for FakeSource {
    fn config(&self) -> VmResult<Vec<u8>> {
        Ok(b"fake-config".to_vec())
    }
    fn regions(&self) -> Vec<RamRegion> {
        vec![RamRegion {
            gpa: 0,
            pages: PAGES,
        }]
    }
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> VmResult<()> {
        let mem = self.mem.lock().unwrap();
        buf.copy_from_slice(&mem[gpa as usize..gpa as usize + buf.len()]);
        Ok(())
    }
    fn start_dirty_log(&self) -> VmResult<()> {
        self.dirty.lock().unwrap().clear();
        Ok(())
    }
    fn stop_dirty_log(&self) {}
    fn take_dirty(&self) -> VmResult<Vec<DirtyBitmap>> {
        self.guest_writes();
        let mut d = self.dirty.lock().unwrap();
        let out = d.clone();
        if !self.lazy {
            d.clear();
        }
        Ok(vec![out])
    }
    fn clear_dirty(&self, _region: usize, first_page: usize, words: &[u64]) -> VmResult<()> {
        if self.lazy {
            let mut d = self.dirty.lock().unwrap();
            for (i, w) in words.iter().enumerate() {
                for bit in 0..64 {
                    if w & (1 << bit) != 0 {
                        d.unset(first_page + i * 64 + bit);
                    }
                }
            }
        }
        Ok(())
    }
    fn peek_dirty(&self, _region: usize) -> VmResult<Option<DirtyBitmap>> {
        if !self.lazy {
            return Ok(None);
        }
        self.guest_writes();
        Ok(Some(self.dirty.lock().unwrap().clone()))
    }
    fn flush(&self) -> VmResult<()> {
        let n = self.flush_writes.swap(0, Ordering::SeqCst);
        if n > 0 && self.running.load(Ordering::SeqCst) {
            let mut mem = self.mem.lock().unwrap();
            let mut dirty = self.dirty.lock().unwrap();
            for page in 0..n.min(PAGES) {
                mem[page * 4096 + 16] ^= 0x5a;
                dirty.set(page);
            }
        }
        Ok(())
    }
    fn pause(&self) -> VmResult<()> {
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn resume(&self) -> VmResult<()> {
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn save_state(&self) -> VmResult<Vec<u8>> {
        if self.device_writes_at_save.load(Ordering::SeqCst) {
            let page = PAGES - 3;
            self.mem.lock().unwrap()[page * 4096 + 100] = 0xd5;
            self.dirty.lock().unwrap().set(page);
        }
        Ok(b"cpu-and-device-state".to_vec())
    }
    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
    fn throttle(&self, _percent: u8) {}
}

#[derive(Default)]
struct Shared {
    mem: Vec<u8>,
    state: Vec<u8>,
    resumed: bool,
    /// Another process holds the disk: acquire fails while set.
    locked: bool,
    /// Failed acquire attempts.
    lock_attempts: u32,
}

struct FakeTarget(Arc<Mutex<Shared>>);

impl TargetVm for FakeTarget {
    fn regions(&self) -> Vec<RamRegion> {
        vec![RamRegion {
            gpa: 0,
            pages: PAGES,
        }]
    }
    fn write_memory(&self, gpa: u64, data: &[u8]) -> VmResult<()> {
        self.0.lock().unwrap().mem[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero_memory(&self, gpa: u64, len: usize) -> VmResult<()> {
        self.0.lock().unwrap().mem[gpa as usize..gpa as usize + len].fill(0);
        Ok(())
    }
    fn restore_state(&self, state: &[u8]) -> VmResult<()> {
        self.0.lock().unwrap().state = state.to_vec();
        Ok(())
    }
    fn acquire(&self) -> VmResult<()> {
        let mut s = self.0.lock().unwrap();
        if s.locked {
            s.lock_attempts += 1;
            return Err(crate::vm::VmError::Acquire(
                "held by another process".into(),
            ));
        }
        Ok(())
    }
    fn resume(&self) -> VmResult<()> {
        self.0.lock().unwrap().resumed = true;
        Ok(())
    }
}

struct Builder {
    shared: Arc<Mutex<Shared>>,
    refuse: Option<String>,
}

impl TargetBuilder for Builder {
    fn build(&mut self, config: &[u8]) -> VmResult<Box<dyn TargetVm>> {
        if let Some(why) = &self.refuse {
            return Err(crate::vm::VmError::Refused(why.clone()));
        }
        assert_eq!(config, b"fake-config");
        self.shared.lock().unwrap().mem = vec![0u8; PAGES * 4096];
        Ok(Box::new(FakeTarget(self.shared.clone())))
    }
}

fn key(s: &str) -> Key {
    Key::new(s.as_bytes().to_vec()).unwrap()
}

fn psk() -> (SourceSecurity, DestinationSecurity) {
    let k = key("0123456789abcdef-test-key-of-32-bytes");
    (SourceSecurity::Psk(k.clone()), DestinationSecurity::Psk(k))
}

struct Outcome {
    source: Result<crate::progress::Summary, MigrationError>,
    target: Result<(), MigrationError>,
    shared: Arc<Mutex<Shared>>,
    src: Arc<FakeSource>,
}

fn builder(refuse: Option<String>) -> (Builder, Arc<Mutex<Shared>>) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    (
        Builder {
            shared: shared.clone(),
            refuse,
        },
        shared,
    )
}

fn boxed<S: Transport + 'static>(s: S) -> Box<dyn Transport> {
    Box::new(s)
}

/// In-memory "network" for the extra connections: the source's connector makes a pipe and
/// hands the far end to the destination's acceptor.
fn links(src: SourceSecurity, dst: DestinationSecurity) -> (LinkConnector, LinkAcceptor) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (
        LinkConnector { tx, security: src },
        LinkAcceptor { rx, security: dst },
    )
}

struct LinkConnector {
    tx: tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>,
    security: SourceSecurity,
}

impl Connector for LinkConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Channel, MigrationError>> {
        Box::pin(async move {
            let (a, b) = tokio::io::duplex(1 << 20);
            self.tx
                .send(b)
                .map_err(|_| MigrationError::Protocol("no destination".into()))?;
            Ok(secure_source(boxed(a), &self.security).await?)
        })
    }
}

struct LinkAcceptor {
    rx: tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>,
    security: DestinationSecurity,
}

impl Acceptor for LinkAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, Result<Channel, MigrationError>> {
        Box::pin(async move {
            let s = self
                .rx
                .recv()
                .await
                .ok_or_else(|| MigrationError::Protocol("no more connections".into()))?;
            Ok(secure_destination(boxed(s), &self.security).await?)
        })
    }
}

/// The destination: secures the first connection, then receives (taking more from `more`).
async fn destination<S: Transport + 'static>(
    stream: S,
    security: DestinationSecurity,
    mut more: LinkAcceptor,
    mut builder: Builder,
) -> Result<(), MigrationError> {
    let ch = secure_destination(boxed(stream), &security).await?;
    receive(
        ch,
        &mut more,
        &mut builder,
        CancelToken::never(),
        &mut |_| {},
    )
    .await
    .map(|_| ())
}

/// The source: secures the first connection, then sends; the guest runs on if securing fails.
async fn source<S: Transport + 'static>(
    stream: S,
    security: SourceSecurity,
    more: &LinkConnector,
    src: Arc<FakeSource>,
    opts: &SendOptions,
    cancel: CancelToken,
) -> Result<crate::progress::Summary, MigrationError> {
    let ch = secure_source(boxed(stream), &security).await?;
    send(ch, more, src, opts, |_| {}, cancel).await
}

async fn migrate_with(
    src: FakeSource,
    opts: SendOptions,
    refuse: Option<String>,
    security: (SourceSecurity, DestinationSecurity),
) -> Outcome {
    let (a, b) = tokio::io::duplex(1 << 20);
    let src = Arc::new(src);
    let (sec_src, sec_dst) = security;
    let (connector, acceptor) = links(sec_src.clone(), sec_dst.clone());
    let (builder, shared) = builder(refuse);
    let target = tokio::spawn(destination(b, sec_dst, acceptor, builder));
    let source = source(
        a,
        sec_src,
        &connector,
        src.clone(),
        &opts,
        CancelToken::never(),
    )
    .await;
    let target = target.await.unwrap();
    Outcome {
        source,
        target,
        shared,
        src,
    }
}

async fn migrate(src: FakeSource, opts: SendOptions, refuse: Option<String>) -> Outcome {
    migrate_with(src, opts, refuse, psk()).await
}

#[tokio::test]
async fn live_migration_converges_and_copies_memory_exactly() {
    let opts = SendOptions {
        downtime_budget: Duration::from_secs(5),
        ..Default::default()
    };
    let o = migrate(FakeSource::new(8), opts, None).await;
    let summary = o.source.unwrap();
    o.target.unwrap();
    let shared = o.shared.lock().unwrap();
    assert!(shared.resumed);
    assert_eq!(shared.state, b"cpu-and-device-state");
    assert_eq!(
        shared.mem,
        *o.src.mem.lock().unwrap(),
        "destination memory equals the paused source's"
    );
    assert!(o.src.released.load(Ordering::SeqCst));
    assert!(
        !o.src.running.load(Ordering::SeqCst),
        "the source never resumes after commit"
    );
    assert_eq!(summary.switchover, "converged");
    assert!(summary.rounds >= 2);
    assert!(
        summary.rounds_detail[1..].iter().any(|r| r.zero_pages > 0),
        "pages that became zero are sent as markers after round 0"
    );
    assert_eq!(
        summary.rounds_detail[0].zero_pages,
        (PAGES / 2) as u64,
        "round 0 skips the zero pages"
    );
}

/// The guest runs on while its disks are flushed just before the pause: what it writes then
/// counts against the downtime budget, and where it no longer fits, it goes as one more round
/// while the guest still runs, not inside the pause.
#[tokio::test]
async fn pages_written_during_the_flush_before_the_pause_go_in_one_more_round() {
    let src = FakeSource::new(2);
    src.flush_writes.store(120, Ordering::SeqCst);
    // 4 MiB/s: a page a millisecond; the budget holds about 40 pages.
    let budget_ms = 40.0;
    let opts = SendOptions {
        downtime_budget: Duration::from_millis(budget_ms as u64),
        max_bandwidth: 4 << 20,
        ..Default::default()
    };
    let o = migrate(src, opts, None).await;
    let summary = o.source.unwrap();
    o.target.unwrap();
    assert_eq!(
        o.shared.lock().unwrap().mem,
        *o.src.mem.lock().unwrap(),
        "destination memory equals the paused source's"
    );
    assert_eq!(summary.switchover, "converged");
    let rounds = &summary.rounds_detail;
    let last = rounds.last().unwrap();
    assert!(
        last.pages_sent + last.zero_pages < 40,
        "the round inside the pause fits the budget: {rounds:?}"
    );
    assert!(
        rounds[1..rounds.len() - 1]
            .iter()
            .any(|r| r.pages_sent + r.zero_pages >= 120),
        "the flush's pages went in a round of their own: {rounds:?}"
    );
    assert!(
        summary.expected_downtime_ms <= budget_ms,
        "{}",
        summary.expected_downtime_ms
    );
}

#[tokio::test]
async fn a_guest_that_never_converges_is_forced_or_cancelled_as_asked() {
    let opts = SendOptions {
        downtime_budget: Duration::ZERO,
        max_rounds: 4,
        auto_converge: false,
        ..Default::default()
    };
    let o = migrate(FakeSource::new(64), opts.clone(), None).await;
    assert_eq!(o.source.unwrap().switchover, "round-limit");
    assert_eq!(o.shared.lock().unwrap().mem, *o.src.mem.lock().unwrap());

    let cancel = SendOptions {
        on_timeout: OnTimeout::Cancel,
        ..opts
    };
    let o = migrate(FakeSource::new(64), cancel, None).await;
    assert!(
        matches!(o.source, Err(MigrationError::NotConverged(_))),
        "{:?}",
        o.source.err()
    );
    assert!(o.target.is_err());
    assert!(
        o.src.running.load(Ordering::SeqCst),
        "the guest keeps running on the source"
    );
    assert!(!o.src.released.load(Ordering::SeqCst));
}

#[tokio::test]
async fn offline_migration_pauses_first() {
    let opts = SendOptions {
        offline: true,
        ..Default::default()
    };
    let o = migrate(FakeSource::new(8), opts, None).await;
    let s = o.source.unwrap();
    assert_eq!(s.switchover, "offline");
    assert_eq!(s.rounds, 1);
    assert_eq!(o.shared.lock().unwrap().mem, *o.src.mem.lock().unwrap());
}

/// A device still writing guest memory after the vCPUs stopped (seen in a Linux guest as
/// "input.0:id 0 is not a head!" after an offline migration): those pages must follow, live
/// and offline.
#[tokio::test]
async fn device_writes_after_the_pause_reach_the_destination() {
    for offline in [true, false] {
        let src = FakeSource::new(4);
        src.device_writes_at_save.store(true, Ordering::SeqCst);
        let o = migrate(
            src,
            SendOptions {
                offline,
                ..Default::default()
            },
            None,
        )
        .await;
        o.source.unwrap();
        let dst = &o.shared.lock().unwrap().mem;
        assert_eq!(dst[(PAGES - 3) * 4096 + 100], 0xd5, "offline={offline}");
        assert_eq!(*dst, *o.src.mem.lock().unwrap(), "offline={offline}");
    }
}

#[tokio::test]
async fn a_refusal_reaches_the_source_with_its_reason() {
    let o = migrate(
        FakeSource::new(1),
        SendOptions::default(),
        Some("disk /shared/x.img is missing".into()),
    )
    .await;
    match o.source {
        Err(MigrationError::Destination(m)) => {
            assert!(m.contains("disk /shared/x.img is missing"), "{m}")
        }
        other => panic!("{:?}", other.err()),
    }
    assert!(o.src.running.load(Ordering::SeqCst));
}

/// Forwards bytes from the source to the destination, damaging the stream at byte `at`:
/// flipping a byte, or cutting the connection.
async fn damaged(flip: bool, at: usize, secured: bool) -> Outcome {
    let (a, mut a_far) = tokio::io::duplex(1 << 20);
    let (mut b_far, b) = tokio::io::duplex(1 << 20);
    let src = Arc::new(FakeSource::new(8));
    let (sec_src, sec_dst) = if secured {
        psk()
    } else {
        (SourceSecurity::Insecure, DestinationSecurity::Insecure)
    };
    let (builder, shared) = builder(None);
    let (connector, acceptor) = links(sec_src.clone(), sec_dst.clone());
    let target = tokio::spawn(destination(b, sec_dst, acceptor, builder));
    let proxy = tokio::spawn(async move {
        let (mut ar, mut aw) = tokio::io::split(&mut a_far);
        let (mut br, mut bw) = tokio::io::split(&mut b_far);
        let up = async {
            let mut seen = 0usize;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match ar.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if seen <= at && seen + n > at {
                    if flip {
                        buf[at - seen] ^= 0xff;
                    } else {
                        let _ = bw.write_all(&buf[..at - seen]).await;
                        break;
                    }
                }
                seen += n;
                if bw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = bw.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut br, &mut aw).await;
            let _ = aw.shutdown().await;
        };
        if flip {
            tokio::join!(up, down);
        } else {
            tokio::select! { _ = up => {}, _ = down => {} }
        }
    });
    let source = source(
        a,
        sec_src,
        &connector,
        src.clone(),
        &SendOptions::default(),
        CancelToken::never(),
    )
    .await;
    let target = target.await.unwrap();
    proxy.abort();
    Outcome {
        source,
        target,
        shared,
        src,
    }
}

#[tokio::test]
async fn a_cut_or_corrupted_stream_fails_cleanly_and_the_source_keeps_running() {
    for (flip, at, secured) in [
        (false, 300, false),
        (false, 100_000, false),
        (true, 90, false),
        (true, 200_000, false),
        (false, 300, true),
        (false, 100_000, true),
        (true, 5, true),
        (true, 90, true),
        (true, 200_000, true),
    ] {
        let o = tokio::time::timeout(Duration::from_secs(20), damaged(flip, at, secured))
            .await
            .unwrap_or_else(|_| panic!("flip={flip} at={at} secured={secured} hung"));
        assert!(
            o.source.is_err(),
            "flip={flip} at={at}: the source must notice"
        );
        assert!(
            o.target.is_err(),
            "flip={flip} at={at}: the destination must discard"
        );
        assert!(!o.shared.lock().unwrap().resumed);
        assert!(
            o.src.running.load(Ordering::SeqCst),
            "flip={flip} at={at}: source running again"
        );
        if secured && flip && at >= 90 {
            assert!(
                matches!(
                    o.target,
                    Err(MigrationError::Wire(crate::wire::WireError::Integrity(_)))
                ),
                "at={at}: {:?}",
                o.target.err()
            );
        }
        assert!(!o.src.released.load(Ordering::SeqCst));
    }
}

/// A guest paused by its user before the migration stays paused when the migration fails.
#[tokio::test]
async fn a_cancel_mid_transfer_or_a_stalled_destination_puts_the_guest_back() {
    // Cancel: after the first round has started.
    let (a, b) = tokio::io::duplex(1 << 20);
    let src = Arc::new(FakeSource::new(64));
    let (sec_src, sec_dst) = psk();
    let (cancel_builder, shared) = builder(None);
    let (connector, acceptor) = links(sec_src.clone(), sec_dst.clone());
    let target = tokio::spawn(destination(b, sec_dst, acceptor, cancel_builder));
    let (canceller, token) = cancel_pair();
    let opts = SendOptions {
        downtime_budget: Duration::ZERO,
        max_bandwidth: 256 * 1024,
        ..Default::default()
    };
    let cancel_soon = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        canceller.cancel().unwrap();
    };
    let (sent, ()) = tokio::join!(
        source(a, sec_src, &connector, src.clone(), &opts, token),
        cancel_soon
    );
    assert!(
        matches!(sent, Err(MigrationError::Cancelled)),
        "{:?}",
        sent.err()
    );
    let target = tokio::time::timeout(Duration::from_secs(10), target)
        .await
        .expect("the destination is told")
        .unwrap();
    let err = target.unwrap_err().to_string();
    assert!(err.contains("cancelled"), "{err}");
    assert!(!shared.lock().unwrap().resumed);
    assert!(src.running.load(Ordering::SeqCst));
    assert!(!src.released.load(Ordering::SeqCst));

    // A destination that stops reading: the hard limit ends it, offline too (the guest was
    // paused by the migration and runs again).
    for offline in [false, true] {
        let (a, mut a_far) = tokio::io::duplex(64 * 1024);
        let (mut b_far, b) = tokio::io::duplex(64 * 1024);
        let src = Arc::new(FakeSource::new(8));
        let (stalled_builder, _shared) = builder(None);
        let (connector, acceptor) = links(SourceSecurity::Insecure, DestinationSecurity::Insecure);
        let target = tokio::spawn(destination(
            b,
            DestinationSecurity::Insecure,
            acceptor,
            stalled_builder,
        ));
        // A relay that forwards the first 100 kB each way, then stops reading.
        let stall = tokio::spawn(async move {
            let (mut ar, mut aw) = tokio::io::split(&mut a_far);
            let (mut br, mut bw) = tokio::io::split(&mut b_far);
            let up = async {
                let mut left = 100_000usize;
                let mut buf = vec![0u8; 4096];
                while left > 0 {
                    let n = ar.read(&mut buf[..left.min(4096)]).await.unwrap();
                    bw.write_all(&buf[..n]).await.unwrap();
                    left -= n;
                }
                std::future::pending::<()>().await;
            };
            let down = async {
                let _ = tokio::io::copy(&mut br, &mut aw).await;
            };
            tokio::join!(up, down);
        });
        let opts = SendOptions {
            offline,
            timeout: Duration::from_millis(500),
            on_timeout: OnTimeout::Cancel,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let r = source(
            a,
            SourceSecurity::Insecure,
            &connector,
            src.clone(),
            &opts,
            CancelToken::never(),
        )
        .await;
        assert!(
            matches!(r, Err(MigrationError::TimedOut(_))),
            "{:?}",
            r.err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(src.running.load(Ordering::SeqCst), "offline={offline}");
        stall.abort();
        target.abort();
    }
}

#[tokio::test]
async fn several_connections_with_compression_copy_memory_exactly() {
    for (connections, compress) in [(3u32, None), (1, Some(3)), (4, Some(1))] {
        let opts = SendOptions {
            downtime_budget: Duration::from_secs(5),
            connections,
            compress,
            ..Default::default()
        };
        let o = migrate(FakeSource::new(16), opts, None).await;
        let summary = o.source.unwrap();
        o.target.unwrap();
        let shared = o.shared.lock().unwrap();
        assert!(shared.resumed);
        assert!(
            shared.mem == *o.src.mem.lock().unwrap(),
            "connections={connections} compress={compress:?}: memory differs"
        );
        assert_eq!(summary.connections, connections);
        assert!(summary.rounds >= 2);
        if compress.is_some() {
            // The fake guest's pages are mostly zero bytes: they compress well.
            assert!(
                summary.page_bytes_sent * 4 < summary.page_bytes_uncompressed,
                "{} sent for {} bytes of pages",
                summary.page_bytes_sent,
                summary.page_bytes_uncompressed
            );
        }
        let b = &summary.downtime_breakdown;
        assert!(
            b.pause_ms >= 0.0 && b.state_transfer_ms > 0.0 && b.commit_ms > 0.0,
            "{b:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_that_presents_another_session_is_not_taken() {
    // The destination's acceptor hands over a stranger's connection first: it joins with a
    // made-up session id and is dropped; the real ones follow.
    let (sec_src, sec_dst) = psk();
    let (connector, mut acceptor) = links(sec_src.clone(), sec_dst.clone());
    let (a, b) = tokio::io::duplex(1 << 20);
    let (stranger_near, stranger_far) = tokio::io::duplex(1 << 20);
    acceptor_push_front(&mut acceptor, stranger_far);
    let stranger = tokio::spawn({
        let sec = sec_src.clone();
        async move {
            let mut ch = secure_source(boxed(stranger_near), &sec).await.unwrap();
            let _ = ch
                .writer
                .send(
                    FrameKind::Join,
                    &crate::protocol::join_payload(&[7u8; 16], 1),
                )
                .await;
            ch
        }
    });
    let src = Arc::new(FakeSource::new(4));
    let (builder, shared) = builder(None);
    let target = tokio::spawn(destination(b, sec_dst, acceptor, builder));
    let opts = SendOptions {
        connections: 2,
        ..Default::default()
    };
    let sent = source(
        a,
        sec_src,
        &connector,
        src.clone(),
        &opts,
        CancelToken::never(),
    )
    .await;
    sent.unwrap();
    target.await.unwrap().unwrap();
    assert!(shared.lock().unwrap().mem == *src.mem.lock().unwrap());
    drop(stranger.await.unwrap());
}

/// Puts a connection ahead of the ones the source will open.
fn acceptor_push_front(acceptor: &mut LinkAcceptor, s: tokio::io::DuplexStream) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(s).unwrap();
    let mut old = std::mem::replace(&mut acceptor.rx, rx);
    tokio::spawn(async move {
        while let Some(s) = old.recv().await {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
}

/// With the log cleared lazily (KVM's manual protection), pages the guest writes again during
/// a round wait for the next one, and memory still arrives exact.
#[tokio::test]
async fn pages_written_again_during_a_round_wait_for_the_next() {
    let opts = SendOptions {
        downtime_budget: Duration::ZERO,
        max_rounds: 4,
        auto_converge: false,
        ..Default::default()
    };
    let o = migrate(FakeSource::lazy(64), opts, None).await;
    let summary = o.source.unwrap();
    o.target.unwrap();
    assert!(
        o.shared.lock().unwrap().mem == *o.src.mem.lock().unwrap(),
        "memory differs"
    );
    let skipped: u64 = summary
        .rounds_detail
        .iter()
        .map(|r| r.redirtied_pages_skipped)
        .sum();
    assert!(skipped > 0, "{:?}", summary.rounds_detail);
}

/// After the commit neither side gives the guest up on its own: a destination that cannot
/// take the disk keeps retrying (and says so) instead of discarding a VM the source already
/// handed over; the source, without Resumed, reports the outcome unknown, keeps the guest
/// paused and waits, until the operator decides (abandon) or a late Resumed arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_commit_neither_side_discards_the_guest() {
    for late_resumed in [false, true] {
        let (a, b) = tokio::io::duplex(1 << 20);
        let src = Arc::new(FakeSource::new(4));
        let (sec_src, sec_dst) = psk();
        let (connector, acceptor) = links(sec_src.clone(), sec_dst.clone());
        let (builder, shared) = builder(None);
        shared.lock().unwrap().locked = true;
        let (dst_cancel, dst_token) = cancel_pair();
        let waiting = Arc::new(AtomicU32::new(0));
        let target = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                let ch = secure_destination(boxed(b), &sec_dst).await?;
                let (mut more, mut builder) = (acceptor, builder);
                let mut events = |e: crate::receiver::ReceiveEvent<'_>| {
                    if let crate::receiver::ReceiveEvent::WaitingForDisks(_) = e {
                        waiting.fetch_add(1, Ordering::SeqCst);
                    }
                };
                receive(ch, &mut more, &mut builder, dst_token, &mut events)
                    .await
                    .map(|_| ())
            }
        });
        let opts = SendOptions {
            confirm_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (canceller, token) = cancel_pair();
        let unconfirmed = Arc::new(AtomicBool::new(false));
        let ch = secure_source(boxed(a), &sec_src).await.unwrap();
        let sending = tokio::spawn({
            let (src, unconfirmed) = (src.clone(), unconfirmed.clone());
            async move {
                send(
                    ch,
                    &connector,
                    src,
                    &opts,
                    |e| {
                        if let crate::sender::SendEvent::Unconfirmed(_) = e {
                            unconfirmed.store(true, Ordering::SeqCst)
                        }
                    },
                    token,
                )
                .await
            }
        });
        // The source reports the outcome unknown; its guest stays paused, its disks released.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !unconfirmed.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "no Unconfirmed event");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!src.running.load(Ordering::SeqCst));
        assert!(src.released.load(Ordering::SeqCst));
        // The destination has committed: a stop is refused, and it keeps trying the disk.
        assert!(dst_cancel.cancel().is_err());
        while waiting.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no WaitingForDisks event"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!shared.lock().unwrap().resumed);
        if late_resumed {
            // The disk comes free: the destination resumes, and its late Resumed makes the
            // migration a success on the source.
            shared.lock().unwrap().locked = false;
            let sent = sending.await.unwrap();
            assert!(sent.is_ok(), "{:?}", sent.err());
            target.await.unwrap().unwrap();
            assert!(shared.lock().unwrap().resumed);
        } else {
            // The operator decides on the source: the wait ends, the guest is still paused.
            canceller.abandon();
            let sent = sending.await.unwrap();
            assert!(
                matches!(sent, Err(MigrationError::CommitUnknown(_))),
                "{:?}",
                sent.err()
            );
            assert!(!src.running.load(Ordering::SeqCst));
            assert!(shared.lock().unwrap().lock_attempts > 1);
            target.abort();
        }
    }
}
