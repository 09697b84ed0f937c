//! The destination side: accept one source (and the extra connections it asks for), build the
//! empty VM from its config, fill memory from every connection at once, restore state, and
//! resume only after the source commits.
//!
//! Concurrency: the first connection is read by the caller's task; each extra connection by a
//! task of its own (on the runtime's threads), writing its pages straight into guest memory.
//! A page always arrives on the same connection (see [`crate::lanes`]), so applying each
//! connection's frames in order applies every page's copies in order.
//!
//! The destination's commit point is reading Commit. Before it, any failure, a cancel (a stop
//! request, a signal) or a silent source discards the half-built VM. After it nothing
//! discards it: the disks are taken over (retried for as long as another process holds one,
//! reported through [`ReceiveEvent::WaitingForDisks`]), the guest resumes, and only then is
//! the receive over, so a stop that comes in meanwhile waits for a running guest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::cancel::CancelToken;
use crate::channel::{Channel, Reader, Writer};
use crate::protocol::{self, Acceptor, Hello, MigrationError};
use crate::vm::{region_index, RamRegion, TargetBuilder, TargetVm, VmError, VmResult};
use crate::wire::{self, FrameKind, Run, WireError, PAGE_SIZE};

/// How long the extra connections may take to arrive and join, all together.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the destination tells its caller while it receives, besides the result.
pub enum ReceiveEvent<'a> {
    /// Commit was read: the VM is this host's now, and nothing discards it any more.
    Committed,
    /// After the commit, a disk is still held by another process; the lock is retried.
    WaitingForDisks(&'a str),
}

/// First retries of the disk locks after the commit (the source releases them as it sends
/// Commit); then [`LOCK_RETRY_SLOW`] for as long as it takes.
const LOCK_RETRY_FAST: Duration = Duration::from_millis(20);
const LOCK_RETRY_SLOW: Duration = Duration::from_millis(500);
const LOCK_FAST_FOR: Duration = Duration::from_secs(15);

/// Receives a VM over `primary`, a channel already secured (see [`crate::channel`]), taking
/// the extra connections the source asks for from `more`. On success the VM runs here. On
/// failure or cancel before the commit the half-built VM is dropped (discarded) and the
/// source is told why, if the connection still works; after the commit it always runs here.
pub async fn receive(
    primary: Channel,
    more: &mut dyn Acceptor,
    builder: &mut (dyn TargetBuilder + Send),
    mut cancel: CancelToken,
    events: &mut (dyn FnMut(ReceiveEvent<'_>) + Send),
) -> Result<Arc<dyn TargetVm>, MigrationError> {
    let Channel {
        mut reader,
        mut writer,
    } = primary;
    let received = {
        let work = until_commit(&mut reader, &mut writer, more, builder, cancel.clone());
        tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => Err(MigrationError::Protocol(
                "the destination was stopped before the commit; it discarded the VM".into(),
            )),
        }
    };
    // The commit point: a cancel that came in before Commit was read wins.
    let received = received.and_then(|r| {
        if cancel.commit() {
            Ok(r)
        } else {
            Err(MigrationError::Protocol(
                "the destination was stopped as the commit arrived; it discarded the VM".into(),
            ))
        }
    });
    match received {
        Ok((vm, keep_writers)) => {
            events(ReceiveEvent::Committed);
            crate::faults::reached("destination.commit_received");
            let resume_ms = take_over_and_resume(&vm, events).await;
            // The guest runs here now; a lost acknowledgement does not change that.
            let _ = writer
                .send(FrameKind::Resumed, &resume_ms.to_le_bytes())
                .await;
            drop(keep_writers);
            Ok(vm)
        }
        Err(e) => {
            if !matches!(e, MigrationError::Wire(WireError::Remote(_))) {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = writer
                        .send(FrameKind::Error, crate::error_chain(&e).as_bytes())
                        .await;
                    writer.shutdown().await;
                })
                .await;
                reader.drain().await;
            }
            Err(e)
        }
    }
}

/// After the commit: takes the disks over, retrying while another process holds one (each
/// attempt on the blocking pool), then resumes the guest; returns how long it took, in ms.
async fn take_over_and_resume(
    vm: &Arc<dyn TargetVm>,
    events: &mut (dyn FnMut(ReceiveEvent<'_>) + Send),
) -> u32 {
    let t = Instant::now();
    let mut last_report: Option<Instant> = None;
    loop {
        let attempt = vm.clone();
        let why = match acquire_here(attempt).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => crate::error_chain(&e),
            Err(e) => e,
        };
        let waited = t.elapsed();
        if waited >= Duration::from_secs(1)
            && last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(5))
        {
            log::warn!(
                "committed VM waits for its disks ({:.0} s so far): {why}",
                waited.as_secs_f64()
            );
            events(ReceiveEvent::WaitingForDisks(&why));
            last_report = Some(Instant::now());
        }
        tokio::time::sleep(if waited < LOCK_FAST_FOR {
            LOCK_RETRY_FAST
        } else {
            LOCK_RETRY_SLOW
        })
        .await;
    }
    crate::faults::reached("destination.disks_acquired");
    if let Err(e) = vm.resume() {
        // Resuming sets flags on parked threads and cannot really fail; say so if it does.
        log::error!("resuming the received guest: {}", crate::error_chain(&e));
    }
    crate::faults::reached("destination.resumed");
    t.elapsed().as_millis().min(u32::MAX as u128) as u32
}

/// One attempt at the disks, inside the pause the guest feels. On a multi-thread runtime it
/// runs on this worker (`block_in_place`: the worker's other tasks move to another, so a lock
/// call that blocks on a slow NFS server stalls nothing else): handing it to the blocking pool
/// instead cost 230-530 ms in about a third of the migrations of the soak (a thread of the pool
/// to start or wake, while the call itself took 2 us), all of it downtime. A current-thread
/// runtime (the crate's tests) cannot block in place and uses the pool.
async fn acquire_here(vm: Arc<dyn TargetVm>) -> Result<VmResult<()>, String> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        Ok(tokio::task::block_in_place(move || vm.acquire()))
    } else {
        tokio::task::spawn_blocking(move || vm.acquire())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Writes the runs of a `Pages` frame into guest memory, checking every range.
fn apply_pages(
    vm: &dyn TargetVm,
    regions: &[RamRegion],
    payload: &[u8],
) -> Result<(), MigrationError> {
    for run in wire::parse_pages(payload)? {
        let (first_page, pages) = match run {
            Run::Data(first, data) => (first, data.len() / PAGE_SIZE),
            Run::Zero(first, pages) => (first, pages),
        };
        let gpa = first_page
            .checked_mul(PAGE_SIZE as u64)
            .ok_or_else(|| MigrationError::Protocol("page number overflow".into()))?;
        if region_index(regions, gpa, pages).is_none() {
            return Err(MigrationError::Protocol(format!(
                "{pages} pages at {gpa:#x} lie outside guest memory"
            )));
        }
        match run {
            Run::Data(_, data) => vm.write_memory(gpa, data),
            Run::Zero(_, _) => vm.zero_memory(gpa, pages * PAGE_SIZE),
        }
        .map_err(MigrationError::Target)?;
    }
    Ok(())
}

/// What a memory-phase frame was.
enum Applied {
    Pages,
    /// The connection's pages of round N are all in.
    RoundEnd(u32),
    /// Not a memory frame.
    Other,
}

/// Applies a memory frame (plain or compressed).
fn apply_frame(
    vm: &dyn TargetVm,
    regions: &[RamRegion],
    kind: FrameKind,
    payload: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<Applied, MigrationError> {
    match kind {
        FrameKind::Pages => apply_pages(vm, regions, payload)?,
        FrameKind::PagesZ => {
            wire::decompress_pages(payload, scratch)?;
            apply_pages(vm, regions, scratch)?;
        }
        FrameKind::RoundEnd => {
            let round = payload
                .try_into()
                .map(u32::from_le_bytes)
                .map_err(|_| MigrationError::Protocol("malformed RoundEnd".into()))?;
            return Ok(Applied::RoundEnd(round));
        }
        _ => return Ok(Applied::Other),
    }
    Ok(Applied::Pages)
}

/// An extra connection's loop: memory frames until Done; the end of each round is reported
/// to the first connection's loop, which acknowledges a round once every connection is in.
async fn receive_lane(
    mut reader: Reader,
    vm: Arc<dyn TargetVm>,
    regions: Arc<Vec<RamRegion>>,
    rounds: tokio::sync::mpsc::UnboundedSender<u32>,
) -> Result<(), MigrationError> {
    let mut scratch = Vec::new();
    loop {
        let f = reader.recv().await?;
        if f.kind == FrameKind::Done {
            return Ok(());
        }
        match apply_frame(vm.as_ref(), &regions, f.kind, f.payload, &mut scratch)? {
            Applied::Pages => {}
            Applied::RoundEnd(r) => {
                let _ = rounds.send(r);
            }
            Applied::Other => {
                return Err(MigrationError::Protocol(format!(
                    "unexpected {:?} frame on an extra connection",
                    f.kind
                )))
            }
        }
    }
}

/// Counts the connections that finished each round; true when `round` is complete.
fn round_done(
    ends: &mut std::collections::HashMap<u32, u32>,
    round: u32,
    connections: u32,
) -> bool {
    let n = ends.entry(round).or_insert(0);
    *n += 1;
    if *n == connections {
        ends.remove(&round);
        return true;
    }
    false
}

/// Accepts the extra connections: each must present this migration's session id and an index
/// not taken yet; one that does not is dropped (it may be another migration's, or nobody's).
async fn join_lanes(
    more: &mut dyn Acceptor,
    hello: &Hello,
) -> Result<Vec<Channel>, MigrationError> {
    let wanted = hello.connections as usize - 1;
    let mut lanes: Vec<Option<Channel>> = (0..wanted).map(|_| None).collect();
    let mut joined = 0;
    while joined < wanted {
        let mut ch = more.accept().await?;
        let index = match ch.reader.expect(FrameKind::Join).await {
            Ok(p) => protocol::parse_join(p, &hello.session),
            Err(e) => {
                log::warn!("an extra migration connection did not join: {e}");
                continue;
            }
        };
        match index.map(|i| i as usize) {
            Some(i) if (1..=wanted).contains(&i) && lanes[i - 1].is_none() => {
                lanes[i - 1] = Some(ch);
                joined += 1;
            }
            _ => log::warn!(
                "an extra migration connection presented another session or index; closed"
            ),
        }
    }
    Ok(lanes.into_iter().flatten().collect())
}

/// Everything up to and including reading Commit; returns the VM and the extra connections'
/// writers (kept open until the guest runs).
async fn until_commit(
    reader: &mut Reader,
    writer: &mut Writer,
    more: &mut dyn Acceptor,
    builder: &mut (dyn TargetBuilder + Send),
    cancel: CancelToken,
) -> Result<(Arc<dyn TargetVm>, Vec<Writer>), MigrationError> {
    let hello = protocol::check_hello(reader.expect(FrameKind::Hello).await?)?;
    writer
        .send(FrameKind::Hello, &crate::envelope::seal(&Hello::new())?)
        .await?;
    let config = reader.expect(FrameKind::Config).await?;
    crate::faults::reached("destination.config_received");
    let vm: Arc<dyn TargetVm> = Arc::from(builder.build(config).map_err(|e| match e {
        VmError::Refused(_) => MigrationError::Refused(e),
        other => MigrationError::Target(other),
    })?);
    writer.send(FrameKind::Accept, &[]).await?;
    let regions = Arc::new(vm.regions());
    let extra = tokio::time::timeout(JOIN_TIMEOUT, join_lanes(more, &hello))
        .await
        .map_err(|_| {
            MigrationError::Protocol(format!(
                "the source's {} extra connections did not all arrive within {} s",
                hello.connections - 1,
                JOIN_TIMEOUT.as_secs()
            ))
        })??;
    let mut lanes = JoinSet::new();
    let mut keep_writers = Vec::new();
    let (rounds_tx, mut rounds_rx) = tokio::sync::mpsc::unbounded_channel();
    for ch in extra {
        keep_writers.push(ch.writer);
        lanes.spawn(receive_lane(
            ch.reader,
            vm.clone(),
            regions.clone(),
            rounds_tx.clone(),
        ));
    }
    drop(rounds_tx);
    let mut scratch = Vec::new();
    let mut ends = std::collections::HashMap::new();
    let state = loop {
        // A round every connection has finished is acknowledged, so the source measures the
        // link end to end and switches over with nothing queued.
        let finished = tokio::select! {
            frame = reader.recv() => {
                let f = frame?;
                if f.kind == FrameKind::State {
                    break f.payload.to_vec();
                }
                match apply_frame(vm.as_ref(), &regions, f.kind, f.payload, &mut scratch)? {
                    Applied::Pages => None,
                    Applied::RoundEnd(r) => Some(r),
                    Applied::Other => {
                        return Err(MigrationError::Protocol(format!(
                            "unexpected {:?} frame during memory transfer",
                            f.kind
                        )))
                    }
                }
            }
            Some(r) = rounds_rx.recv() => Some(r),
            Some(done) = lanes.join_next(), if !lanes.is_empty() => {
                done.map_err(|e| MigrationError::Protocol(format!("a connection's task failed: {e}")))??;
                None
            }
        };
        if let Some(r) = finished {
            if round_done(&mut ends, r, hello.connections) {
                writer.send(FrameKind::RoundAck, &r.to_le_bytes()).await?;
            }
        }
    };
    // Every page is in once every connection has said Done.
    while let Some(done) = lanes.join_next().await {
        done.map_err(|e| MigrationError::Protocol(format!("a connection's task failed: {e}")))??;
    }
    crate::faults::reached("destination.state_received");
    let t = Instant::now();
    vm.restore_state(&state).map_err(MigrationError::Target)?;
    let restore_ms = t.elapsed().as_millis().min(u32::MAX as u128) as u32;
    // (Once Ready is sent the source commits at its own pace: the window between the two is
    // the source's `source.before_commit`.)
    crate::faults::reached("destination.state_restored");
    // Ready lets the source commit: a destination stopped during the (blocking) restore must
    // not say it, or the source commits to a VM about to be discarded.
    if cancel.is_cancelled() {
        return Err(MigrationError::Protocol(
            "the destination was stopped before it was ready; it discarded the VM".into(),
        ));
    }
    writer
        .send(FrameKind::Ready, &restore_ms.to_le_bytes())
        .await?;
    // Nothing runs here until the source commits: it may still resume the guest itself.
    reader.expect(FrameKind::Commit).await?;
    Ok((vm, keep_writers))
}
