//! The gRPC contract of distill, package `distill.v1`.
//!
//! This crate will hold `proto/distill/v1/*.proto` and the tonic/prost code generated from it: a job
//! service for clients (submit, get, list, cancel, watch) and a worker service (register, lease,
//! heartbeat, complete, fail), with `from_proto` / `to_proto` conversions to the domain types in one
//! place. It is filled by the distributed-labeling issue; until then the in-process coordinator
//! (`distill_coordinator::local`) is the only way jobs run, and nothing depends on this crate.
