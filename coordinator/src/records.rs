//! The result record the coordinator keeps per finished job in the store (paths in
//! [`distill_cache::jobs`]; the job record is [`crate::job::JobRecord`]).

use crate::sched::{FailedShard, JobState, Ledger};
use serde::{Deserialize, Serialize};

/// A finished job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultRecord {
    pub state: JobState,
    pub error: Option<String>,
    pub ledger: Ledger,
    pub failed_shards: Vec<FailedShard>,
    pub reject_files: Vec<String>,
    /// Added after 0.1: records written before read as none.
    #[serde(default)]
    pub first_rejects: Vec<String>,
    pub manifest: Option<String>,
    pub finished_unix_ms: i64,
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
