//! Teachers: the expensive models distill runs once per shard, behind one seam.
//!
//! - [`model`]: the [`Model`] trait every architecture implements (ids → final states, plus its
//!   heads), so the labeling pass, the benchmark and the trainer never name an architecture;
//! - [`bert`]: BERT-family encoders; [`llama`]: llama-family decoders (GGUF or HF) — one file each,
//!   config read straight from the model's own files;
//! - [`cpu`]: the custom CPU kernels both use (attention over each row's real tokens, GELU, SwiGLU,
//!   rotary embeddings);
//! - [`linear`]: linear layers, on the CPU through the BLAS loaded at run time where there is one,
//!   with the op that follows (GELU, SwiGLU, a norm) applied to each thread's rows in cache;
//! - [`bf16`]: products of bf16 inputs with f32 outputs (cuBLAS `gemmEx` on CUDA, the same numbers on
//!   the CPU) for `--precision bf16`;
//! - [`packed`]: weight matrices kept in their file's encoding (GGML blocks, f16, bf16), dequantized
//!   one matrix or slice at a time right before their product;
//! - [`memory`]: the memory a decoder will take, from its header, against what the machine has;
//! - [`norm`]: LayerNorm and RMSNorm, with a host kernel the linear layers share;
//! - [`tokenizer`]: tokenizers from `tokenizer.json` or GGUF metadata, with distill's overrides;
//! - [`batching`]: length-sorted batches under a token budget, so padding wastes almost nothing;
//! - [`outputs`]: heads shared by the architectures — pooling, and the per-position top-k / tail /
//!   log-partition / samples of a decoder's next-token distribution;
//! - [`prompt`]: prompts that make a decoder a classifier, resolved into token ids (prefix computed
//!   once, row, suffix, continuations);
//! - [`teacher`]: a loaded teacher (model, tokenizer, head) labeling texts for an output spec;
//! - [`pass`]: labels one shard and returns its rows and metadata in the cache format;
//! - [`fixtures`]: tiny random models (BERT; llama as GGUF and HF) for fast tests.
//!
//! Forward passes are CPU/GPU-bound: callers run them on a blocking thread.

pub mod batching;
pub mod bert;
pub mod bf16;
pub mod cpu;
pub mod device;
pub mod error;
pub mod fixtures;
pub mod linear;
pub mod llama;
pub mod memory;
pub mod model;
pub mod norm;
pub mod outputs;
pub mod packed;
pub mod pass;
pub mod prompt;
pub mod teacher;
pub mod tokenizer;

pub use device::DeviceSpec;
pub use error::{Result, TeacherError};
pub use model::{Model, ModelShape};
pub use packed::LoadOptions;
pub use packed::Resident;
pub use teacher::Teacher;
