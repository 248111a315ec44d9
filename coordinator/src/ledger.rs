//! The job ledger: what a job did and what it cost, and what the cache saved.

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
    pub shards: u64,
    pub shards_labeled: u64,
    pub cache_hits: u64,
    pub shards_failed: u64,
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
    /// Shard attempts retried, leases that expired, speculative tail copies.
    pub retries: u64,
    pub lease_expiries: u64,
    pub speculative_leases: u64,
    /// Stores of rejected entries, one per shard that had any.
    pub reject_files: Vec<String>,
    pub failed_shards: Vec<FailedShardSummary>,
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

/// A shard that failed every attempt, as clients print it.
#[derive(Clone, Debug, Serialize)]
pub struct FailedShardSummary {
    pub index: u64,
    pub fingerprint: String,
    pub attempts: u32,
    pub last_error: String,
}

impl JobSummary {
    /// The summary of a job as the coordinator reports it.
    pub fn from_wire(job: &distill_proto::v1::Job) -> Self {
        let l = job.ledger.unwrap_or_default();
        let spec = job.spec.clone().unwrap_or_default();
        Self {
            job_id: job.job_id.clone(),
            state: distill_proto::v1::JobState::try_from(job.state)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("JOB_STATE_")
                        .to_lowercase()
                })
                .unwrap_or_default(),
            error: job.error.clone(),
            corpus: spec.corpus.map(|c| c.url).unwrap_or_default(),
            store: spec.store,
            teacher: spec.teacher,
            teacher_fingerprint: job.teacher_fingerprint.clone(),
            output_fingerprint: job.output_fingerprint.clone(),
            manifest: job.manifest.clone(),
            shards: l.shards,
            shards_labeled: l.shards_labeled,
            cache_hits: l.cache_hits,
            shards_failed: l.shards_failed,
            rows: l.rows,
            rejected_rows: l.rejected_rows,
            truncated_rows: l.truncated_rows,
            tokens: l.tokens,
            padded_tokens: l.padded_tokens,
            teacher_seconds: l.teacher_seconds,
            teacher_seconds_saved: l.teacher_seconds_saved,
            bytes_written: l.bytes_written,
            wall_seconds: l.wall_seconds,
            retries: l.retries,
            lease_expiries: l.lease_expiries,
            speculative_leases: l.speculative_leases,
            reject_files: job.reject_files.clone(),
            failed_shards: job
                .failed_shards
                .iter()
                .map(|f| FailedShardSummary {
                    index: f.index,
                    fingerprint: f.fingerprint.clone(),
                    attempts: f.attempts,
                    last_error: f.last_error.clone(),
                })
                .collect(),
        }
    }
}
