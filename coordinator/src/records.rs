//! The JSON records the coordinator keeps per job in the store (paths in [`distill_cache::jobs`]).

use crate::sched::{FailedShard, JobState, Ledger};
use distill_cache::corpus::CorpusSpec;
use serde::{Deserialize, Serialize};

/// An accepted job: everything needed to plan it again after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub corpus: CorpusSpec,
    pub teacher: String,
    pub store: String,
    pub output: String,
    pub dtype: String,
    pub shard_size: u64,
    pub strict: bool,
    pub max_attempts: u32,
    pub teacher_fingerprint: String,
    pub output_fingerprint: String,
    pub created_unix_ms: i64,
}

/// A finished job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultRecord {
    pub state: JobState,
    pub error: Option<String>,
    pub ledger: Ledger,
    pub failed_shards: Vec<FailedShard>,
    pub reject_files: Vec<String>,
    pub manifest: Option<String>,
    pub finished_unix_ms: i64,
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
