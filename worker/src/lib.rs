//! The worker daemon (`distill worker`): lease shards from a coordinator, label them with a teacher
//! from `distill-teacher`, commit them to the cache, report.
//!
//! - [`pull`]: register, lease with prefetch, heartbeat, label on a blocking thread, commit, complete,
//!   drain on SIGTERM, re-register with a restarted coordinator.
//!
//! What runs where: forward passes are CPU/GPU-bound and run on a blocking thread; the pull loop's
//! gRPC calls, heartbeats and store reads and writes run on the async runtime beside them.

pub mod error;
pub mod pull;

pub use error::{Result, WorkerError};
