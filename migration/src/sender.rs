//! The source side: rounds of memory while the guest runs, a switchover chosen by measured
//! bandwidth against the downtime budget, then state, commit.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::cancel::CancelToken;
use crate::dirty::{is_zero_page, DirtyBitmap};
use crate::progress::{Progress, RoundStats, Summary};
use crate::protocol::{exchange_hello, MigrationError};
use crate::vm::{RamRegion, SourceVm};
use crate::wire::{self, FrameKind, PagesBuilder, WireError, MAX_PAGES_PER_FRAME, PAGE_SIZE};

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
    /// Bytes per second, 0 for no limit.
    pub max_bandwidth: u64,
    pub max_rounds: u32,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    pub auto_converge: bool,
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

/// How long the source tries to tell the destination why it gave up.
const TELL_DESTINATION: Duration = Duration::from_secs(2);

/// Sends `vm` over `stream`, a channel already secured (see [`crate::channel`]), until done,
/// failed, cancelled through `cancel`, or past [`SendOptions::hard_limit`]. On any of those
/// before commit, the guest is back as it was (running, or paused if it was) when this returns.
pub async fn send<S, F>(
    stream: &mut S,
    vm: &dyn SourceVm,
    opts: &SendOptions,
    mut progress: F,
    mut cancel: CancelToken,
) -> Result<Summary, MigrationError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Progress),
{
    let started = Instant::now();
    let mut run = Run {
        vm,
        opts,
        summary: Summary::default(),
        paused_at: None,
        sent: 0,
    };
    let limit = opts.hard_limit();
    let outcome = tokio::select! {
        r = run.precopy_and_switch(stream, &mut progress, started) => r,
        _ = cancel.cancelled() => Err(MigrationError::Cancelled),
        _ = tokio::time::sleep(limit) => Err(MigrationError::TimedOut(limit.as_secs())),
    };
    // A cancel that came in while the last step ran still wins: nothing is committed yet.
    let outcome = outcome.and_then(|()| {
        if cancel.commit() {
            Ok(())
        } else {
            Err(MigrationError::Cancelled)
        }
    });
    if let Err(e) = outcome {
        return Err(run.give_up(stream, e).await);
    }
    // Point of no return: from here the source never runs the guest again.
    wire::write_frame(stream, FrameKind::Commit, &[])
        .await
        .map_err(|e| MigrationError::AfterCommit(crate::error_chain(&e)))?;
    vm.release();
    let resumed = tokio::time::timeout(
        Duration::from_secs(60),
        wire::expect_frame(stream, FrameKind::Resumed),
    )
    .await;
    match resumed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(MigrationError::AfterCommit(crate::error_chain(&e))),
        Err(_) => return Err(MigrationError::AfterCommit("no answer within 60 s".into())),
    }
    let mut summary = run.summary;
    summary.downtime_ms = run
        .paused_at
        .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
    summary.total_seconds = started.elapsed().as_secs_f64();
    summary.bytes_sent = run.sent;
    summary.throughput_bytes_per_sec = run.sent as f64 / summary.total_seconds.max(1e-6);
    Ok(summary)
}

struct Run<'a> {
    vm: &'a dyn SourceVm,
    opts: &'a SendOptions,
    summary: Summary,
    paused_at: Option<Instant>,
    sent: u64,
}

impl Run<'_> {
    /// Puts the guest back as it was and tells the destination why (both bounded in time);
    /// returns the error to report.
    async fn give_up<S>(&mut self, stream: &mut S, e: MigrationError) -> MigrationError
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // A send that failed because the destination gave up: its reason is probably waiting
        // in the stream, and says more than "connection lost".
        let e = match e {
            MigrationError::Wire(WireError::Remote(reason)) => MigrationError::Destination(reason),
            MigrationError::Wire(WireError::Io(io)) => {
                match tokio::time::timeout(Duration::from_millis(500), wire::read_frame(stream))
                    .await
                {
                    Ok(Err(WireError::Remote(reason))) => MigrationError::Destination(reason),
                    _ => MigrationError::Wire(WireError::Io(io)),
                }
            }
            other => other,
        };
        // The guest first: it must not wait on a stalled connection.
        self.vm.stop_dirty_log();
        self.vm.throttle(0);
        let resumed = match self.paused_at.take() {
            Some(_) => self.vm.resume(),
            None => Ok(()),
        };
        // Then tell the destination to discard its half-built VM; a dead or stalled
        // connection does not hold us up.
        let _ = tokio::time::timeout(
            TELL_DESTINATION,
            wire::write_frame(stream, FrameKind::Error, crate::error_chain(&e).as_bytes()),
        )
        .await;
        match resumed {
            Ok(()) => e,
            Err(resume) => MigrationError::NotResumed {
                error: Box::new(e),
                resume,
            },
        }
    }

    async fn precopy_and_switch<S, F>(
        &mut self,
        stream: &mut S,
        progress: &mut F,
        started: Instant,
    ) -> Result<(), MigrationError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnMut(&Progress),
    {
        exchange_hello(stream, false).await?;
        let config = self.vm.config().map_err(MigrationError::Source)?;
        wire::write_frame(stream, FrameKind::Config, &config).await?;
        wire::expect_frame(stream, FrameKind::Accept).await?;

        let regions = self.vm.regions();
        // Dirty tracking also in an offline migration: pausing stops the vCPUs, but devices
        // write guest memory until their state is captured (a frame received, a used ring
        // updated), and those pages must follow.
        self.vm.start_dirty_log().map_err(MigrationError::Source)?;
        if self.opts.offline {
            self.pause()?;
            self.summary.switchover = "offline".into();
        }
        // Round 0: everything that is not zero.
        let mut dirty: Vec<DirtyBitmap> =
            regions.iter().map(|r| DirtyBitmap::full(r.pages)).collect();
        let mut round = 0u32;
        let mut bandwidth = 0f64;
        let mut throttle = 0u8;
        loop {
            let t0 = Instant::now();
            let stats = self.send_round(stream, &regions, &dirty, round).await?;
            let secs = t0.elapsed().as_secs_f64().max(1e-6);
            if stats.bytes > 0 {
                bandwidth = bandwidth.max(stats.bytes as f64 / secs);
            }
            if self.paused_at.is_some() {
                self.summary.rounds_detail.push(stats);
                break;
            }
            dirty = self.vm.take_dirty().map_err(MigrationError::Source)?;
            let dirty_pages: u64 = dirty.iter().map(|d| d.count() as u64).sum();
            let remaining = dirty_pages * PAGE_SIZE as u64;
            let dirty_rate = remaining as f64 / secs;
            let expected_ms = if bandwidth > 0.0 {
                remaining as f64 / bandwidth * 1000.0
            } else {
                0.0
            };
            let mut stats = stats;
            stats.seconds = secs;
            stats.dirty_pages_after = dirty_pages;
            log::info!(
                "migration round {round}: sent {} pages ({} zero skipped) in {:.3} s, {:.1} MiB/s, {} pages dirty, expected downtime {:.0} ms",
                stats.pages_sent, stats.zero_pages, secs, bandwidth / 1048576.0, dirty_pages, expected_ms
            );
            self.summary.rounds_detail.push(stats);
            progress(&Progress {
                round,
                remaining_bytes: remaining,
                rate_bytes_per_sec: bandwidth,
                dirty_rate_bytes_per_sec: dirty_rate,
                expected_downtime_ms: expected_ms,
                bytes_sent: self.sent,
                throttle_percent: throttle,
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
                self.summary.switchover = if converged {
                    "converged"
                } else if out_of_time {
                    "timeout-forced"
                } else {
                    "round-limit"
                }
                .into();
                self.pause()?;
                // The last writes before the pause, and any the VMM made while pausing.
                let last = self.vm.take_dirty().map_err(MigrationError::Source)?;
                for (d, l) in dirty.iter_mut().zip(&last) {
                    d.union_with(l);
                }
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
        let state = self.vm.save_state().map_err(MigrationError::Source)?;
        // Devices wrote guest memory while the last round was sent (or, offline, while all
        // of memory was), and capturing their state may write more: one more dirty pass.
        let after_state = self.vm.take_dirty().map_err(MigrationError::Source)?;
        if after_state.iter().any(|d| d.count() > 0) {
            let stats = self
                .send_round(stream, &regions, &after_state, round + 1)
                .await?;
            self.summary.rounds_detail.push(stats);
        }
        self.vm.stop_dirty_log();
        wire::write_frame(stream, FrameKind::State, &state).await?;
        self.sent += state.len() as u64;
        wire::expect_frame(stream, FrameKind::Ready).await?;
        self.summary.rounds = round + 1;
        Ok(())
    }

    fn pause(&mut self) -> Result<(), MigrationError> {
        self.vm.pause().map_err(MigrationError::Source)?;
        self.paused_at = Some(Instant::now());
        Ok(())
    }

    async fn send_round<S>(
        &mut self,
        stream: &mut S,
        regions: &[RamRegion],
        dirty: &[DirtyBitmap],
        round: u32,
    ) -> Result<RoundStats, MigrationError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut stats = RoundStats {
            round,
            ..Default::default()
        };
        let skip_zero = round == 0;
        let mut frame = PagesBuilder::new();
        let mut buf = vec![0u8; MAX_PAGES_PER_FRAME * PAGE_SIZE];
        let round_start = Instant::now();
        for (region, bitmap) in regions.iter().zip(dirty) {
            for (first, count) in bitmap.runs(MAX_PAGES_PER_FRAME) {
                let gpa = region.gpa + (first * PAGE_SIZE) as u64;
                let data = &mut buf[..count * PAGE_SIZE];
                self.vm
                    .read_memory(gpa, data)
                    .map_err(MigrationError::Source)?;
                // Split the run into sub-runs of pages worth sending; each page is checked once.
                let zero: Vec<bool> = data
                    .chunks_exact(PAGE_SIZE)
                    .map(|p| skip_zero && is_zero_page(p))
                    .collect();
                let mut i = 0;
                while i < count {
                    if zero[i] {
                        stats.zero_pages += 1;
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < count && (i - start) < frame.room() && !zero[i] {
                        i += 1;
                    }
                    frame.push(
                        (gpa / PAGE_SIZE as u64) + start as u64,
                        &data[start * PAGE_SIZE..i * PAGE_SIZE],
                    );
                    stats.pages_sent += (i - start) as u64;
                    if frame.room() == 0 {
                        self.flush(stream, &mut frame, &mut stats, round_start)
                            .await?;
                    }
                }
            }
        }
        self.flush(stream, &mut frame, &mut stats, round_start)
            .await?;
        wire::write_frame(stream, FrameKind::RoundEnd, &round.to_le_bytes()).await?;
        self.summary.pages_sent += stats.pages_sent;
        self.summary.zero_pages_skipped += stats.zero_pages;
        Ok(stats)
    }

    async fn flush<S>(
        &mut self,
        stream: &mut S,
        frame: &mut PagesBuilder,
        stats: &mut RoundStats,
        round_start: Instant,
    ) -> Result<(), MigrationError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if frame.is_empty() {
            return Ok(());
        }
        let payload = std::mem::take(frame).finish();
        wire::write_frame(stream, FrameKind::Pages, &payload).await?;
        stats.bytes += payload.len() as u64;
        self.sent += (payload.len() + wire::HEADER_LEN) as u64;
        if self.opts.max_bandwidth > 0 {
            // Stay under the cap: sleep until the bytes of this round fit in the time spent.
            let due = Duration::from_secs_f64(stats.bytes as f64 / self.opts.max_bandwidth as f64);
            let spent = round_start.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
        Ok(())
    }
}
