//! The soft-label cache contract: the one place that knows how distill stores what a teacher produced.
//!
//! Worker, coordinator and trainer all go through this crate; none of them re-implements any of it.
//! It owns:
//!
//! - [`store`]: opening an object store from a URL (`file://`, plain paths, `s3://`, `gs://`, `az://`,
//!   `memory://`, `http(s)://`), with credentials from the usual environment variables;
//! - [`corpus`]: reading corpora (JSONL, text lines, Parquet; gzip / zstd) into deterministic shards;
//! - [`fingerprint`]: the content fingerprints that key the cache (shard content, teacher, output spec);
//! - [`model_dir`] and [`gguf`]: inspecting a teacher — an HF-layout directory or a GGUF file, local
//!   or remote — and fingerprinting it without loading any weights, so a planner can find cache hits
//!   without a GPU;
//! - [`layout`]: where each object lives in the store (content-addressed, schema-versioned paths);
//! - [`format`] and [`values`]: the Parquet schema and key-value metadata of a cached shard, and one
//!   values type with one Arrow codec per output kind (see `docs/cache-format.md`);
//! - [`commit`]: the all-or-nothing commit of a shard (conditional put) and reading it back;
//! - [`catalog`]: listing what a store holds;
//! - [`task`]: task records and their derived logits entries;
//! - [`jobs`]: the coordinator's durable job records and staged shard inputs;
//! - [`lease`]: one coordinator per store (a lease in the store, conditional creates only);
//! - [`spec`]: what an entry holds (output kinds, dtypes, top-k and prompt settings).
//!
//! Invariant: a shard object exists at its final path only if it is complete. Writers build the whole
//! Parquet file in memory and publish it with one conditional `PUT` (`PutMode::Create`), which every
//! supported store makes atomic; nothing is ever written to a final path in pieces.

pub mod catalog;
pub mod commit;
pub mod corpus;
pub mod error;
pub mod fingerprint;
pub mod format;
pub mod gguf;
pub mod jobs;
pub mod layout;
pub mod lease;
pub mod model_dir;
pub mod parquet_io;
pub mod rows;
pub mod spec;
pub mod store;
pub mod task;
pub mod values;

pub use error::{CacheError, Result};

/// Version of the cache layout and Parquet schema. Bumped on any change an old reader would misread;
/// additive changes (new optional metadata keys, new output kinds) keep it.
pub const SCHEMA_VERSION: u32 = 1;

/// What produced a shard, recorded in its metadata.
pub const PRODUCER: &str = concat!("distill ", env!("CARGO_PKG_VERSION"));
