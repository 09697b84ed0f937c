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
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundStats {
    pub round: u32,
    pub pages_sent: u64,
    pub zero_pages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub dirty_pages_after: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total_seconds: f64,
    /// Source-side pause to destination resume, milliseconds.
    pub downtime_ms: f64,
    pub bytes_sent: u64,
    pub rounds: u32,
    pub pages_sent: u64,
    pub zero_pages_skipped: u64,
    pub throughput_bytes_per_sec: f64,
    /// How the switchover was reached: "converged", "round-limit", "timeout-forced", "offline".
    pub switchover: String,
    pub rounds_detail: Vec<RoundStats>,
}
