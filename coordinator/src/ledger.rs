//! The job ledger: what a job did and what it cost, and what the cache saved.

use serde::Serialize;

/// The final account of a job (printed as a table or, with `--json`, as JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobSummary {
    pub corpus: String,
    pub store: String,
    pub teacher: String,
    pub teacher_fingerprint: String,
    pub output_fingerprint: String,
    /// Path of the corpus manifest under the store.
    pub manifest: String,
    pub shards: u64,
    pub shards_labeled: u64,
    pub cache_hits: u64,
    pub rows: u64,
    pub rejected_rows: u64,
    pub truncated_rows: u64,
    /// Real tokens the teacher processed in this job (hits excluded).
    pub tokens: u64,
    /// Token slots including padding (hits excluded).
    pub padded_tokens: u64,
    /// Device-seconds spent on teacher forward passes in this job.
    pub teacher_seconds: f64,
    /// Device-seconds the cache hits had cost when they were produced: what this job did not pay again.
    pub teacher_seconds_saved: f64,
    pub bytes_written: u64,
    pub wall_seconds: f64,
    /// Stores of rejected entries, one per shard that had any.
    pub reject_files: Vec<String>,
}

impl JobSummary {
    /// Real ÷ padded tokens of the forward passes this job ran (1.0 when it ran none).
    pub fn padding_efficiency(&self) -> f64 {
        if self.padded_tokens == 0 {
            1.0
        } else {
            self.tokens as f64 / self.padded_tokens as f64
        }
    }

    /// Rows per wall-clock second.
    pub fn rows_per_second(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.rows as f64 / self.wall_seconds
        } else {
            0.0
        }
    }
}
