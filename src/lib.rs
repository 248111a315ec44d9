//! The `distill` command line: subcommands that wire the role crates together.
//!
//! - `distill quickstart`: the whole pipeline on Rotten Tomatoes ([`quickstart`]);
//! - `distill label`: run the teacher once over a corpus into the cache ([`label`]), on a coordinator
//!   (`--coordinator`) or in this process;
//! - `distill coordinator` / `distill worker`: the processes of a cluster ([`serve_cmd`]);
//! - `distill jobs ls|show|cancel`: a coordinator's jobs ([`jobs_cmd`]);
//! - `distill cache ls`: what a cache holds ([`cache_cmd`]);
//! - `distill task fit|ls`: tasks from cached outputs, no teacher pass ([`task_cmd`]);
//! - `distill train`: distill a student from a task ([`train_cmd`]);
//! - `distill eval` / `distill predict`: measure a model, label texts ([`eval_cmd`]);
//! - `distill bench teacher|coordinator`: throughput figures for the README ([`bench`], [`bench_coord`]).
//!
//! Nothing here knows the cache format or the model: it parses flags, builds the pieces and prints.

pub mod bench;
pub mod bench_coord;
pub mod cache_cmd;
pub mod cli;
pub mod eval_cmd;
pub mod jobs_cmd;
pub mod label;
pub mod quickstart;
pub mod remote;
mod report;
pub mod serve_cmd;
pub mod task_cmd;
pub mod train_cmd;
