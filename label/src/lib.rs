//! Labeling jobs as library calls: run a teacher once over a corpus into the cache.
//!
//! A [`LabelSpec`] (corpus, teacher, store, output, shard size; serde-able, with defaults) is either
//! submitted to a running coordinator and followed until it ends ([`remote`]), or run in this process
//! ([`local`]): the same coordinator and a worker holding the already loaded teacher on loopback —
//! one code path (gRPC, leases, staged inputs, commits by the worker) for a laptop and a cluster.
//! Either way [`label`] returns the job's ledger ([`JobSummary`]) or one [`LabelError`] line about
//! the user's input, not about the transport in between.
//!
//! - [`spec`]: the spec and its parts (teacher, remote);
//! - [`local`]: the job in process;
//! - [`remote`]: submitting, following, riding out coordinator restarts;
//! - [`progress`]: the progress bar over a job;
//! - [`error`]: the one error type.

pub mod error;
pub mod local;
pub mod progress;
pub mod remote;
pub mod spec;

pub use distill_coordinator::JobSummary;
pub use error::{LabelError, Result};
pub use spec::{LabelSpec, RemoteSpec, TeacherSpec};

/// Runs a labeling job — on the spec's coordinator, or in this process — and returns its ledger. A
/// job that does not succeed is an error naming why (its failed shards, or the bad input that
/// stopped planning). `progress` shows a bar on stderr.
pub async fn label(spec: &LabelSpec, progress: bool) -> Result<JobSummary> {
    spec.validate()?;
    match &spec.remote {
        Some(remote) => remote::submit(remote, spec, progress).await,
        None => local::label(spec, progress).await,
    }
}
