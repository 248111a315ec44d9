//! The `distill` command line: subcommands that wire the role crates together.
//!
//! - `distill label`: run the teacher once over a corpus into the cache ([`label`]);
//! - `distill cache ls`: what a cache holds ([`cache_cmd`]);
//! - `distill bench teacher`: teacher throughput figures for the README ([`bench`]).
//!
//! Nothing here knows the cache format or the model: it parses flags, builds the pieces and prints.

pub mod bench;
pub mod cache_cmd;
pub mod cli;
pub mod label;
mod report;
