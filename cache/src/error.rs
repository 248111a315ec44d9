//! One error type for the cache contract. Every variant names the file, line, field or URL it is about,
//! so the message a user sees is one line that says what is wrong and where.

use std::path::PathBuf;

/// Errors of the cache contract.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid store URL {url:?}: {reason}")]
    StoreUrl { url: String, reason: String },

    #[error("store {url}: {reason}")]
    Store { url: String, reason: String },

    /// The store answered and refused (no such bucket, access denied): waiting does not fix it.
    #[error("store {url}: {reason}")]
    StoreRefused { url: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("corpus {url}: {reason}")]
    Corpus { url: String, reason: String },

    #[error("corpus {url}, line {line}: {reason}")]
    CorpusLine {
        url: String,
        line: u64,
        reason: String,
    },

    #[error("model {location}: {reason}")]
    Model { location: String, reason: String },

    #[error("shard {path}: {reason}")]
    Shard { path: String, reason: String },

    #[error("{path}: invalid Parquet: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("task {name:?}: {reason}")]
    Task { name: String, reason: String },

    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Result with [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
