//! Errors of teachers: each names the model, device or setting it is about.

/// Errors of teacher loading and labeling.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("model {location}: {reason}")]
    Model { location: String, reason: String },

    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },

    #[error("{0}")]
    Config(String),

    #[error("teacher forward pass failed: {0}")]
    Candle(candle_core::Error),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),

    #[error(transparent)]
    Spec(#[from] distill_cache::spec::SpecError),
}

pub type Result<T, E = TeacherError> = std::result::Result<T, E>;

impl From<candle_core::Error> for TeacherError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(without_backtrace(e))
    }
}

/// candle attaches a multi-line backtrace to its errors when `RUST_BACKTRACE` is set; a user's error
/// message stays one line.
pub fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e,
    }
}
