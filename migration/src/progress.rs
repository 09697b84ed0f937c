//! Per-round statistics and the final summary of a migration.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub round: u32,
    /// Bytes of dirty memory still to send.
    pub remaining_bytes: u64,
    /// Throughput of the last round, bytes per second.
    pub rate_bytes_per_sec: f64,
    /// Guest write rate during the last round, bytes per second.
    pub dirty_rate_bytes_per_sec: f64,
    /// Expected pause if the switchover happened now, milliseconds.
    pub expected_downtime_ms: f64,
    pub bytes_sent: u64,
    pub throttle_percent: u8,
    /// Pages sent with their contents so far, every round.
    #[serde(default)]
    pub pages_sent: u64,
    /// Zero pages so far: skipped, or sent as markers without contents.
    #[serde(default)]
    pub zero_pages: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundStats {
    pub round: u32,
    /// Pages sent with their bytes.
    pub pages_sent: u64,
    /// Zero pages: skipped in round 0, sent as markers after.
    pub zero_pages: u64,
    /// Bytes on the wire (all connections).
    pub bytes: u64,
    pub seconds: f64,
    pub dirty_pages_after: u64,
    /// Pages of the round left for the next one: written again before their turn came.
    #[serde(default)]
    pub redirtied_pages_skipped: u64,
    /// From the last frame of the round handed to the connections to the destination's
    /// acknowledgement: what was still queued, the trip there and back, the last apply.
    #[serde(default)]
    pub ack_wait_ms: f64,
}

/// Where the pause of the switchover went, in milliseconds, from the source's pause to the
/// destination's confirmation that the guest runs there.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DowntimeBreakdown {
    /// Stopping the vCPUs, freezing the devices, flushing the disks.
    pub pause_ms: f64,
    /// The last read of the dirty log.
    pub final_sync_ms: f64,
    /// Sending the pages dirty at the pause.
    pub final_pages_ms: f64,
    /// Capturing vCPU, device and VM state.
    pub state_capture_ms: f64,
    /// The pass after the state capture (pages devices wrote meanwhile), and Done on every
    /// connection.
    pub after_state_ms: f64,
    /// Sending the state until the destination answered Ready.
    pub state_transfer_ms: f64,
    /// Of which the destination spent restoring it (as it reports).
    pub destination_restore_ms: f64,
    /// Commit until the destination answered Resumed.
    pub commit_ms: f64,
    /// Of which the destination spent taking the disks and resuming (as it reports).
    pub destination_resume_ms: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total_seconds: f64,
    /// Source-side pause to destination resume, milliseconds.
    pub downtime_ms: f64,
    pub downtime_breakdown: DowntimeBreakdown,
    /// Flushing the disks while the guest still ran, just before the pause (not downtime:
    /// it leaves the flush inside the pause only the last writes).
    #[serde(default)]
    pub pre_pause_flush_ms: f64,
    /// The downtime the switchover expected when it paused the guest (the pages dirty then
    /// at the last round's bandwidth), beside `downtime_ms`, what it came to.
    #[serde(default)]
    pub expected_downtime_ms: f64,
    /// Bytes on the wire, every connection, everything included.
    pub bytes_sent: u64,
    /// Page payload bytes before compression (equal to the page bytes sent without it).
    pub page_bytes_uncompressed: u64,
    /// Page payload bytes as sent.
    pub page_bytes_sent: u64,
    pub rounds: u32,
    pub pages_sent: u64,
    pub zero_pages_skipped: u64,
    pub connections: u32,
    /// zstd level of the page frames, if compressed.
    pub compress: Option<i32>,
    /// Time spent sending memory (every round), the throughput's denominator.
    pub memory_seconds: f64,
    /// Guest memory moved per second of the memory rounds: page bytes (before compression)
    /// over their time.
    pub throughput_bytes_per_sec: f64,
    /// What crossed the network per second of the memory rounds (after compression, framing
    /// and encryption included).
    pub wire_bytes_per_sec: f64,
    /// How the switchover was reached: "converged", "round-limit", "timeout-forced", "offline".
    pub switchover: String,
    pub rounds_detail: Vec<RoundStats>,
}
