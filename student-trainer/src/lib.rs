//! Students distilled from a task's cached soft labels, without the teacher.
//!
//! - [`finetune`]: few-shot fine-tuning of an encoder teacher on the gold labels (contrastive pairs,
//!   SetFit's way), written as a new teacher in the original's layout — it lives here because it
//!   trains a BERT with the students' machinery (model, optimiser, checkpoints);
//! - [`tuned`]: `task fit --finetune` as one call — tune, label the corpus with the tuned teacher
//!   (through `distill-label`), fit the head;
//! - [`kd`] and [`optim`]: the distillation loss, AdamW, the learning-rate schedule, clipping;
//! - [`ngram`]: the hashed bag-of-n-grams student;
//! - [`transformer`]: the BERT student initialised from the teacher's layers, trained with candle's
//!   autograd, exported as a Hugging Face `BertForSequenceClassification`;
//! - [`lm`]: the LM student, a smaller llama distilled from a decoder teacher's cached per-token
//!   top-k (KL on top-k + tail, or sampled tokens, blended with CE), exported for `transformers` and
//!   llama.cpp, and its held-out evaluation;
//! - [`recipe`]: the task students' training recipes (spec, defaults, checkpoints, run
//!   fingerprints, mimic-then-distill) that `distill train` and the quickstart run;
//! - [`early`]: early stopping of the transformer student on a held-out slice of the soft labels;
//! - [`checkpoint`]: training checkpoints (both students) and resuming them;
//! - [`dir`]: model folders (the `distill.json` marker, atomic writes);
//! - [`model`]: student directories (layout, loading, prediction);
//! - [`predict`]: labels (or a causal LM's scores) for new texts, inputs read with errors naming
//!   the line;
//! - [`progress`]: training progress bars;
//! - [`eval`]: accuracy, macro-F1, agreement, calibration, latency, blind spots.
//!
//! Tasks, gold labels and the streaming of a task's rows come from `distill-tasks` (students read
//! tasks, never the reverse); the cache only through `distill-cache`, models through
//! `distill-teacher`.

pub mod checkpoint;
pub mod dir;
pub mod early;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod kd;
pub mod lm;
pub mod model;
pub mod ngram;
pub mod optim;
pub mod predict;
pub mod progress;
pub mod recipe;
pub mod transformer;
pub mod tuned;

pub use error::{Result, StudentError};
