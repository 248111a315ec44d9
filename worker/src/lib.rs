//! The worker side of distill: teachers in candle and the labeling of one shard.
//!
//! - [`bert`]: the BERT encoder (one file per architecture, config read straight from `config.json`);
//! - [`teacher`]: a loaded teacher — model, tokenizer (no fixed padding, truncation at the model's limit)
//!   and head (sentence-transformers pooling / normalisation, or a sequence-classification head);
//! - [`batching`]: length-sorted batches under a token budget, so padding wastes almost nothing;
//! - [`pass`]: labels one shard and returns its rows and metadata in the cache format;
//! - [`pull`]: the `distill worker` loop: lease shards from a coordinator, label, commit, report;
//! - [`fixtures`]: tiny random BERT models for fast tests.
//!
//! What runs where: forward passes are CPU/GPU-bound and run on a blocking thread; the pull loop's
//! gRPC calls, heartbeats and store reads and writes run on the async runtime beside them.

pub mod batching;
pub mod bert;
pub mod error;
pub mod fixtures;
pub mod pass;
pub mod pull;
pub mod teacher;

pub use error::{Result, WorkerError};
pub use teacher::{DeviceSpec, Teacher};
