//! Teacher models on disk: what a teacher is, and its fingerprint, without loading any weights.
//!
//! A model is either
//! - a directory (local path, `file://`, or any object-store URL) in the Hugging Face layout:
//!   `config.json`, `tokenizer.json`, `model.safetensors` (or a sharded `model.safetensors.index.json`),
//!   and for sentence-transformers models `modules.json`, `sentence_bert_config.json` and the pooling
//!   module's `config.json` — BERT-family encoders, or llama-family decoders (`model_type` `llama`,
//!   `mistral`, `qwen2`); or
//! - one GGUF file (`*.gguf`, local or at a URL) of a llama-family decoder: weights, hyper-parameters and
//!   tokenizer in one file (see [`crate::gguf`]).
//!
//! Remote models are downloaded once into a local model cache (`DISTILL_MODEL_CACHE`, default
//! `~/.cache/distill/models`).
//!
//! The planner needs the teacher fingerprint to find cache hits, and it must not need a GPU for that;
//! so the fingerprint is computed here, from the files, and the worker loads the same files.

use crate::fingerprint::{Fingerprint, Hasher};
use crate::{CacheError, Result};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How token states become one embedding (sentence-transformers `Pooling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

/// What the teacher computes per example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Head {
    /// A sentence encoder: pooled (and optionally L2-normalised) token states.
    Embedding {
        pooling: Pooling,
        normalize: bool,
        dim: usize,
    },
    /// A sequence classifier (`BertForSequenceClassification`): class logits, labels in id order.
    Classifier { labels: Vec<String> },
    /// A causal language model: next-token logits over `vocab` tokens from `dim`-wide states.
    CausalLm { vocab: usize, dim: usize },
    /// A head this release does not know (written by a newer one).
    #[serde(other)]
    Unknown,
}

/// Which family of architectures, and so which model file, runs a teacher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// BERT-family encoders (`bert.rs`).
    Bert,
    /// Llama-family decoders: Llama 2/3, Mistral, SmolLM2, Qwen2 (`llama.rs`).
    Llama,
}

/// How the model's files are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face directory: `config.json`, `tokenizer.json`, safetensors weights.
    Hf,
    /// One GGUF file.
    Gguf,
}

/// What special-token text inside corpus rows becomes, for decoder teachers: ordinary text. A row
/// containing `<|im_end|>` is tokenized as those characters, never as the control token, so corpus
/// text cannot inject control tokens. Part of the tokenizer fingerprint.
pub const SPECIAL_TEXT_POLICY: &str = "special-token text in rows is plain text";

/// A decoder teacher's tokenizer, as recorded with its cache entries: students of its `token_topk`
/// entries must use exactly this tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// Vocabulary, merges, pre-tokenizer, special tokens, BOS rule and [`SPECIAL_TEXT_POLICY`].
    pub fingerprint: Fingerprint,
    pub vocab_size: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub special_text: String,
}

/// The parts of `config.json` distill reads. Unknown fields are ignored.
#[derive(Clone, Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    id2label: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

/// An inspected model (HF directory or GGUF file).
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// Where the user said the model is.
    pub location: String,
    /// The local directory holding its files.
    pub dir: PathBuf,
    pub format: ModelFormat,
    pub family: Family,
    pub architecture: String,
    pub head: Head,
    /// Inputs are truncated to this many tokens (special tokens included); for decoders, the context
    /// window.
    pub max_seq_length: usize,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// The safetensors files, or the GGUF file.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json` (HF layout; a GGUF file holds its tokenizer).
    pub tokenizer: Option<PathBuf>,
    /// `config.json` (HF layout).
    pub config: Option<PathBuf>,
    /// Decoder teachers: the tokenizer's identity (encoders: `None`).
    pub tokenizer_info: Option<TokenizerInfo>,
}

/// Compute dtype of the teacher's forward pass (part of its fingerprint).
pub const COMPUTE_DTYPE: &str = "f32";

/// Checks that a model with this head can produce an output kind; the error says what to do instead.
pub fn check_output(
    head: &Head,
    source: &str,
    kind: crate::spec::OutputKind,
) -> std::result::Result<(), crate::spec::SpecError> {
    use crate::spec::OutputKind;
    let reason = match (head, kind) {
        (Head::Embedding { .. }, OutputKind::Embeddings)
        | (Head::Classifier { .. }, OutputKind::Logits)
        | (Head::CausalLm { .. }, OutputKind::Embeddings | OutputKind::TokenTopk) => return Ok(()),
        (Head::Embedding { .. }, _) => {
            "is a sentence encoder without a classification head: use --output embeddings"
        }
        (Head::Classifier { .. }, _) => "is a sequence classifier: use --output logits",
        (Head::CausalLm { .. }, _) => {
            "is a causal language model: use --output token-topk or embeddings"
        }
        (Head::Unknown, _) => "has a head this distill does not know",
    };
    Err(crate::spec::SpecError::WrongOutput {
        teacher: source.to_owned(),
        reason,
    })
}

/// The teacher's description stored with every cache entry (JSON in the shard metadata and in
/// `teacher.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherInfo {
    pub fingerprint: Fingerprint,
    /// Where it was loaded from the first time (informational; the fingerprint is the identity).
    pub source: String,
    pub architecture: String,
    pub head: Head,
    pub max_seq_length: usize,
    pub dtype: String,
    /// Decoder teachers: the tokenizer (absent for encoders, and in entries of the first release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerInfo>,
}

fn model_err(location: &str, reason: impl Into<String>) -> CacheError {
    CacheError::Model {
        location: location.to_owned(),
        reason: reason.into(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(location: &str, path: &Path) -> Result<T> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes =
        std::fs::read(path).map_err(|e| model_err(location, format!("cannot read {name}: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| model_err(location, format!("{}: invalid JSON: {e}", path.display())))
}

#[derive(Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct StPooling {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct StConfig {
    max_seq_length: Option<usize>,
}

impl ModelDir {
    /// Finds and inspects a model: an HF directory or a GGUF file, local or remote (downloaded first).
    pub async fn resolve(location: &str) -> Result<Self> {
        let remote = location.contains("://") && !location.starts_with("file://");
        let path = if remote {
            if is_gguf(location) {
                download_file(location).await?
            } else {
                download(location).await?
            }
        } else {
            PathBuf::from(location.strip_prefix("file://").unwrap_or(location))
        };
        Self::inspect(location, &path)
    }

    /// Inspects a local model directory or GGUF file.
    pub fn inspect(location: &str, path: &Path) -> Result<Self> {
        if path.is_file() && is_gguf(&path.to_string_lossy()) {
            return Self::inspect_gguf(location, path);
        }
        let dir = path;
        if !dir.is_dir() {
            return Err(model_err(
                location,
                if is_gguf(location) {
                    "no such GGUF file"
                } else {
                    "not a directory (expected an HF-layout model directory or a .gguf file)"
                },
            ));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(model_err(
                location,
                "no config.json: not an HF-layout model directory",
            ));
        }
        let cfg: HfConfig = read_json(location, &config_path)?;
        let model_type = cfg.model_type.clone().unwrap_or_default();
        if DECODER_MODEL_TYPES.contains(&model_type.as_str()) {
            return Self::inspect_hf_decoder(location, dir, &config_path, &cfg);
        }
        if !matches!(model_type.as_str(), "bert" | "") {
            return Err(model_err(
                location,
                format!(
                    "config.json model_type {model_type:?} is not supported (bert, {})",
                    DECODER_MODEL_TYPES.join(", ")
                ),
            ));
        }
        let hidden_size = cfg
            .hidden_size
            .ok_or_else(|| model_err(location, "config.json has no hidden_size"))?;
        let vocab_size = cfg
            .vocab_size
            .ok_or_else(|| model_err(location, "config.json has no vocab_size"))?;
        let max_pos = cfg.max_position_embeddings.unwrap_or(512);
        let architecture = cfg
            .architectures
            .first()
            .cloned()
            .unwrap_or_else(|| "BertModel".into());

        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(model_err(
                location,
                "no tokenizer.json (a fast-tokenizer file is required)",
            ));
        }
        let weights = weight_files(location, dir)?;

        let modules_path = dir.join("modules.json");
        let (head, st_max) = if architecture.ends_with("ForSequenceClassification") {
            let map = cfg.id2label.clone().unwrap_or_default();
            let mut labels: Vec<(usize, String)> = Vec::new();
            for (k, v) in map {
                let i = k.parse().map_err(|_| {
                    model_err(
                        location,
                        format!("config.json id2label key {k:?} is not an integer"),
                    )
                })?;
                labels.push((i, v));
            }
            labels.sort();
            if labels.is_empty() || labels.iter().enumerate().any(|(i, (j, _))| i != *j) {
                return Err(model_err(
                    location,
                    "config.json id2label must map 0..N-1 to label names",
                ));
            }
            (
                Head::Classifier {
                    labels: labels.into_iter().map(|(_, l)| l).collect(),
                },
                None,
            )
        } else if modules_path.is_file() {
            sentence_transformer(location, dir, &modules_path, hidden_size)?
        } else {
            // A bare encoder: mean pooling is the common default; recorded in the fingerprint.
            (
                Head::Embedding {
                    pooling: Pooling::Mean,
                    normalize: false,
                    dim: hidden_size,
                },
                None,
            )
        };
        let max_seq_length = st_max.unwrap_or(max_pos).min(max_pos);
        Ok(Self {
            location: location.to_owned(),
            dir: dir.to_owned(),
            format: ModelFormat::Hf,
            family: Family::Bert,
            architecture,
            head,
            max_seq_length,
            vocab_size,
            hidden_size,
            weights,
            tokenizer: Some(tokenizer),
            config: Some(config_path),
            tokenizer_info: None,
        })
    }

    /// A llama-family decoder in the HF layout.
    fn inspect_hf_decoder(
        location: &str,
        dir: &Path,
        config_path: &Path,
        cfg: &HfConfig,
    ) -> Result<Self> {
        let need = |v: Option<usize>, key: &str| {
            v.ok_or_else(|| model_err(location, format!("config.json has no {key}")))
        };
        let hidden_size = need(cfg.hidden_size, "hidden_size")?;
        let vocab_size = need(cfg.vocab_size, "vocab_size")?;
        let mut context = cfg.max_position_embeddings.unwrap_or(2048);
        if let Some(w) = cfg.sliding_window {
            // Beyond its sliding window the model attends locally; distill attends fully, so it stays
            // inside the window, where both agree.
            context = context.min(w);
        }
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(model_err(
                location,
                "no tokenizer.json (a fast-tokenizer file is required)",
            ));
        }
        let weights = weight_files(location, dir)?;
        let bytes = std::fs::read(&tokenizer).map_err(|source| CacheError::Io {
            path: tokenizer.clone(),
            source,
        })?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| model_err(location, format!("tokenizer.json: invalid JSON: {e}")))?;
        let canonical = CanonicalTokenizer::from_hf(location, &json)?;
        let tok_vocab = canonical.vocab.len();
        if tok_vocab > vocab_size {
            return Err(model_err(
                location,
                format!(
                    "tokenizer.json has {tok_vocab} tokens but config.json vocab_size is {vocab_size}: they do not belong together"
                ),
            ));
        }
        let tokenizer_info = TokenizerInfo {
            fingerprint: canonical.fingerprint(),
            vocab_size: tok_vocab,
            bos: cfg.bos_token_id.as_ref().and_then(first_id),
            eos: cfg.eos_token_id.as_ref().and_then(first_id),
            add_bos: canonical.bos_prepended.is_some(),
            special_text: SPECIAL_TEXT_POLICY.into(),
        };
        Ok(Self {
            location: location.to_owned(),
            dir: dir.to_owned(),
            format: ModelFormat::Hf,
            family: Family::Llama,
            architecture: cfg
                .architectures
                .first()
                .cloned()
                .unwrap_or_else(|| "LlamaForCausalLM".into()),
            head: Head::CausalLm {
                vocab: vocab_size,
                dim: hidden_size,
            },
            max_seq_length: context,
            vocab_size,
            hidden_size,
            weights,
            tokenizer: Some(tokenizer),
            config: Some(config_path.to_owned()),
            tokenizer_info: Some(tokenizer_info),
        })
    }

    /// A llama-family decoder in one GGUF file.
    fn inspect_gguf(location: &str, file: &Path) -> Result<Self> {
        let g = crate::gguf::Gguf::open(location, file)?;
        let tok = g.tokenizer(location)?;
        let hidden_size = g.arch_usize(location, "embedding_length")?;
        let context = g.arch_usize(location, "context_length")?;
        let vocab_size = g.embedding_rows(location)?;
        if tok.tokens.len() > vocab_size {
            return Err(model_err(
                location,
                format!(
                    "the tokenizer has {} tokens but token_embd.weight has {vocab_size} rows: they do not belong together",
                    tok.tokens.len()
                ),
            ));
        }
        let tokenizer_info = TokenizerInfo {
            fingerprint: CanonicalTokenizer::from_gguf(&tok).fingerprint(),
            vocab_size: tok.tokens.len(),
            bos: tok.bos,
            eos: tok.eos,
            add_bos: tok.add_bos,
            special_text: SPECIAL_TEXT_POLICY.into(),
        };
        Ok(Self {
            location: location.to_owned(),
            dir: file.parent().unwrap_or(Path::new(".")).to_owned(),
            format: ModelFormat::Gguf,
            family: Family::Llama,
            architecture: g.architecture.clone(),
            head: Head::CausalLm {
                vocab: vocab_size,
                dim: hidden_size,
            },
            max_seq_length: context,
            vocab_size,
            hidden_size,
            weights: vec![file.to_owned()],
            tokenizer: None,
            config: None,
            tokenizer_info: Some(tokenizer_info),
        })
    }

    /// `config.json`, for models in the HF layout.
    pub fn hf_config(&self) -> Result<&Path> {
        self.config.as_deref().ok_or_else(|| {
            model_err(
                &self.location,
                "not an HF-layout directory (no config.json)",
            )
        })
    }

    /// `tokenizer.json`, for models in the HF layout.
    pub fn hf_tokenizer(&self) -> Result<&Path> {
        self.tokenizer.as_deref().ok_or_else(|| {
            model_err(
                &self.location,
                "not an HF-layout directory (no tokenizer.json)",
            )
        })
    }

    /// The teacher fingerprint. Encoders: weights, config, tokenizer, head (pooling / normalisation /
    /// labels), truncation length and compute dtype — unchanged since the first release. Decoders: the
    /// model files (GGUF: the whole file, so the quantization too), the tokenizer fingerprint (with its
    /// special-text policy), head, context window and compute dtype. Reads every weight byte (about
    /// 0.3 s per 100 MB).
    pub fn fingerprint(&self, dtype: &str) -> Result<Fingerprint> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CacheError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let mut h = match self.family {
            Family::Bert => {
                let mut h = Hasher::new("distill.teacher.v1");
                h.field(&read(self.hf_config()?)?);
                h.field(&read(self.hf_tokenizer()?)?);
                h
            }
            Family::Llama => {
                let mut h = Hasher::new("distill.teacher.decoder.v1");
                h.str(match self.format {
                    ModelFormat::Hf => "hf",
                    ModelFormat::Gguf => "gguf",
                });
                if let Some(c) = &self.config {
                    h.field(&read(c)?);
                }
                let tok = self
                    .tokenizer_info
                    .as_ref()
                    .expect("decoders have tokenizer info");
                h.str(tok.fingerprint.as_str());
                h
            }
        };
        for w in &self.weights {
            hash_file(&mut h, w)?;
        }
        h.str(&serde_json::to_string(&self.head).expect("serialisable"));
        h.u64(self.max_seq_length as u64);
        h.str(dtype);
        Ok(h.finish())
    }

    /// The description stored with the cache.
    pub fn info(&self, fingerprint: Fingerprint, dtype: &str) -> TeacherInfo {
        TeacherInfo {
            fingerprint,
            source: self.location.clone(),
            architecture: self.architecture.clone(),
            head: self.head.clone(),
            max_seq_length: self.max_seq_length,
            dtype: dtype.to_owned(),
            tokenizer: self.tokenizer_info.clone(),
        }
    }
}

/// `model_type`s of llama-family decoders in the HF layout.
pub const DECODER_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

fn is_gguf(location: &str) -> bool {
    location.to_ascii_lowercase().ends_with(".gguf")
}

/// `bos_token_id` / `eos_token_id` may be a number or a list of numbers.
fn first_id(v: &serde_json::Value) -> Option<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
        serde_json::Value::Array(a) => a.first().and_then(first_id),
        _ => None,
    }
}

fn hash_file(h: &mut Hasher, path: &Path) -> Result<()> {
    use std::io::Read;
    let io = |source| CacheError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    h.begin_stream(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.stream_chunk(&buf[..n]);
    }
    Ok(())
}

fn weight_files(location: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let paths: Vec<PathBuf> = index_files(location, &index)?
            .iter()
            .map(|f| dir.join(f))
            .collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(model_err(
                location,
                format!(
                    "{} is listed in model.safetensors.index.json but missing",
                    missing.display()
                ),
            ));
        }
        return Ok(paths);
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(model_err(location, "only safetensors weights are supported: convert pytorch_model.bin to model.safetensors"));
    }
    Err(model_err(location, "no model.safetensors"))
}

/// The weight files a sharded checkpoint's `model.safetensors.index.json` names, sorted, once each.
fn index_files(location: &str, index: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let idx: Index = read_json(location, index)?;
    let mut files: Vec<String> = idx.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn sentence_transformer(
    location: &str,
    dir: &Path,
    modules_path: &Path,
    hidden: usize,
) -> Result<(Head, Option<usize>)> {
    let modules: Vec<StModule> = read_json(location, modules_path)?;
    let mut pooling = None;
    let mut normalize = false;
    let mut max_len = None;
    for m in &modules {
        let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
        let mdir = dir.join(&m.path);
        match kind {
            "Transformer" => {
                let st = mdir.join("sentence_bert_config.json");
                if st.is_file() {
                    max_len = read_json::<StConfig>(location, &st)?.max_seq_length;
                }
            }
            "Pooling" => {
                let p: StPooling = read_json(location, &mdir.join("config.json"))?;
                let modes = [
                    (p.pooling_mode_mean_tokens, Pooling::Mean),
                    (p.pooling_mode_cls_token, Pooling::Cls),
                    (p.pooling_mode_max_tokens, Pooling::Max),
                ];
                let on: Vec<Pooling> = modes.iter().filter(|(b, _)| *b).map(|(_, m)| *m).collect();
                if p.pooling_mode_mean_sqrt_len_tokens || on.len() != 1 {
                    return Err(model_err(
                        location,
                        format!(
                            "{}/config.json: exactly one of mean, cls or max pooling must be on",
                            m.path
                        ),
                    ));
                }
                pooling = Some(on[0]);
            }
            // The folder is often absent: the module has no parameters.
            "Normalize" => normalize = true,
            other => {
                return Err(model_err(location, format!("modules.json: module {other} is not supported (Transformer, Pooling, Normalize)")));
            }
        }
    }
    let pooling =
        pooling.ok_or_else(|| model_err(location, "modules.json has no Pooling module"))?;
    Ok((
        Head::Embedding {
            pooling,
            normalize,
            dim: hidden,
        },
        max_len,
    ))
}

/// Where remote model directories are kept locally.
pub fn model_cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DISTILL_MODEL_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache")
        });
    base.join("distill").join("models")
}

/// What decides how a byte-level BPE tokenizer turns text into ids, in one form for both sources (GGUF
/// metadata and HF `tokenizer.json`), so the same tokenizer has the same fingerprint whichever file
/// holds it — a student exported with its teacher's tokenizer keeps the teacher's identity.
#[derive(Clone, Debug, PartialEq)]
pub struct CanonicalTokenizer {
    /// Tokens by id.
    pub vocab: Vec<String>,
    pub merges: Vec<(String, String)>,
    /// The pre-tokenizer: a name distill implements (`smollm`, `gpt2`, `llama-bpe`, `qwen2`) or, for
    /// others, the JSON of `tokenizer.json`'s pre-tokenizer.
    pub pre: String,
    /// `normalizer`, model options and other settings that change ids (JSON; `null` for plain BPE).
    pub extra: String,
    /// Ids of control (special) tokens.
    pub control: Vec<u32>,
    /// The BOS id put in front of every row, if any.
    pub bos_prepended: Option<u32>,
}

/// The split patterns of the pre-tokenizers distill names (as the models' tokenizer.json files hold
/// them).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl CanonicalTokenizer {
    pub fn from_gguf(t: &crate::gguf::GgufTokenizer) -> Self {
        let pre = match t.pre.as_str() {
            "default" => "gpt2".to_owned(),
            p => p.to_owned(),
        };
        Self {
            vocab: t.tokens.clone(),
            merges: t.merges.clone(),
            extra: serde_json::json!({"ignore_merges": pre == "llama-bpe"}).to_string(),
            pre,
            control: t
                .token_types
                .iter()
                .enumerate()
                .filter(|(_, ty)| **ty == 3)
                .map(|(i, _)| i as u32)
                .collect(),
            bos_prepended: if t.add_bos { t.bos } else { None },
        }
    }

    /// From an HF `tokenizer.json` with a BPE model (of the model at `location`, named in errors).
    pub fn from_hf(location: &str, json: &serde_json::Value) -> Result<Self> {
        Self::parse_hf(json).map_err(|e| model_err(location, format!("tokenizer.json: {e}")))
    }

    fn parse_hf(json: &serde_json::Value) -> std::result::Result<Self, String> {
        let model = &json["model"];
        let kind = model["type"].as_str().unwrap_or("BPE");
        if kind != "BPE" {
            return Err(format!(
                "model type {kind:?} is not supported for decoder teachers (BPE)"
            ));
        }
        let mut by_id: Vec<(u64, String)> = model["vocab"]
            .as_object()
            .ok_or("model.vocab is not an object")?
            .iter()
            .map(|(k, v)| {
                v.as_u64()
                    .map(|i| (i, k.clone()))
                    .ok_or("a vocab id is not a number")
            })
            .collect::<std::result::Result<_, _>>()?;
        let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
        for a in &added {
            if let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) {
                if !by_id.iter().any(|(i, _)| *i == id) {
                    by_id.push((id, content.to_owned()));
                }
            }
        }
        by_id.sort();
        let mut vocab = Vec::with_capacity(by_id.len());
        for (i, (id, tok)) in by_id.into_iter().enumerate() {
            if id as usize != i {
                return Err(format!("token ids are not 0..N (id {id} at position {i})"));
            }
            vocab.push(tok);
        }
        let merges = model["merges"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| format!("merge {s:?} is not two tokens")),
                serde_json::Value::Array(p) if p.len() == 2 => Ok((
                    p[0].as_str().unwrap_or_default().to_owned(),
                    p[1].as_str().unwrap_or_default().to_owned(),
                )),
                other => Err(format!("merge {other} is not a pair")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let control = added
            .iter()
            .filter(|a| a["special"].as_bool().unwrap_or(false))
            .filter_map(|a| a["id"].as_u64().map(|i| i as u32))
            .collect();
        let extra = serde_json::json!({
            "ignore_merges": model["ignore_merges"].as_bool().unwrap_or(false),
            "byte_fallback": model["byte_fallback"].as_bool().unwrap_or(false),
            "normalizer": json["normalizer"],
        });
        // The plain-BPE form of `extra` is what GGUF tokenizers have.
        let extra = if extra["byte_fallback"] == false && extra["normalizer"].is_null() {
            serde_json::json!({"ignore_merges": extra["ignore_merges"]}).to_string()
        } else {
            extra.to_string()
        };
        Ok(Self {
            vocab,
            merges,
            pre: pre_name(&json["pre_tokenizer"]),
            extra,
            control,
            bos_prepended: bos_of(&json["post_processor"]),
        })
    }

    /// The tokenizer fingerprint (with the special-text policy).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Hasher::new("distill.tokenizer.v1");
        h.str(&self.pre)
            .str(&self.extra)
            .u64(self.vocab.len() as u64);
        for t in &self.vocab {
            h.str(t);
        }
        h.u64(self.merges.len() as u64);
        for (a, b) in &self.merges {
            h.str(a).str(b);
        }
        h.u64(self.control.len() as u64);
        for c in &self.control {
            h.u64(*c as u64);
        }
        h.u64(self.bos_prepended.map(|b| b as u64 + 1).unwrap_or(0));
        h.str(SPECIAL_TEXT_POLICY);
        h.finish()
    }
}

/// The name of a `tokenizer.json` pre-tokenizer distill implements, or its JSON.
fn pre_name(pre: &serde_json::Value) -> String {
    let parts: Vec<&serde_json::Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => vec![pre],
    };
    let byte_level = |p: &serde_json::Value, regex: bool| {
        p["type"] == "ByteLevel"
            && p["add_prefix_space"] == false
            && p["use_regex"].as_bool().unwrap_or(true) == regex
    };
    let split = |p: &serde_json::Value, pattern: &str| {
        p["type"] == "Split"
            && p["pattern"]["Regex"] == pattern
            && p["behavior"] == "Isolated"
            && p["invert"] == false
    };
    match parts.as_slice() {
        [b] if byte_level(b, true) => "gpt2".into(),
        [d, b]
            if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) =>
        {
            "smollm".into()
        }
        [s, b] if split(s, LLAMA3_PATTERN) && byte_level(b, false) => "llama-bpe".into(),
        [s, b] if split(s, QWEN2_PATTERN) && byte_level(b, false) => "qwen2".into(),
        _ => format!("json:{pre}"),
    }
}

/// The id a `post_processor` puts in front of a single sequence, if any (a `TemplateProcessing`,
/// alone or inside a `Sequence`).
fn bos_of(pp: &serde_json::Value) -> Option<u32> {
    match pp["type"].as_str() {
        Some("Sequence") => pp["processors"].as_array()?.iter().find_map(bos_of),
        Some("TemplateProcessing") => {
            let first = pp["single"].as_array()?.first()?;
            let name = first["SpecialToken"]["id"].as_str()?;
            pp["special_tokens"][name]["ids"][0]
                .as_u64()
                .map(|i| i as u32)
        }
        _ => None,
    }
}

/// Downloads a remote GGUF file into the model cache (kept when a file of the remote size is there).
async fn download_file(url: &str) -> Result<PathBuf> {
    let (parent, name) = url
        .trim_end_matches('/')
        .rsplit_once('/')
        .ok_or_else(|| model_err(url, "not a file URL"))?;
    let loc = crate::store::open(parent, false)?;
    let key = Hasher::new("distill.model-url").str(url).clone().finish();
    let local = model_cache_dir().join(key.short());
    let dest = local.join(name);
    let path = loc.child(name);
    let meta = match loc.store.head(&path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(model_err(url, "no such GGUF file"))
        }
        Err(e) => return Err(model_err(url, crate::store::describe_store_error(&e))),
    };
    if std::fs::metadata(&dest)
        .map(|m| m.len() == meta.size)
        .unwrap_or(false)
    {
        return Ok(dest);
    }
    let io = |path: &Path, source| CacheError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(&local).map_err(|e| io(&local, e))?;
    let bytes = loc
        .store
        .get(&path)
        .await
        .map_err(|e| model_err(url, e.to_string()))?
        .bytes()
        .await
        .map_err(|e| model_err(url, e.to_string()))?;
    write_aside(&dest, &bytes)?;
    Ok(dest)
}

/// Writes a downloaded file under a name of this process's own, then renames it into place: workers
/// that share a model cache (one on a cluster filesystem) never write into each other's file, and a
/// reader sees a whole file or none.
fn write_aside(dest: &Path, bytes: &[u8]) -> Result<()> {
    let io = |path: &Path, source| CacheError::Io {
        path: path.to_owned(),
        source,
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}-{nonce}", std::process::id()));
    let tmp = dest.with_file_name(name);
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(dest, e)
    })
}

/// The local folder a model directory at `url` is downloaded to (a model written for `url` is built
/// there, so that resolving it later downloads nothing).
pub fn local_dir_for(url: &str) -> PathBuf {
    let key = Hasher::new("distill.model-url").str(url).clone().finish();
    model_cache_dir().join(key.short())
}

/// Uploads every file of a local model directory to `url` (object storage): weights first,
/// `config.json` last, so that a reader who finds `config.json` finds the rest (each file is one put).
pub async fn upload_dir(local: &Path, url: &str) -> Result<()> {
    let loc = crate::store::open(url, true)?;
    let mut files = Vec::new();
    let mut stack = vec![local.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|source| CacheError::Io {
            path: dir.clone(),
            source,
        })? {
            let path = e
                .map_err(|source| CacheError::Io {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(local) {
                files.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let rank = |f: &str| match f {
        _ if f.ends_with(".safetensors") => 0,
        "config.json" => 2,
        _ => 1,
    };
    files.sort_by_key(|f| (rank(f), f.clone()));
    for rel in files {
        let path = local.join(&rel);
        let bytes = std::fs::read(&path).map_err(|source| CacheError::Io {
            path: path.clone(),
            source,
        })?;
        loc.store
            .put(&loc.child(&rel), bytes.into())
            .await
            .map_err(|e| CacheError::Store {
                url: format!("{}/{rel}", url.trim_end_matches('/')),
                reason: crate::store::describe_store_error(&e),
            })?;
    }
    Ok(())
}

/// Downloads the files of a remote model directory (those distill reads) into the model cache.
/// A file already there with the remote size is kept. Files are written aside, then renamed.
async fn download(url: &str) -> Result<PathBuf> {
    let loc = crate::store::open(url, false)?;
    let local = local_dir_for(url);
    let io = |path: &Path, source| CacheError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(&local).map_err(|e| io(&local, e))?;

    let fetch = |rel: String, required: bool| {
        let loc = loc.clone();
        let local = local.clone();
        async move {
            let path = loc.child(&rel);
            let dest = local.join(&rel);
            let meta = match loc.store.head(&path).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) if !required => return Ok(false),
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(model_err(url, format!("no {rel}")))
                }
                Err(e) => {
                    return Err(model_err(
                        url,
                        format!("{rel}: {}", crate::store::describe_store_error(&e)),
                    ))
                }
            };
            if std::fs::metadata(&dest)
                .map(|m| m.len() == meta.size)
                .unwrap_or(false)
            {
                return Ok(true);
            }
            let bytes = loc
                .store
                .get(&path)
                .await
                .map_err(|e| model_err(url, format!("{rel}: {e}")))?;
            let bytes = bytes
                .bytes()
                .await
                .map_err(|e| model_err(url, format!("{rel}: {e}")))?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            write_aside(&dest, &bytes)?;
            Ok::<bool, CacheError>(true)
        }
    };
    fetch("config.json".into(), true).await?;
    fetch("tokenizer.json".into(), true).await?;
    if fetch("modules.json".into(), false).await? {
        let modules: Vec<StModule> = read_json(url, &local.join("modules.json"))?;
        for m in modules {
            if m.path.is_empty() {
                fetch("sentence_bert_config.json".into(), false).await?;
            } else {
                fetch(format!("{}/config.json", m.path), false).await?;
            }
        }
    }
    if !fetch("model.safetensors".into(), false).await? {
        fetch("model.safetensors.index.json".into(), true).await?;
        for f in index_files(url, &local.join("model.safetensors.index.json"))? {
            fetch(f, true).await?;
        }
    }
    Ok(local)
}
