//! Job planning and execution over the cache.
//!
//! A job is: a corpus, a teacher (by fingerprint), an output spec, a shard size and a store. The
//! coordinator splits the corpus into content-fingerprinted shards ([`distill_cache::corpus`]), looks
//! each one up in the cache, and hands only the misses to an [`Executor`] — a worker that runs the
//! teacher. It keeps the job's ledger: rows, tokens, teacher-seconds spent, and teacher-seconds saved by
//! cache hits (read from the hit shards' own metadata).
//!
//! [`local::run`] runs a job in this process, overlapping corpus reading and cache look-ups, teacher
//! forward passes and commits. Leasing shards to remote workers over gRPC builds on the same planning
//! and ledger (see the distributed-labeling issue).

pub mod ledger;
pub mod local;

pub use ledger::JobSummary;
pub use local::{Executor, JobSpec, Labeled, Progress};

/// Errors of a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),

    #[error("corpus {url}, {locator} {line}: {reason} (run without --strict to record it as a reject and go on)")]
    Strict {
        url: String,
        locator: &'static str,
        line: u64,
        reason: String,
    },

    #[error("shard {index} ({fingerprint}): {reason}")]
    Shard {
        index: u64,
        fingerprint: String,
        reason: String,
    },

    #[error("invalid job: {0}")]
    Invalid(String),

    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;
