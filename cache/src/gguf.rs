//! GGUF files (llama.cpp's format): what a decoder teacher in one file is, read from its header.
//!
//! The header holds the architecture's hyper-parameters, the tokenizer (vocabulary, merges, token
//! types, the pre-tokenizer's name, BOS/EOS) and the tensor directory; candle's `gguf_file` reads it.
//! This module checks what distill can run — the architecture, the tokenizer model and pre-tokenizer,
//! every tensor's type, and that every tensor lies inside the file (a truncated download fails here,
//! before any work) — and extracts the facts the planner and the teacher need.

use crate::{CacheError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::path::Path;

/// Architectures distill runs from GGUF (llama.cpp's `general.architecture`).
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// Pre-tokenizers distill implements (llama.cpp's `tokenizer.ggml.pre`).
pub const PRE_TOKENIZERS: &[&str] = &["gpt2", "default", "smollm", "llama-bpe", "qwen2"];

fn model_err(location: &str, reason: impl Into<String>) -> CacheError {
    CacheError::Model {
        location: location.to_owned(),
        reason: reason.into(),
    }
}

/// A GGUF file's header, checked.
#[derive(Debug)]
pub struct Gguf {
    pub content: Content,
    pub architecture: String,
    pub file_size: u64,
}

/// The tokenizer stored in a GGUF header (byte-level BPE, `tokenizer.ggml.model = gpt2`).
#[derive(Clone, Debug)]
pub struct GgufTokenizer {
    pub pre: String,
    pub tokens: Vec<String>,
    /// `(left, right)` pairs, by rank.
    pub merges: Vec<(String, String)>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

impl Gguf {
    /// Reads and checks the header of a local GGUF file.
    pub fn open(location: &str, path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|source| CacheError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file_size = f
            .metadata()
            .map_err(|source| CacheError::Io {
                path: path.to_owned(),
                source,
            })?
            .len();
        let content = Content::read(&mut f).map_err(|e| {
            let msg = one_line(e);
            if let Some(t) = msg.strip_prefix("unknown dtype for tensor ") {
                model_err(location, format!(
                    "a tensor has GGML type {t}, which distill cannot read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K, Q8_K): convert the model to one of those"
                ))
            } else {
                model_err(location, format!("not a readable GGUF file: {msg}"))
            }
        })?;
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| model_err(location, "GGUF metadata has no general.architecture"))?;
        if !ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(model_err(
                location,
                format!(
                    "GGUF architecture {architecture:?} is not supported (supported: {})",
                    ARCHITECTURES.join(", ")
                ),
            ));
        }
        // Every tensor must lie inside the file: a truncated copy fails here, not mid-job.
        // Sizes are computed checked: a damaged header can claim dimensions whose product overflows.
        // Tensors in file order, so the first damaged one is named whatever the map's order.
        let mut tensors: Vec<_> = content.tensor_infos.iter().collect();
        tensors.sort_by_key(|(name, info)| (info.offset, name.as_str()));
        for (name, info) in tensors {
            let dims = info.shape.dims();
            let block = info.ggml_dtype.block_size().max(1) as u64;
            let type_size = info.ggml_dtype.type_size() as u64;
            let end = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .and_then(|elems| (elems / block).checked_mul(type_size))
                .and_then(|bytes| bytes.checked_add(info.offset))
                .and_then(|b| b.checked_add(content.tensor_data_offset));
            let Some(end) = end else {
                return Err(model_err(
                    location,
                    format!("tensor {name} claims a shape of {dims:?}, larger than any file: the GGUF file is damaged"),
                ));
            };
            if end > file_size {
                return Err(model_err(
                    location,
                    format!(
                        "the GGUF file is truncated: tensor {name} ends at byte {end} but the file has {file_size} bytes; download it again"
                    ),
                ));
            }
        }
        Ok(Self {
            content,
            architecture,
            file_size,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// An architecture hyper-parameter (`<arch>.<key>`) as an integer.
    pub fn arch_usize(&self, location: &str, key: &str) -> Result<usize> {
        let full = format!("{}.{key}", self.architecture);
        self.get(&full)
            .and_then(value_usize)
            .ok_or_else(|| model_err(location, format!("GGUF metadata has no integer {full}")))
    }

    /// An optional architecture hyper-parameter as a float.
    pub fn arch_f64(&self, key: &str) -> Option<f64> {
        let full = format!("{}.{key}", self.architecture);
        self.get(&full).and_then(|v| match v {
            Value::F32(x) => Some(*x as f64),
            Value::F64(x) => Some(*x),
            other => value_usize(other).map(|x| x as f64),
        })
    }

    /// The tokenizer of the header; a clear error for tokenizers distill does not implement.
    pub fn tokenizer(&self, location: &str) -> Result<GgufTokenizer> {
        let err = |reason: String| model_err(location, reason);
        let model = self
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| err("GGUF metadata has no tokenizer.ggml.model".into()))?;
        if model != "gpt2" {
            return Err(err(format!(
                "GGUF tokenizer model {model:?} is not supported (byte-level BPE, \"gpt2\", only): use the model's HF directory with its tokenizer.json"
            )));
        }
        let pre = self
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "default".into());
        if !PRE_TOKENIZERS.contains(&pre.as_str()) {
            return Err(err(format!(
                "GGUF pre-tokenizer {pre:?} is not supported (supported: {}): use the model's HF directory with its tokenizer.json",
                PRE_TOKENIZERS.join(", ")
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let v = self
                .get(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| err(format!("GGUF metadata has no array {key}")))?;
            v.iter()
                .map(|s| s.to_string().cloned())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| err(format!("GGUF metadata {key} holds a non-string")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| err(format!("GGUF merge {i} ({m:?}) is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let token_types = match self.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|_| err("GGUF tokenizer.ggml.token_type is not an array".into()))?
                .iter()
                .map(|t| value_usize(t).map(|x| x as i32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("GGUF tokenizer.ggml.token_type holds a non-integer".into()))?,
            None => vec![1; tokens.len()],
        };
        if token_types.len() != tokens.len() {
            return Err(err(format!(
                "GGUF tokenizer has {} tokens but {} token types",
                tokens.len(),
                token_types.len()
            )));
        }
        let n = tokens.len();
        let id = |key: &str| -> Result<Option<u32>> {
            match self.get(key).map(value_usize) {
                None => Ok(None),
                Some(Some(i)) if i < n => Ok(Some(i as u32)),
                Some(_) => Err(err(format!("GGUF {key} is not a token id below {n}"))),
            }
        };
        let add_bos = match self.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            _ => false,
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        if add_bos && bos.is_none() {
            return Err(err(
                "GGUF add_bos_token is set but there is no bos_token_id".into(),
            ));
        }
        let eos = id("tokenizer.ggml.eos_token_id")?;
        Ok(GgufTokenizer {
            pre,
            tokens,
            merges,
            token_types,
            bos,
            eos,
            add_bos,
        })
    }

    /// The vocabulary size the model's embedding matrix has.
    pub fn embedding_rows(&self, location: &str) -> Result<usize> {
        let t = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| model_err(location, "GGUF has no token_embd.weight tensor"))?;
        Ok(t.shape.dims()[0])
    }
}

/// A candle error as one line (candle attaches a backtrace when `RUST_BACKTRACE` is set).
fn one_line(e: candle_core::Error) -> String {
    let mut e = e;
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = *inner;
    }
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

/// A metadata integer of any width.
pub fn value_usize(v: &Value) -> Option<usize> {
    match v {
        Value::U8(x) => Some(*x as usize),
        Value::I8(x) => usize::try_from(*x).ok(),
        Value::U16(x) => Some(*x as usize),
        Value::I16(x) => usize::try_from(*x).ok(),
        Value::U32(x) => Some(*x as usize),
        Value::I32(x) => usize::try_from(*x).ok(),
        Value::U64(x) => usize::try_from(*x).ok(),
        Value::I64(x) => usize::try_from(*x).ok(),
        _ => None,
    }
}
