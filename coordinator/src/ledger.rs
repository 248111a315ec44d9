//! The job ledger: what a job did and what it cost, and what the cache saved.

use distill_proto::v1::Ledger;
use serde::Serialize;

/// The final account of a job (printed as a table or, with `--json`, as JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobSummary {
    pub job_id: String,
    /// running, succeeded, failed or cancelled.
    pub state: String,
    /// Why the job failed, if it did.
    pub error: String,
    pub corpus: String,
    pub store: String,
    pub teacher: String,
    pub teacher_fingerprint: String,
    pub output_fingerprint: String,
    /// Path of the corpus manifest under the store.
    pub manifest: String,
    /// Counters and costs, flattened into the summary's JSON.
    #[serde(flatten)]
    pub ledger: Ledger,
    /// Stores of rejected entries, one per shard that had any.
    pub reject_files: Vec<String>,
    /// The first few rejected entries, each `corpus:line: reason`.
    #[serde(default)]
    pub first_rejects: Vec<String>,
    pub failed_shards: Vec<FailedShardSummary>,
}

impl JobSummary {
    /// Real ÷ padded tokens of the forward passes this job ran (1.0 when it ran none).
    pub fn padding_efficiency(&self) -> f64 {
        if self.ledger.padded_tokens == 0 {
            1.0
        } else {
            self.ledger.tokens as f64 / self.ledger.padded_tokens as f64
        }
    }

    /// Rows per wall-clock second.
    pub fn rows_per_second(&self) -> f64 {
        if self.ledger.wall_seconds > 0.0 {
            self.ledger.rows as f64 / self.ledger.wall_seconds
        } else {
            0.0
        }
    }
}

/// A shard that failed every attempt, as clients print it.
#[derive(Clone, Debug, Serialize)]
pub struct FailedShardSummary {
    pub index: u64,
    pub fingerprint: String,
    pub attempts: u32,
    pub last_error: String,
}
