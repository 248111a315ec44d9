//! Students and tasks from the cache, without the teacher.
//!
//! This crate will hold: task heads fitted on cached teacher embeddings (few-shot logistic regression,
//! zero-shot label descriptions) that write per-task soft labels as derived cache entries; student
//! models (a transformer initialised from the teacher's layers, a hashed bag-of-n-grams model);
//! knowledge-distillation training streamed from cached Parquet shards; evaluation; and export in the
//! Hugging Face layout. It reads the cache only through `distill-cache`. It is filled by the students
//! issue; nothing depends on it yet.
