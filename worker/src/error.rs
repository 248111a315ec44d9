//! Errors of the worker's pull loop: each names the lease, model or setting it is about.

use distill_teacher::TeacherError;

/// Errors of leasing, labeling and committing shards.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Teacher(#[from] TeacherError),

    #[error("model {location}: {reason}")]
    Model { location: String, reason: String },

    #[error("{0}")]
    Config(String),

    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
