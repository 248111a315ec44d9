//! The coordinator: plans labeling jobs into shards and leases them to workers.
//!
//! A job is a corpus, a teacher (by fingerprint), an output spec, a shard size and the coordinator's
//! store. The planner reads the corpus into content-fingerprinted shards ([`distill_cache::corpus`]),
//! looks each one up in the cache (a hit costs nothing and is counted with the teacher-seconds it
//! saved) and stages the rest for workers ([`distill_cache::jobs`]). Workers lease shards over gRPC
//! (`distill.v1.WorkerService`), heartbeat, commit soft labels to the cache themselves and report.
//!
//! - [`sched`]: the scheduler — shards, leases, retries with backoff, speculative tail copies,
//!   teacher affinity — synchronous and clock-free, so it is tested tick by tick;
//! - [`service`]: the coordinator — scheduler behind a lock, planners, store writes, restart resume;
//! - [`server`]: gRPC services, health, reflection, auth, TLS;
//! - [`metrics`]: the Prometheus page;
//! - [`job`]: the job spec, one shape from submission (and the wire) to record and lease;
//! - [`records`]: the result records kept in the store;
//! - [`ledger`]: the job summary printed by clients;
//! - [`wire`]: every conversion between these types and the `distill.v1` messages.
//!
//! Invariant: the coordinator keeps no state that is not recoverable from the store. A shard is done
//! exactly when its Parquet file is committed (by a worker's conditional put); a restarted coordinator
//! re-plans each unfinished job and finds them.

pub mod job;
pub mod ledger;
pub mod metrics;
pub mod records;
pub mod sched;
pub mod server;
pub mod service;
pub mod wire;

pub use job::{JobRecord, JobSpec};
pub use ledger::JobSummary;
pub use service::{Coordinator, Settings, PLAN_CONCURRENCY};
