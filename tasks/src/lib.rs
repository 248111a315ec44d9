//! Tasks from the cache and gold labels, without the teacher: what turns a cached entry into a task.
//!
//! - [`labels`]: gold-label files (JSONL), with errors naming the line;
//! - [`logreg`] and [`task`]: few-shot heads (multinomial logistic regression with L2, `C` and
//!   temperature chosen by cross-validation) and zero-shot heads (label descriptions) fitted on
//!   cached embeddings, applied to the whole corpus and committed as a derived logits entry (see
//!   `distill_cache::task`);
//! - [`fit`]: `task fit` as one call over a [`fit::FitSpec`] (zero-shot, head, calibration, a
//!   classifier teacher's logits);
//! - [`cv`]: stratified k-fold cross-validation on gold labels (folds, out-of-fold scores, temperature);
//! - [`calibrate`]: calibration of a prompted teacher's class scores on the gold labels (none, a bias
//!   per class, or a small head), chosen by stratified cross-validation;
//! - [`data`]: streaming a task's cached rows, shard by shard, through a seeded shuffle buffer (what
//!   the students train on);
//! - [`suggest`]: the examples worth labeling next (teacher uncertainty, teacher–student
//!   disagreement through the [`suggest::Classifier`] a student implements, spread over the
//!   embedding space);
//! - [`metrics`]: softmax, accuracy, macro-F1, calibration error, quantiles;
//! - [`rng`]: the seeded generator every draw, fold and shuffle uses.
//!
//! It reads the cache only through `distill-cache` (and runs a teacher, through `distill-teacher`,
//! only to embed a zero-shot task's label descriptions). Students (`distill-student-trainer`) read tasks;
//! nothing here knows a student.

pub mod calibrate;
pub mod cv;
pub mod data;
pub mod error;
pub mod fit;
pub mod labels;
pub mod logreg;
pub mod metrics;
pub mod rng;
pub mod suggest;
pub mod task;

pub use error::{Result, TaskError};
