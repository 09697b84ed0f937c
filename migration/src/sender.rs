//! The source side: rounds of memory while the guest runs (on one or more connections, see
//! [`crate::lanes`]), a switchover chosen by recent bandwidth against the downtime budget,
//! then state and commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::cancel::CancelToken;
use crate::channel::{Channel, Reader};
use crate::dirty::DirtyBitmap;
use crate::lanes::{self, RoundPlan, SharedWriter};
use crate::progress::{DowntimeBreakdown, Progress, RoundStats, Summary};
use crate::protocol::{self, Connector, Hello, MigrationError};
use crate::vm::{RamRegion, SourceVm, VmError, VmResult};
use crate::wire::{FrameKind, WireError, PAGE_SIZE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    /// Give up and keep the guest running on the source.
    Cancel,
    /// Pause the guest and copy what is left (a longer pause, but the migration completes).
    Force,
}

#[derive(Clone)]
pub struct SendOptions {
    /// Stop-and-copy from the start.
    pub offline: bool,
    pub downtime_budget: Duration,
    /// Bytes per second over all connections, 0 for no limit.
    pub max_bandwidth: u64,
    pub max_rounds: u32,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    pub auto_converge: bool,
    /// Connections that carry the pages (1 to [`protocol::MAX_CONNECTIONS`]).
    pub connections: u32,
    /// zstd level for page frames, None for no compression.
    pub compress: Option<i32>,
    /// How long to wait for the destination's Resumed before reporting the outcome unknown.
    pub confirm_timeout: Duration,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            offline: false,
            downtime_budget: Duration::from_millis(300),
            max_bandwidth: 0,
            max_rounds: 30,
            timeout: Duration::from_secs(600),
            on_timeout: OnTimeout::Force,
            auto_converge: true,
            connections: 1,
            compress: None,
            confirm_timeout: CONFIRM_TIMEOUT,
        }
    }
}

impl SendOptions {
    /// When the whole migration must be over (before commit): `timeout` when giving up is the
    /// answer, twice that when a forced stop-and-copy may still need its time.
    pub fn hard_limit(&self) -> Duration {
        match self.on_timeout {
            OnTimeout::Cancel => self.timeout,
            OnTimeout::Force => self.timeout.saturating_mul(2),
        }
    }
}

/// Pages set over every region's bitmap.
fn dirty_page_count(dirty: &[DirtyBitmap]) -> u64 {
    dirty.iter().map(|d| d.count() as u64).sum()
}

/// Adds to each region's bitmap in `dirty` the pages `more` has set for that region.
fn add_dirty(dirty: &mut [DirtyBitmap], more: &[DirtyBitmap]) {
    for (d, m) in dirty.iter_mut().zip(more) {
        d.union_with(m);
    }
}

/// How many times a switchover may be put off because the guest wrote more while its disks
/// were flushed before the pause than the budget allows (each time one more round is sent).
const MAX_SWITCHOVER_RECHECKS: u32 = 3;

/// The downtime the switchover expects for `pages` dirty pages: their bytes at `bandwidth`,
/// and the round trips the pause waits for besides the pages (the state to the destination and
/// its Ready, Commit and its Resumed), each at least `rtt_ms`, the shortest wait for a round's
/// acknowledgement seen so far.
fn expected_downtime_ms(pages: u64, bandwidth: f64, rtt_ms: f64) -> f64 {
    if bandwidth <= 0.0 {
        return 0.0;
    }
    (pages * PAGE_SIZE as u64) as f64 / bandwidth * 1000.0 + 2.0 * rtt_ms
}

/// How long the source tries to tell the destination why it gave up.
const TELL_DESTINATION: Duration = Duration::from_secs(2);
/// How long a cancelled or timed-out migration may take to stop at a frame boundary (so the
/// destination reads the reason rather than half a record) before it is cut short.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the source waits for the destination's Resumed before it reports the outcome as
/// unknown (it goes on waiting for a late one while the connection lasts).
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// What the source tells its caller while it runs, besides the final result.
pub enum SendEvent<'a> {
    /// A dirty round ended.
    Round(&'a Progress),
    /// Commit is about to be sent: from here the source never resumes the guest on its own.
    Committed,
    /// The destination's Resumed did not come in time: the outcome is unknown (the guest may
    /// run there); the source goes on waiting for a late Resumed while the connection lasts.
    Unconfirmed(&'a str),
}

/// Sends `vm` over `primary` (a channel already secured, see [`crate::channel`]) and as many
/// more connections as [`SendOptions::connections`] asks, opened with `more`, until done,
/// failed, cancelled through `cancel`, or past [`SendOptions::hard_limit`]. On any of those
/// before commit, the guest is back as it was (running, or paused if it was) when this
/// returns. After commit the guest stays paused whatever happens: the result is a summary
/// once the destination confirms, or [`MigrationError::CommitUnknown`] when the connection
/// ended without a confirmation or the operator decided through [`crate::cancel::Canceller::abandon`].
pub async fn send<F>(
    primary: Channel,
    more: &dyn Connector,
    vm: Arc<dyn SourceVm>,
    opts: &SendOptions,
    mut events: F,
    mut cancel: CancelToken,
) -> Result<Summary, MigrationError>
where
    F: FnMut(SendEvent<'_>),
{
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let awaiting_peer = Arc::new(AtomicBool::new(false));
    let mut run = Run {
        vm,
        opts,
        reader: primary.reader,
        lanes: vec![Arc::new(Mutex::new(primary.writer))],
        extra_readers: Vec::new(),
        regions: Arc::new(Vec::new()),
        summary: Summary::default(),
        paused_at: None,
        pausing: None,
        stop: stop.clone(),
        awaiting_peer: awaiting_peer.clone(),
    };
    let limit = opts.hard_limit();
    let outcome = {
        let mut progress = |p: &Progress| events(SendEvent::Round(p));
        let work = run.precopy_and_switch(more, &mut progress, started);
        tokio::pin!(work);
        // A cancel or the hard limit asks the lanes to stop at their next frame boundary, so
        // the destination can still read why; past a grace period the work is cut short.
        let interrupted = tokio::select! {
            r = &mut work => Ok(r),
            _ = cancel.cancelled() => Err(cancel_error(&cancel)),
            _ = tokio::time::sleep(limit) => Err(MigrationError::TimedOut(limit.as_secs())),
        };
        match interrupted {
            Ok(r) => r,
            Err(why) => {
                stop.store(true, Ordering::SeqCst);
                // The work is suspended: waiting for the peer, it has nothing to finish.
                if !awaiting_peer.load(Ordering::SeqCst) {
                    let _ = tokio::time::timeout(STOP_GRACE, &mut work).await;
                }
                Err(why)
            }
        }
    };
    // A cancel that came in while the last step ran still wins: nothing is committed yet.
    let outcome = outcome.and_then(|()| {
        if cancel.commit() {
            Ok(())
        } else {
            Err(cancel_error(&cancel))
        }
    });
    if let Err(e) = outcome {
        return Err(run.give_up(e).await);
    }
    // Point of no return: from here the source never runs the guest again on its own. Every
    // failure below leaves it paused, intact, for the operator to decide.
    events(SendEvent::Committed);
    crate::faults::reached("source.before_commit");
    let commit_at = Instant::now();
    let sent = run.lanes[0].lock().await.send(FrameKind::Commit, &[]).await;
    // The disks were flushed when the guest paused; the destination takes them over now.
    // Released even when the send failed: the Commit may still have gone out.
    run.vm.release();
    // While the destination resumes: nothing here needs the dirty log any more (the source
    // never runs the guest again on its own; a forced resume needs none either).
    run.vm.stop_dirty_log();
    sent.map_err(|e| {
        MigrationError::CommitUnknown(format!("sending commit failed: {}", crate::error_chain(&e)))
    })?;
    crate::faults::reached("source.commit_sent");
    let resume_ms = run.await_resumed(&mut events, &mut cancel).await?;
    crate::faults::reached("source.resumed_received");
    let mut summary = run.summary;
    summary.downtime_breakdown.commit_ms = ms(commit_at.elapsed());
    summary.downtime_breakdown.destination_resume_ms = resume_ms;
    summary.downtime_ms = run.paused_at.map_or(0.0, |t| ms(t.elapsed()));
    summary.total_seconds = started.elapsed().as_secs_f64();
    let mut bytes = run.reader.bytes;
    for lane in &run.lanes {
        bytes += lane.lock().await.bytes;
    }
    summary.bytes_sent = bytes;
    let secs = summary.memory_seconds.max(1e-6);
    summary.throughput_bytes_per_sec = summary.page_bytes_uncompressed as f64 / secs;
    summary.wire_bytes_per_sec = summary.page_bytes_sent as f64 / secs;
    Ok(summary)
}

/// The error a fired cancel token stands for.
fn cancel_error(cancel: &CancelToken) -> MigrationError {
    match cancel.reason() {
        Some(why) => MigrationError::GuestEnded(why),
        None => MigrationError::Cancelled,
    }
}

/// Whether a read failed only because the peer was silent for the I/O timeout (the
/// connection itself may still deliver), not because it is gone.
fn only_silent(e: &WireError) -> bool {
    let stalled = |io: &std::io::Error| {
        io.get_ref()
            .is_some_and(|i| i.is::<crate::deadline::Stalled>())
    };
    match e {
        WireError::Stalled(io) | WireError::Io(io) => stalled(io),
        _ => false,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A duration in milliseconds the destination reports (u32 le), or 0.
fn millis(payload: &[u8]) -> f64 {
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0.0, |b| f64::from(u32::from_le_bytes(b)))
}

struct Run<'a> {
    vm: Arc<dyn SourceVm>,
    opts: &'a SendOptions,
    /// The first connection's reading side: the destination's answers come here.
    reader: Reader,
    /// One writer per connection; the first also carries the control frames.
    lanes: Vec<SharedWriter>,
    /// The extra connections' reading sides, kept open for as long as their writers.
    extra_readers: Vec<Reader>,
    regions: Arc<Vec<RamRegion>>,
    summary: Summary,
    paused_at: Option<Instant>,
    /// A pause of the vCPUs running on the blocking pool: a give-up waits for it (it is
    /// bounded) so that a guest paused after the migration gave up is resumed too.
    pausing: Option<tokio::task::JoinHandle<VmResult<()>>>,
    /// Set by a cancel or the hard limit: lanes stop at their next frame boundary.
    stop: Arc<AtomicBool>,
    /// True while the work waits for the destination's next frame: nothing is half-written
    /// then (every read follows a finished write), so a cancel need not wait for a boundary.
    awaiting_peer: Arc<AtomicBool>,
}

impl Run<'_> {
    /// Puts the guest back as it was and tells the destination why (both bounded in time);
    /// returns the error to report.
    async fn give_up(&mut self, e: MigrationError) -> MigrationError {
        // A send that failed because the destination gave up: its reason is probably waiting
        // in the stream, and says more than "connection lost".
        let e = match e {
            MigrationError::Wire(WireError::Remote(reason)) => MigrationError::Destination(reason),
            MigrationError::Wire(WireError::Io(io)) => {
                match tokio::time::timeout(Duration::from_millis(500), self.reader.recv()).await {
                    Ok(Err(WireError::Remote(reason))) => MigrationError::Destination(reason),
                    _ => MigrationError::Wire(WireError::Io(io)),
                }
            }
            other => other,
        };
        // The guest first: it must not wait on a stalled connection. A pause still under way
        // is waited for (it is bounded): the guest it stops must run again too.
        if let Some(pausing) = self.pausing.take() {
            if let Ok(Ok(())) = pausing.await {
                self.paused_at.get_or_insert_with(Instant::now);
            }
        }
        self.vm.stop_dirty_log();
        self.vm.throttle(0);
        let resumed = match self.paused_at.take() {
            Some(_) => self.vm.resume(),
            None => Ok(()),
        };
        // Then tell the destination to discard its half-built VM; a dead or stalled
        // connection does not hold us up.
        let text = crate::error_chain(&e);
        let _ = tokio::time::timeout(TELL_DESTINATION, async {
            let mut w = self.lanes[0].lock().await;
            w.send(FrameKind::Error, text.as_bytes()).await
        })
        .await;
        match resumed {
            Ok(()) => e,
            Err(resume) => MigrationError::NotResumed {
                error: Box::new(e),
                resume,
            },
        }
    }

    /// The destination's next frame, which must be `kind` (see [`Run::awaiting_peer`]).
    async fn expect(&mut self, kind: FrameKind) -> Result<Vec<u8>, MigrationError> {
        self.awaiting_peer.store(true, Ordering::SeqCst);
        let frame = self.reader.expect(kind).await.map(<[u8]>::to_vec);
        self.awaiting_peer.store(false, Ordering::SeqCst);
        Ok(frame?)
    }

    fn stopped(&self) -> Result<(), MigrationError> {
        if self.stop.load(Ordering::SeqCst) {
            // The caller reports why (cancel or time limit); this only ends the work.
            return Err(MigrationError::Cancelled);
        }
        Ok(())
    }

    /// Hello, config, and the extra connections.
    async fn open(&mut self, more: &dyn Connector) -> Result<(), MigrationError> {
        let connections = self.opts.connections.clamp(1, protocol::MAX_CONNECTIONS);
        let mut session = vec![0u8; protocol::SESSION_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut session)
            .map_err(|_| MigrationError::Protocol("no randomness for the session id".into()))?;
        let hello = Hello {
            connections,
            session: session.clone(),
            compress: self.opts.compress,
            ..Hello::new()
        };
        self.lanes[0]
            .lock()
            .await
            .send(FrameKind::Hello, &crate::envelope::seal(&hello)?)
            .await?;
        protocol::check_hello(&self.expect(FrameKind::Hello).await?)?;
        let config = self.vm.config().map_err(MigrationError::Source)?;
        self.lanes[0]
            .lock()
            .await
            .send(FrameKind::Config, &config)
            .await?;
        crate::faults::reached("source.config_sent");
        self.expect(FrameKind::Accept).await?;
        for index in 1..connections {
            let mut ch = more.connect().await?;
            ch.writer
                .send(FrameKind::Join, &protocol::join_payload(&session, index))
                .await?;
            self.lanes.push(Arc::new(Mutex::new(ch.writer)));
            self.extra_readers.push(ch.reader);
        }
        self.summary.connections = connections;
        self.summary.compress = self.opts.compress;
        Ok(())
    }

    async fn send_round(
        &mut self,
        dirty: &[DirtyBitmap],
        round: u32,
    ) -> Result<RoundStats, MigrationError> {
        self.stopped()?;
        // While the guest runs (after round 0), the round's pages are cleared in the dirty log
        // now, so a page written again before its turn shows in the log and waits for the
        // next round instead of being sent twice. Round 0 and the rounds of a paused guest
        // clear stripe by stripe.
        let skip_redirtied = round > 0 && self.paused_at.is_none();
        if skip_redirtied {
            for (r, d) in dirty.iter().enumerate() {
                self.vm
                    .clear_dirty(r, 0, d.words())
                    .map_err(MigrationError::Source)?;
            }
        }
        let plan = RoundPlan {
            round,
            zero_markers: round > 0,
            rate: self.opts.max_bandwidth as f64 / self.lanes.len() as f64,
            compress: self.opts.compress,
            stop: self.stop.clone(),
            skip_redirtied,
        };
        let t0 = Instant::now();
        let stats = lanes::send_round(&self.lanes, &self.vm, &self.regions, dirty, plan).await?;
        let handed_over = Instant::now();
        // The round counts as sent when the destination has it all (it acknowledges each
        // round): its time then measures the link end to end, not how fast the local socket
        // buffers filled, and nothing is left queued when the guest is paused.
        let ack = self.expect(FrameKind::RoundAck).await?;
        if ack != round.to_le_bytes() {
            return Err(MigrationError::Protocol(format!(
                "round {round} acknowledged as {ack:?}"
            )));
        }
        crate::faults::reached("source.round_acknowledged");
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        self.summary.pages_sent += stats.data_pages;
        self.summary.zero_pages_skipped += stats.zero_pages;
        self.summary.page_bytes_uncompressed += stats.payload_bytes;
        self.summary.page_bytes_sent += stats.bytes;
        self.summary.memory_seconds += secs;
        Ok(RoundStats {
            round,
            pages_sent: stats.data_pages,
            zero_pages: stats.zero_pages,
            bytes: stats.bytes,
            seconds: secs,
            dirty_pages_after: 0,
            redirtied_pages_skipped: stats.redirtied,
            ack_wait_ms: ms(handed_over.elapsed()),
        })
    }

    async fn precopy_and_switch<F>(
        &mut self,
        more: &dyn Connector,
        progress: &mut F,
        started: Instant,
    ) -> Result<(), MigrationError>
    where
        F: FnMut(&Progress),
    {
        self.open(more).await?;
        log::info!(
            "migration: the destination accepted the VM after {:.3} s",
            started.elapsed().as_secs_f64()
        );
        self.regions = Arc::new(self.vm.regions());
        // Dirty tracking also in an offline migration: pausing stops the vCPUs, but devices
        // write guest memory until their state is captured (a frame received, a used ring
        // updated), and those pages must follow.
        let t = Instant::now();
        self.vm.start_dirty_log().map_err(MigrationError::Source)?;
        log::info!(
            "migration: dirty logging started in {:.1} ms",
            ms(t.elapsed())
        );
        if self.opts.offline {
            self.pause().await?;
            self.summary.switchover = "offline".into();
        }
        // Round 0: everything that is not zero.
        let mut dirty: Vec<DirtyBitmap> = self
            .regions
            .iter()
            .map(|r| DirtyBitmap::full(r.pages))
            .collect();
        let mut round = 0u32;
        // The most recent round's rate: what the next round, and the switchover, can expect.
        let mut bandwidth = 0f64;
        let mut throttle = 0u8;
        let mut final_sync_ms = 0.0;
        // The shortest wait for a round's acknowledgement: a round trip and an apply.
        let mut rtt_ms = f64::INFINITY;
        let mut rechecks = 0u32;
        loop {
            let mut rs = self.send_round(&dirty, round).await?;
            let secs = rs.seconds;
            // A round of a few pages says little about the link; keep the last real figure.
            if rs.bytes >= 1 << 20 || bandwidth == 0.0 {
                bandwidth = rs.bytes as f64 / secs;
            }
            rtt_ms = rtt_ms.min(rs.ack_wait_ms);
            if let Some(paused) = self.paused_at {
                self.summary.downtime_breakdown.final_sync_ms = final_sync_ms;
                self.summary.downtime_breakdown.final_pages_ms =
                    ms(paused.elapsed()) - self.summary.downtime_breakdown.pause_ms - final_sync_ms;
                self.summary.rounds_detail.push(rs);
                break;
            }
            dirty = self.vm.take_dirty().map_err(MigrationError::Source)?;
            let dirty_pages = dirty_page_count(&dirty);
            let remaining = dirty_pages * PAGE_SIZE as u64;
            let dirty_rate = remaining as f64 / secs;
            let expected_ms = expected_downtime_ms(dirty_pages, bandwidth, rtt_ms);
            rs.dirty_pages_after = dirty_pages;
            log::info!(
                "migration round {round}: sent {} pages ({} zero) in {:.3} s, {:.1} MiB/s, {} pages dirty, expected downtime {:.0} ms",
                rs.pages_sent, rs.zero_pages, secs, bandwidth / 1048576.0, dirty_pages, expected_ms
            );
            self.summary.rounds_detail.push(rs);
            progress(&Progress {
                round,
                remaining_bytes: remaining,
                rate_bytes_per_sec: bandwidth,
                dirty_rate_bytes_per_sec: dirty_rate,
                expected_downtime_ms: expected_ms,
                bytes_sent: self.summary.page_bytes_sent,
                throttle_percent: throttle,
                pages_sent: self.summary.pages_sent,
                zero_pages: self.summary.zero_pages_skipped,
            });
            round += 1;
            let budget_ms = self.opts.downtime_budget.as_secs_f64() * 1000.0;
            let converged = round > 1 && expected_ms <= budget_ms;
            let out_of_rounds = round >= self.opts.max_rounds;
            let out_of_time = started.elapsed() >= self.opts.timeout;
            if converged || out_of_rounds || out_of_time {
                if !converged && self.opts.on_timeout == OnTimeout::Cancel {
                    let why = if out_of_time {
                        "timeout"
                    } else {
                        "round limit"
                    };
                    return Err(MigrationError::NotConverged(format!(
                        "{why} reached after {round} rounds with {dirty_pages} pages dirty (expected downtime {expected_ms:.0} ms, budget {budget_ms:.0} ms); the guest keeps running here"
                    )));
                }
                self.stopped()?;
                // What the guest wrote to its disks so far goes to stable storage while it
                // still runs: the flush inside the pause then carries only the last writes
                // (over NFS or iSCSI, each flush is round trips to the server).
                let t = Instant::now();
                let vm = self.vm.clone();
                blocking(VmError::Pause, move || vm.flush()).await?;
                self.summary.pre_pause_flush_ms += ms(t.elapsed());
                self.stopped()?;
                // The guest ran on while it was flushed: count what it wrote meanwhile, and
                // where that no longer fits the budget, send it as one more round rather than
                // inside the pause.
                let mut expected_ms = expected_ms;
                if converged && rechecks < MAX_SWITCHOVER_RECHECKS {
                    let meanwhile = self.vm.take_dirty().map_err(MigrationError::Source)?;
                    add_dirty(&mut dirty, &meanwhile);
                    let pages = dirty_page_count(&dirty);
                    expected_ms = expected_downtime_ms(pages, bandwidth, rtt_ms);
                    if expected_ms > budget_ms && !out_of_rounds && !out_of_time {
                        rechecks += 1;
                        log::info!(
                            "migration: {pages} pages dirty after the flush (expected downtime {expected_ms:.0} ms, budget {budget_ms:.0} ms): one more round first"
                        );
                        continue;
                    }
                }
                self.summary.expected_downtime_ms = expected_ms;
                self.summary.switchover = if converged {
                    "converged"
                } else if out_of_time {
                    "timeout-forced"
                } else {
                    "round-limit"
                }
                .into();
                self.pause().await?;
                // The last writes before the pause, and any the VMM made while pausing.
                let t = Instant::now();
                let last = self.vm.take_dirty().map_err(MigrationError::Source)?;
                add_dirty(&mut dirty, &last);
                final_sync_ms = ms(t.elapsed());
            } else if self.opts.auto_converge
                && round >= 2
                && dirty_rate > bandwidth * 0.5
                && throttle < 90
            {
                // The guest dirties memory faster than half the link: take CPU time from it.
                throttle = (throttle + 20).min(90);
                self.vm.throttle(throttle);
            }
        }
        self.vm.throttle(0);
        let t = Instant::now();
        let vm = self.vm.clone();
        let state = blocking(VmError::Save, move || vm.save_state()).await?;
        self.summary.downtime_breakdown.state_capture_ms = ms(t.elapsed());
        // Devices wrote guest memory while the last round was sent (or, offline, while all
        // of memory was), and capturing their state may write more: one more dirty pass.
        let t = Instant::now();
        let after_state = self.vm.take_dirty().map_err(MigrationError::Source)?;
        if after_state.iter().any(|d| d.count() > 0) {
            let rs = self.send_round(&after_state, round + 1).await?;
            self.summary.rounds_detail.push(rs);
        }
        // The dirty log stays on until Commit is out (turning it off re-registers every
        // memory slot, pause time the guest would feel); a give-up turns it off.
        for lane in &self.lanes[1..] {
            lane.lock().await.send(FrameKind::Done, &[]).await?;
        }
        self.summary.downtime_breakdown.after_state_ms = ms(t.elapsed());
        let t = Instant::now();
        self.lanes[0]
            .lock()
            .await
            .send(FrameKind::State, &state)
            .await?;
        crate::faults::reached("source.state_sent");
        let restore_ms = millis(&self.expect(FrameKind::Ready).await?);
        self.summary.downtime_breakdown.state_transfer_ms = ms(t.elapsed());
        self.summary.downtime_breakdown.destination_restore_ms = restore_ms;
        self.summary.rounds = round + 1;
        Ok(())
    }

    /// Pauses the guest and flushes its disks, on the blocking pool, so that a cancel or the
    /// time limit can still end the migration while a vCPU is slow to stop or a flush
    /// hangs (a stalled NFS server). A flush that fails or never ends counts as no pause:
    /// the give-up resumes the guest (the flush may finish later; nothing depends on it).
    async fn pause(&mut self) -> Result<(), MigrationError> {
        let t = Instant::now();
        let vm = self.vm.clone();
        let pausing = self
            .pausing
            .insert(tokio::task::spawn_blocking(move || vm.pause()));
        let paused = pausing.await;
        self.pausing = None;
        paused
            .map_err(|e| MigrationError::Source(VmError::Pause(e.to_string().into())))?
            .map_err(MigrationError::Source)?;
        // Paused from here: a flush that fails leaves the give-up to resume the guest.
        self.paused_at = Some(t);
        let vm = self.vm.clone();
        blocking(VmError::Pause, move || vm.flush()).await?;
        self.summary.downtime_breakdown = DowntimeBreakdown {
            pause_ms: ms(t.elapsed()),
            ..Default::default()
        };
        crate::faults::reached("source.paused");
        Ok(())
    }

    /// After Commit: waits for the destination's Resumed. Silence past [`CONFIRM_TIMEOUT`]
    /// is reported as unknown and the wait goes on (a late Resumed is a success); the
    /// connection ending, anything but Resumed, or the operator deciding ends it with
    /// [`MigrationError::CommitUnknown`]. The guest stays paused in every case.
    async fn await_resumed<F>(
        &mut self,
        events: &mut F,
        cancel: &mut CancelToken,
    ) -> Result<f64, MigrationError>
    where
        F: FnMut(SendEvent<'_>),
    {
        let confirm_by = tokio::time::sleep(self.opts.confirm_timeout);
        tokio::pin!(confirm_by);
        let mut reported = false;
        loop {
            let frame = tokio::select! {
                f = self.reader.recv() => f,
                _ = &mut confirm_by, if !reported => {
                    reported = true;
                    let why = format!("no answer within {} s", self.opts.confirm_timeout.as_secs());
                    events(SendEvent::Unconfirmed(&why));
                    continue;
                }
                _ = cancel.cancelled() => {
                    return Err(MigrationError::CommitUnknown(
                        "the operator decided before the destination confirmed".into(),
                    ))
                }
            };
            match frame {
                Ok(f) if f.kind == FrameKind::Resumed => return Ok(millis(f.payload)),
                Ok(f) => {
                    return Err(MigrationError::CommitUnknown(format!(
                        "the destination answered {:?} instead of Resumed",
                        f.kind
                    )))
                }
                Err(e) if only_silent(&e) => {
                    if !reported {
                        reported = true;
                        events(SendEvent::Unconfirmed(&crate::error_chain(&e)));
                    }
                }
                Err(e) => return Err(MigrationError::CommitUnknown(crate::error_chain(&e))),
            }
        }
    }
}

/// Runs a VM call that may block (flush, state capture) on the blocking pool, so the
/// migration's deadlines and its cancel stay in force while it runs; a call that panicked is
/// reported as the step `step` names.
async fn blocking<T: Send + 'static>(
    step: fn(crate::vm::Cause) -> VmError,
    f: impl FnOnce() -> VmResult<T> + Send + 'static,
) -> Result<T, MigrationError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MigrationError::Source(step(e.to_string().into())))?
        .map_err(MigrationError::Source)
}
