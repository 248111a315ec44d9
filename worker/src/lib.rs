//! The worker daemon (`distill worker`): lease shards from a coordinator, label them with a teacher
//! from `distill-teacher`, commit them to the cache, report.
//!
//! - [`pull`]: register, lease with prefetch, heartbeat, label on the device thread, commit, complete,
//!   drain on SIGTERM, re-register with a restarted coordinator.
//! - [`device`]: the one thread that owns the device and runs the forward passes in order.
//!
//! What runs where: forward passes are CPU/GPU-bound and run on the device thread; tokenizing and
//! Parquet encoding on the blocking pool; the pull loop's gRPC calls, heartbeats and store reads and
//! writes on the async runtime beside them.

pub mod device;
pub mod error;
pub mod pull;
pub mod reuse;

pub use error::{Result, WorkerError};
