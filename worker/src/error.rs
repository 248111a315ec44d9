//! Errors of the worker: each names the model, shard or setting it is about.

/// Errors of teacher loading and labeling.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("model {location}: {reason}")]
    Model { location: String, reason: String },

    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },

    #[error("{0}")]
    Config(String),

    #[error("teacher forward pass failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
