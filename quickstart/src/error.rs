//! The quickstart's one error type: each layer's error as it is, files named.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// A spec that cannot run, naming the setting.
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Label(#[from] distill_label::LabelError),

    #[error(transparent)]
    Task(#[from] distill_tasks::TaskError),

    #[error(transparent)]
    Student(#[from] distill_student_trainer::StudentError),

    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),

    #[error(transparent)]
    Teacher(#[from] distill_teacher::TeacherError),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("a worker thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),

    #[error("report: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = QuickstartError> = std::result::Result<T, E>;

/// Writes a file, naming it in the error.
pub(crate) fn write(path: &std::path::Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| QuickstartError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates a folder and its parents, naming it in the error.
pub(crate) fn create_dir(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| QuickstartError::Io {
        path: path.to_owned(),
        source,
    })
}
