//! The trainer's one error type. Every message names the file, line, id or field it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),

    #[error(transparent)]
    Teacher(#[from] distill_teacher::TeacherError),

    #[error(transparent)]
    Task(#[from] distill_tasks::TaskError),

    #[error(transparent)]
    Label(#[from] distill_label::LabelError),

    #[error("{path}, line {line}: {reason}")]
    Line {
        path: String,
        line: u64,
        reason: String,
    },

    #[error("{path}: {reason}")]
    File { path: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A well-formed request that cannot be done (one class, too few examples, mismatched cache…).
    #[error("{0}")]
    Invalid(String),

    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },

    #[error("tensor computation failed: {0}")]
    Candle(String),
}

impl From<candle_core::Error> for StudentError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(distill_teacher::error::without_backtrace(e).to_string())
    }
}

impl StudentError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

pub type Result<T, E = StudentError> = std::result::Result<T, E>;
