//! Students and tasks from the cache, without the teacher.
//!
//! - [`labels`]: gold-label files (JSONL), with errors naming the line;
//! - [`logreg`] and [`task`]: few-shot heads (multinomial logistic regression with L2, `C` and
//!   temperature chosen by cross-validation) and zero-shot
//!   heads (label descriptions) fitted on cached embeddings, applied to the whole corpus and committed
//!   as a derived logits entry (see `distill_cache::task`);
//! - [`cv`]: stratified k-fold cross-validation on gold labels (folds, out-of-fold scores, temperature);
//! - [`calibrate`]: calibration of a prompted teacher's class scores on the gold labels (none, a bias
//!   per class, or a small head), chosen by stratified cross-validation;
//! - [`finetune`]: few-shot fine-tuning of an encoder teacher on the gold labels (contrastive pairs,
//!   SetFit's way), written as a new teacher in the original's layout;
//! - [`data`]: streaming a task's cached shards through a seeded shuffle buffer;
//! - [`kd`] and [`optim`]: the distillation loss, AdamW, the learning-rate schedule, clipping;
//! - [`ngram`]: the hashed bag-of-n-grams student;
//! - [`transformer`]: the BERT student initialised from the teacher's layers, trained with candle's
//!   autograd, exported as a Hugging Face `BertForSequenceClassification`;
//! - [`lm`]: the LM student, a smaller llama distilled from a decoder teacher's cached per-token
//!   top-k (KL on top-k + tail, or sampled tokens, blended with CE), exported for `transformers` and
//!   llama.cpp, and its held-out evaluation;
//! - [`protocol`]: the quickstart's experiment protocol (split by group, draws, summaries, targets);
//! - [`recipe`]: the task students' training recipes (spec, defaults, checkpoints, run
//!   fingerprints, mimic-then-distill) that `distill train` and the quickstart run;
//! - [`checkpoint`]: training checkpoints (both students) and resuming them;
//! - [`dir`]: model folders (the `distill.json` marker, atomic writes);
//! - [`model`]: student directories (layout, loading, prediction);
//! - [`suggest`]: the examples worth labeling next (teacher uncertainty, teacher–student
//!   disagreement, spread over the embedding space);
//! - [`metrics`] and [`eval`]: accuracy, macro-F1, agreement, calibration, latency, blind spots.
//!
//! It reads the cache only through `distill-cache` and runs models through `distill-teacher`.

pub mod calibrate;
pub mod checkpoint;
pub mod cv;
pub mod data;
pub mod dir;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod kd;
pub mod labels;
pub mod lm;
pub mod logreg;
pub mod metrics;
pub mod model;
pub mod ngram;
pub mod optim;
pub mod protocol;
pub mod recipe;
pub mod rng;
pub mod suggest;
pub mod task;
pub mod transformer;

pub use error::{Result, StudentError};
