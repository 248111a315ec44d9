//! The benchmarks behind the README's performance figures, as library calls over typed specs:
//!
//! - [`teacher`]: a teacher's throughput on this machine against its GEMM peak, bare and end to end;
//! - [`coordinator`]: one coordinator under many simulated workers (cycles/s, latency, memory);
//! - [`plan`]: planning a large JSONL corpus against a store, cold, warm and reused (rows/s, MB/s).
//!
//! A measurement harness: its errors are `anyhow` (they end a benchmark run, with context), unlike
//! the product's libraries.

pub mod coordinator;
pub mod plan;
pub mod teacher;
