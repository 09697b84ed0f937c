//! The source's data path: one lane per connection, each sending the pages of its stripes of
//! guest memory. A page always belongs to the same stripe, so to the same lane: the
//! destination applies a lane's frames in order and a page's newer copy can never be overtaken
//! by an older one on another connection.
//!
//! Concurrency: each lane's round runs as a tokio task (on the migration worker's runtime,
//! which has a thread per core), so copying, zero-page checks, compression and encryption of
//! different lanes run on different cores while the coordinator waits for the round to end.
//! Within a lane, a page is copied once, from guest memory into the outgoing record, and
//! encrypted where it lies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::channel::Writer;
use crate::dirty::DirtyBitmap;
use crate::protocol::MigrationError;
use crate::vm::{RamRegion, SourceVm};
use crate::wire::{FrameKind, PagesWriter, PAGE_SIZE};

/// 64-page words per stripe: 2 MiB of guest memory.
pub(crate) const STRIPE_WORDS: usize = 8;
const STRIPE_PAGES: u64 = (STRIPE_WORDS * 64) as u64;

/// Up to 512 pages of one region that a lane sends together: the dirty bits of its words.
#[derive(Clone, Debug)]
pub(crate) struct Stripe {
    pub region: usize,
    /// Index of the first 64-page word in the region's bitmap.
    pub first_word: usize,
    pub words: Vec<u64>,
}

/// Splits dirty bitmaps into the stripes each of `lanes` lanes sends: stripe `s` of guest
/// physical memory (2 MiB each, counted from address 0) goes to lane `s % lanes`.
pub(crate) fn assign(
    regions: &[RamRegion],
    dirty: &[DirtyBitmap],
    lanes: usize,
) -> Vec<Vec<Stripe>> {
    let mut out = vec![Vec::new(); lanes];
    for (r, (region, bitmap)) in regions.iter().zip(dirty).enumerate() {
        let words = bitmap.words();
        let base_page = region.gpa / PAGE_SIZE as u64;
        let mut w = 0;
        while w < words.len() {
            // Stripes are aligned in guest-physical pages; a region need not start on one.
            let page = base_page + (w * 64) as u64;
            let to_boundary = (STRIPE_PAGES - page % STRIPE_PAGES).div_ceil(64) as usize;
            let n = to_boundary.max(1).min(words.len() - w);
            let chunk = &words[w..w + n];
            if chunk.iter().any(|&x| x != 0) {
                let lane = ((page / STRIPE_PAGES) % lanes as u64) as usize;
                out[lane].push(Stripe {
                    region: r,
                    first_word: w,
                    words: chunk.to_vec(),
                });
            }
            w += n;
        }
    }
    out
}

/// What one lane sent in one round.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LaneStats {
    pub bytes: u64,
    pub payload_bytes: u64,
    pub data_pages: u64,
    pub zero_pages: u64,
    /// Pages left for the next round: written again before their turn came.
    pub redirtied: u64,
}

impl LaneStats {
    pub fn add(&mut self, o: &LaneStats) {
        self.bytes += o.bytes;
        self.payload_bytes += o.payload_bytes;
        self.data_pages += o.data_pages;
        self.zero_pages += o.zero_pages;
        self.redirtied += o.redirtied;
    }
}

/// How often a lane looks at the dirty log again while it sends a round (a look copies the
/// log's bits: 32 KiB per GiB of guest memory).
const PEEK_EVERY: Duration = Duration::from_millis(10);

/// How a lane sends a round.
#[derive(Clone)]
pub(crate) struct RoundPlan {
    pub round: u32,
    /// Zero pages become markers (after round 0; in round 0 they are skipped).
    pub zero_markers: bool,
    /// Bytes per second for this lane, 0 for no limit.
    pub rate: f64,
    pub compress: Option<i32>,
    /// Set when the migration is cancelled or out of time: stop at the next frame boundary.
    pub stop: Arc<AtomicBool>,
    /// Leave out pages the guest has written again since the round began (they are in the
    /// next round anyway): the round's dirty pages were cleared in the log when it began, and
    /// the lane looks at the log again every [`PEEK_EVERY`].
    pub skip_redirtied: bool,
}

impl RoundPlan {
    fn check_stop(&self) -> Result<(), MigrationError> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(MigrationError::Cancelled);
        }
        Ok(())
    }
}

/// A connection's writer, shared by its lane and the coordinator (which sends the control
/// frames on the first one).
pub(crate) type SharedWriter = Arc<Mutex<Writer>>;

/// Sends `stripes` on `writer`: each stripe's dirty bits are cleared in the dirty log just
/// before its pages are read (so a write that lands after the read is caught next round, and
/// one before it is sent now and not again), then its pages go out, zero ones as markers or
/// not at all; the round ends with RoundEnd.
async fn send_stripes(
    writer: SharedWriter,
    vm: Arc<dyn SourceVm>,
    regions: Arc<Vec<RamRegion>>,
    stripes: Vec<Stripe>,
    plan: RoundPlan,
) -> Result<LaneStats, MigrationError> {
    plan.check_stop()?;
    let mut w = writer.lock().await;
    let started = Instant::now();
    let bytes_before = w.bytes;
    let mut stats = LaneStats::default();
    let mut frame: Option<PagesWriter> = None;
    let mut scratch = Vec::new();
    let mut peeked: Vec<Option<DirtyBitmap>> = vec![None; regions.len()];
    let mut last_peek: Option<Instant> = None;
    for s in &stripes {
        let mut words = s.words.clone();
        if plan.skip_redirtied {
            if last_peek.is_none_or(|t| t.elapsed() >= PEEK_EVERY) {
                for (r, p) in peeked.iter_mut().enumerate() {
                    *p = vm.peek_dirty(r).map_err(MigrationError::Source)?;
                }
                last_peek = Some(Instant::now());
            }
            if let Some(again) = &peeked[s.region] {
                let again = &again.words()[s.first_word..s.first_word + words.len()];
                for (w, a) in words.iter_mut().zip(again) {
                    stats.redirtied += u64::from((*w & a).count_ones());
                    *w &= !a;
                }
            }
        }
        // Clear exactly what is sent now: a page left out keeps its bit for the next round.
        vm.clear_dirty(s.region, s.first_word * 64, &words)
            .map_err(MigrationError::Source)?;
        let region = &regions[s.region];
        for (i, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let page_in_region = (s.first_word + i) * 64 + bit;
                let gpa = region.gpa + (page_in_region * PAGE_SIZE) as u64;
                let p = frame.get_or_insert_with(|| PagesWriter::begin(&mut w));
                let page = gpa / PAGE_SIZE as u64;
                // A zero page is found in guest memory, not copied first: it costs a scan and
                // travels as a marker (or, in round 0, not at all).
                if vm.page_is_zero(gpa).map_err(MigrationError::Source)? {
                    stats.zero_pages += 1;
                    if plan.zero_markers {
                        p.push_zero(&mut w, page);
                    }
                } else {
                    p.push_data(&mut w, page, |slot| {
                        vm.read_memory(gpa, slot).map(|()| true)
                    })
                    .map_err(MigrationError::Source)?;
                }
                if !p.has_room() {
                    let p = frame.take().expect("open frame");
                    flush(&mut w, p, &plan, &mut stats, &mut scratch).await?;
                    pace(&plan, w.bytes - bytes_before, started).await;
                    plan.check_stop()?;
                }
            }
        }
    }
    if let Some(p) = frame.take() {
        flush(&mut w, p, &plan, &mut stats, &mut scratch).await?;
        pace(&plan, w.bytes - bytes_before, started).await;
        plan.check_stop()?;
    }
    w.send(FrameKind::RoundEnd, &plan.round.to_le_bytes())
        .await?;
    stats.bytes = w.bytes - bytes_before;
    Ok(stats)
}

/// Ends and sends a pages frame (compressed if asked and worth it).
async fn flush(
    w: &mut Writer,
    p: PagesWriter,
    plan: &RoundPlan,
    stats: &mut LaneStats,
    scratch: &mut Vec<u8>,
) -> Result<(), MigrationError> {
    stats.data_pages += p.data_pages() as u64;
    if p.is_empty() {
        return Ok(());
    }
    p.end(w);
    stats.payload_bytes += w.payload_len() as u64;
    if let Some(level) = plan.compress {
        w.compress_payload(level, scratch)
            .map_err(|e| MigrationError::Source(crate::vm::VmError::Save(e.into())))?;
    }
    w.finish().await?;
    Ok(())
}

/// Keeps a lane under its share of the bandwidth cap (waking now and then to see whether it
/// should stop).
async fn pace(plan: &RoundPlan, sent: u64, started: Instant) {
    if plan.rate > 0.0 {
        let due = started + Duration::from_secs_f64(sent as f64 / plan.rate);
        while Instant::now() < due && !plan.stop.load(Ordering::SeqCst) {
            let nap = (due - Instant::now()).min(Duration::from_millis(100));
            tokio::time::sleep(nap).await;
        }
    }
}

/// Sends one round on every lane at once; returns when all are done (or the first fails,
/// which stops the others).
pub(crate) async fn send_round(
    lanes: &[SharedWriter],
    vm: &Arc<dyn SourceVm>,
    regions: &Arc<Vec<RamRegion>>,
    dirty: &[DirtyBitmap],
    plan: RoundPlan,
) -> Result<LaneStats, MigrationError> {
    let work = assign(regions, dirty, lanes.len());
    let mut tasks = JoinSet::new();
    for (writer, stripes) in lanes.iter().zip(work) {
        tasks.spawn(send_stripes(
            writer.clone(),
            vm.clone(),
            regions.clone(),
            stripes,
            plan.clone(),
        ));
    }
    let mut total = LaneStats::default();
    while let Some(done) = tasks.join_next().await {
        let stats = done.map_err(|e| {
            MigrationError::Protocol(format!("a lane of the migration failed: {e}"))
        })??;
        total.add(&stats);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_follow_guest_physical_addresses() {
        // Two regions: 0..3 GiB (low) and 4 GiB.. (above the MMIO gap), a page set every
        // 1 MiB; with 3 lanes, each 2 MiB stripe of guest-physical memory goes to one lane.
        let regions = vec![
            RamRegion {
                gpa: 0,
                pages: 1024,
            },
            RamRegion {
                gpa: 4 << 30,
                pages: 1024,
            },
        ];
        let dirty: Vec<DirtyBitmap> = regions
            .iter()
            .map(|r| {
                let mut b = DirtyBitmap::new(r.pages);
                for p in (0..r.pages).step_by(256) {
                    b.set(p);
                }
                b
            })
            .collect();
        let work = assign(&regions, &dirty, 3);
        let mut seen = 0;
        for (lane, stripes) in work.iter().enumerate() {
            for s in stripes {
                let page = regions[s.region].gpa / 4096 + (s.first_word * 64) as u64;
                assert_eq!((page / STRIPE_PAGES) % 3, lane as u64);
                seen += s.words.iter().map(|w| w.count_ones()).sum::<u32>();
            }
        }
        assert_eq!(seen, 8, "every dirty page is in exactly one stripe");
        // One lane takes everything.
        let one = assign(&regions, &dirty, 1);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].len(), 4);
    }
}
