//! Integration tests of the `distill` command and the cache, one binary made of modules.
//!
//! Tests that need the real teacher read it from `assets/models/all-MiniLM-L6-v2`
//! (`scripts/fetch-assets.sh`); tests that need S3 use `DISTILL_TEST_S3_URL` and the `AWS_*` variables
//! that `scripts/test.sh` sets after starting SeaweedFS. With `DISTILL_REQUIRE_ALL=1` (set by the test
//! script and CI) a missing prerequisite fails the test instead of skipping it.

mod chaos;
mod cluster;
mod common;
mod compat;
mod decoder;
mod deploy;
mod faults;
mod fuzz;
mod grpc;
mod kill;
mod label;
mod lm;
mod prompted;
mod pyarrow;
mod reference;
mod reuse;
mod s3;
mod students;
