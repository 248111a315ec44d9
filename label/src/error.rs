//! The labeling calls' one error type: each message is one line about the input or the job.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// A spec that cannot run, naming the field.
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),

    #[error(transparent)]
    Spec(#[from] distill_cache::spec::SpecError),

    #[error(transparent)]
    Teacher(#[from] distill_teacher::TeacherError),

    #[error(transparent)]
    Transport(#[from] distill_proto::TransportError),

    /// The coordinator refused a call (bad input, auth, unknown job). In process, the message
    /// alone: it is about the user's input, not the loopback in between.
    #[error("{}", if *.in_process { message.clone() } else { format!("coordinator {url}: {message} ({code:?})") })]
    Refused {
        url: String,
        code: tonic::Code,
        message: String,
        in_process: bool,
    },

    /// The coordinator did not answer for the time the spec allows.
    #[error("the coordinator at {url} has not answered for {:.0} s ({why}); raise --wait-seconds to wait longer", .waited.as_secs_f64())]
    Unreachable {
        url: String,
        waited: Duration,
        why: String,
    },

    /// The job ended without succeeding.
    #[error("job {job} {state}: {reason}")]
    Job {
        job: String,
        state: String,
        reason: String,
    },

    /// The in-process coordinator or worker stopped with an error.
    #[error("{0}")]
    Local(String),
}

pub type Result<T, E = LabelError> = std::result::Result<T, E>;
