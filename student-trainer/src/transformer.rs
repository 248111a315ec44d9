//! The transformer student: a BERT with the teacher's tokenizer and `layers` encoder layers,
//! initialised from evenly spaced teacher layers (DistilBERT style) or at random, with a
//! `BertForSequenceClassification` head (pooler on `[CLS]`, tanh, linear classifier).
//!
//! Training runs candle's autograd on CPU (or a GPU) with differentiable ops only (the worker's fast
//! inference kernels have no backward pass). Two phases, both optional:
//!
//! 1. **embedding mimicry** (task-agnostic): the pooled output learns the teacher's cached sentence
//!    embedding (`1 − cos + ‖s − t‖²`); the classifier then starts from the task's head, which reads
//!    that same space;
//! 2. **distillation** on the task's cached logits: `T²·KL + α·CE(gold)` ([`crate::kd`]).
//!
//! The word-embedding table (most of the parameters) stays frozen at the teacher's values; everything
//! else trains with AdamW (no decay on biases and layer norms), warm-up then linear decay, and global
//! gradient clipping. Checkpoints (weights, optimiser moments, position) are written aside and renamed,
//! every `checkpoint_every` steps and at each epoch's end; a run restarted with the same settings
//! resumes from the last one.

use crate::checkpoint::{self, Position};
use crate::early::{Tracker, Validation};
use crate::kd::KdWeights;
use crate::model::StudentInfo;
use crate::ngram::StepReport;
use crate::optim::{lr_at, AdamW, VarAdamW};
use crate::{Result, StudentError};
use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use distill_cache::model_dir::ModelDir;
use distill_cache::task::LinearHead;
use distill_tasks::data::{Example, TrainData};
use distill_tasks::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
pub use tokenizers::Tokenizer;

/// Training options.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransformerOptions {
    pub layers: usize,
    pub from_teacher: bool,
    pub max_seq: usize,
    pub batch: usize,
    pub mimic_epochs: usize,
    pub epochs: usize,
    pub lr: f64,
    pub mimic_lr: f64,
    pub warmup: f64,
    pub adamw: AdamW,
    pub clip: f32,
    pub temperature: f32,
    /// Weight of the soft (teacher) term; 0 trains on gold labels alone.
    pub soft: f32,
    pub alpha: f32,
    /// Mimic the unit-length teacher embedding (when the task head normalises its input).
    pub normalize_target: bool,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// The pretrained encoder the student started from when it is not the task's teacher (`--init`);
    /// absent from the options of earlier releases, which keep their run ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Share of the soft-labeled rows held out to score each distillation epoch (0: none, every epoch
    /// trains and the last one is kept); absent from earlier releases' options.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout: f64,
    /// Epochs without a lower held-out loss before distillation stops (0: never stops early).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub patience: usize,
    /// Layer-wise learning-rate decay: encoder layer `i` of `L` learns at `decay^(L−1−i)` of the rate,
    /// the embeddings at `decay^L`, the pooler and classifier at the full rate (1: one rate for all).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub layer_lr_decay: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero_usize(x: &usize) -> bool {
    *x == 0
}

impl Default for TransformerOptions {
    fn default() -> Self {
        Self {
            layers: 2,
            from_teacher: true,
            max_seq: 128,
            batch: 32,
            mimic_epochs: 1,
            epochs: 2,
            lr: 1e-4,
            mimic_lr: 2e-4,
            warmup: 0.06,
            adamw: AdamW::default(),
            clip: 1.0,
            temperature: 1.0,
            soft: 1.0,
            alpha: 0.5,
            normalize_target: true,
            seed: 0,
            checkpoint_every: 200,
            init: None,
            holdout: 0.0,
            patience: 0,
            layer_lr_decay: 1.0,
        }
    }
}

/// The encoder's shape (a subset of `config.json`).
#[derive(Clone, Debug)]
struct Shape {
    hidden: usize,
    heads: usize,
    eps: f64,
}

/// A transformer student in training (parameters as candle variables, HF names without `bert.`).
pub struct TransformerStudent {
    config: serde_json::Value,
    shape: Shape,
    layers: usize,
    word: Tensor,
    vars: BTreeMap<String, Var>,
    pub labels: Vec<String>,
    teacher_dir: PathBuf,
    /// Whether the teacher's weights have a pooler (written back by [`TransformerStudent::save_encoder`]).
    teacher_pooler: bool,
    device: Device,
}

impl std::fmt::Debug for TransformerStudent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformerStudent")
            .field("layers", &self.layers)
            .field("labels", &self.labels)
            .finish()
    }
}

fn layer_names(i: usize) -> Vec<String> {
    let p = format!("encoder.layer.{i}");
    [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ]
    .iter()
    .flat_map(|m| [format!("{p}.{m}.weight"), format!("{p}.{m}.bias")])
    .collect()
}

impl TransformerStudent {
    /// Builds a student from the teacher directory: `layers` layers copied from evenly spaced teacher
    /// layers (or random), pooler from the teacher when it has one, a random classifier.
    pub fn new(
        teacher: &ModelDir,
        labels: Vec<String>,
        opts: &TransformerOptions,
        device: &Device,
    ) -> Result<Self> {
        let loc = teacher.location.clone();
        let model_err = |reason: String| StudentError::Model {
            path: loc.clone(),
            reason,
        };
        let config_path = teacher.hf_config()?;
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(config_path).map_err(StudentError::io(config_path))?,
        )
        .map_err(|e| model_err(format!("config.json: {e}")))?;
        let get = |k: &str| config.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let teacher_layers = get("num_hidden_layers")
            .ok_or_else(|| model_err("config.json has no num_hidden_layers".into()))?;
        let heads = get("num_attention_heads")
            .ok_or_else(|| model_err("config.json has no num_attention_heads".into()))?;
        let hidden = teacher.hidden_size;
        let max_pos = get("max_position_embeddings").unwrap_or(512);
        let type_vocab = get("type_vocab_size").unwrap_or(2);
        let eps = config
            .get("layer_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-12);
        if opts.layers == 0 || opts.layers > teacher_layers {
            return Err(StudentError::Invalid(format!(
                "--layers {} must be between 1 and the teacher's {teacher_layers}",
                opts.layers
            )));
        }
        if opts.max_seq > max_pos {
            return Err(StudentError::Invalid(format!(
                "--max-seq {} exceeds the teacher's {max_pos} positions",
                opts.max_seq
            )));
        }
        let all = distill_teacher::bert::load_tensors(&teacher.weights, device).map_err(|e| {
            model_err(format!(
                "cannot read weights: {}",
                distill_teacher::error::without_backtrace(e)
            ))
        })?;
        let prefix = if all.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let tensor = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = all
                .get(&format!("{prefix}{name}"))
                .ok_or_else(|| model_err(format!("weights have no {prefix}{name}")))?;
            if t.dims() != shape {
                return Err(model_err(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let mut rng = Rng::derive(opts.seed, "transformer-init", 0);
        let mut random = |shape: &[usize]| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() * 0.02).collect();
            Ok(Tensor::from_vec(v, shape, device)?)
        };
        let word = tensor(
            "embeddings.word_embeddings.weight",
            &[teacher.vocab_size, hidden],
        )?;
        let mut vars = BTreeMap::new();
        let mut put = |k: String, t: Tensor| -> Result<()> {
            vars.insert(k, Var::from_tensor(&t)?);
            Ok(())
        };
        for (name, shape) in [
            (
                "embeddings.position_embeddings.weight",
                vec![max_pos, hidden],
            ),
            (
                "embeddings.token_type_embeddings.weight",
                vec![type_vocab, hidden],
            ),
            ("embeddings.LayerNorm.weight", vec![hidden]),
            ("embeddings.LayerNorm.bias", vec![hidden]),
        ] {
            put(name.into(), tensor(name, &shape)?)?;
        }
        for i in 0..opts.layers {
            let src = i * teacher_layers / opts.layers;
            for (dst, from) in layer_names(i).into_iter().zip(layer_names(src)) {
                let shape: Vec<usize> = all
                    .get(&format!("{prefix}{from}"))
                    .ok_or_else(|| model_err(format!("weights have no {prefix}{from}")))?
                    .dims()
                    .to_vec();
                let t = if opts.from_teacher {
                    tensor(&from, &shape)?
                } else if from.contains("LayerNorm.weight") {
                    Tensor::ones(shape.as_slice(), DType::F32, device)?
                } else if from.ends_with("bias") {
                    Tensor::zeros(shape.as_slice(), DType::F32, device)?
                } else {
                    random(&shape)?
                };
                put(dst, t)?;
            }
        }
        let teacher_pooler = all.contains_key(&format!("{prefix}pooler.dense.weight"));
        let pooler_w = match (opts.from_teacher, teacher_pooler) {
            (true, true) => (
                tensor("pooler.dense.weight", &[hidden, hidden])?,
                tensor("pooler.dense.bias", &[hidden])?,
            ),
            _ => (
                random(&[hidden, hidden])?,
                Tensor::zeros(hidden, DType::F32, device)?,
            ),
        };
        put("pooler.dense.weight".into(), pooler_w.0)?;
        put("pooler.dense.bias".into(), pooler_w.1)?;
        let c = labels.len();
        put("classifier.weight".into(), random(&[c, hidden])?)?;
        put(
            "classifier.bias".into(),
            Tensor::zeros(c, DType::F32, device)?,
        )?;
        Ok(Self {
            config,
            shape: Shape { hidden, heads, eps },
            layers: opts.layers,
            word,
            vars,
            labels,
            teacher_dir: teacher.dir.clone(),
            teacher_pooler,
            device: device.clone(),
        })
    }

    /// The teacher's layer count (`num_hidden_layers` of its `config.json`).
    pub fn teacher_layers(teacher: &ModelDir) -> Result<usize> {
        let path = teacher.hf_config()?;
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(path).map_err(StudentError::io(path))?,
        )
        .map_err(|e| StudentError::Model {
            path: teacher.location.clone(),
            reason: format!("config.json: {e}"),
        })?;
        config
            .get("num_hidden_layers")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| StudentError::Model {
                path: teacher.location.clone(),
                reason: "config.json has no num_hidden_layers".into(),
            })
    }

    /// Differentiable sentence embeddings as a sentence encoder's head makes them: token states
    /// mean-pooled over the mask (or the first token's), L2-normalised when `normalize`.
    pub fn embed(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        pooling: distill_cache::model_dir::Pooling,
        normalize: bool,
    ) -> Result<Tensor> {
        use distill_cache::model_dir::Pooling;
        let (b, t) = ids.dims2()?;
        let h = self.shape.hidden;
        let x = self.encode(ids, mask)?.reshape((b, t, h))?;
        let pooled = match pooling {
            Pooling::Cls => x.i((.., 0))?.contiguous()?,
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?;
                let sum = x.broadcast_mul(&m)?.sum(1)?;
                sum.broadcast_div(&m.sum(1)?.clamp(1.0f32, f32::MAX)?)?
            }
            Pooling::Max => {
                return Err(StudentError::Invalid(
                    "fine-tuning a max-pooling encoder is not supported (mean or CLS pooling)"
                        .into(),
                ))
            }
        };
        if normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            Ok(pooled.broadcast_div(&norm)?)
        } else {
            Ok(pooled)
        }
    }

    /// Writes the whole encoder in the teacher's own layout — every file of the teacher's directory
    /// (tokenizer, pooling and normalisation modules, `config.json`) with this encoder's weights in
    /// `model.safetensors` — plus `distill.json` (`info`): a teacher `distill label` runs like the
    /// original, with its own fingerprint.
    pub fn save_encoder(&self, dir: &Path, info: &StudentInfo) -> Result<()> {
        let teacher_layers = self
            .config
            .get("num_hidden_layers")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        if self.layers != teacher_layers {
            return Err(StudentError::Invalid(format!(
                "an encoder of {} layers is not the teacher's {teacher_layers}: save it as a student",
                self.layers
            )));
        }
        // Everything but weights (of any format, sharded or not) and distill's own marker.
        copy_tree(&self.teacher_dir, dir, &|name| {
            let weights = [
                ".safetensors",
                ".safetensors.index.json",
                ".bin",
                ".bin.index.json",
                ".h5",
                ".msgpack",
                ".ot",
                ".onnx",
            ];
            !weights.iter().any(|w| name.ends_with(w))
                && !matches!(name, "onnx" | "openvino")
                && name != crate::dir::INFO_FILE
        })?;
        let tensors: HashMap<String, Tensor> = self
            .named_tensors("")
            .into_iter()
            .filter(|(k, _)| {
                !k.starts_with("classifier") && (self.teacher_pooler || !k.starts_with("pooler"))
            })
            .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        std::fs::write(
            dir.join(crate::dir::INFO_FILE),
            serde_json::to_vec_pretty(info).expect("json"),
        )
        .map_err(StudentError::io(dir.join(crate::dir::INFO_FILE)))
    }

    /// The variables training updates, with whether weight decay applies (not to biases and norms);
    /// the classifier and pooler are left out when `encoder_only`.
    pub fn trainable(&self, encoder_only: bool) -> Vec<(String, Var, bool)> {
        self.vars
            .iter()
            .filter(|(n, _)| {
                !encoder_only || !(n.starts_with("classifier") || n.starts_with("pooler"))
            })
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.clone(),
                    !(n.ends_with("bias") || n.contains("LayerNorm")),
                )
            })
            .collect()
    }

    fn v(&self, name: &str) -> &Tensor {
        self.vars[name].as_tensor()
    }

    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.v(&format!("{name}.weight"));
        let b = self.v(&format!("{name}.bias"));
        Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
    }

    fn norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm_slow(
            x,
            self.v(&format!("{name}.weight")),
            self.v(&format!("{name}.bias")),
            self.shape.eps as f32,
        )?)
    }

    /// Differentiable forward pass: `ids`, `mask` `[b, t]` → (pooled `[b, h]`, logits `[b, classes]`).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let x = self.encode(ids, mask)?;
        let h = self.shape.hidden;
        let cls = x.reshape((b, t, h))?.i((.., 0))?.contiguous()?;
        let pooled = self.linear(&cls, "pooler.dense")?.tanh()?;
        let logits = self.linear(&pooled, "classifier")?;
        Ok((pooled, logits))
    }

    /// Token states `[b·t, h]`.
    fn encode(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.shape.hidden;
        let heads = self.shape.heads;
        let hd = h / heads;
        let x = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = self
            .v("embeddings.position_embeddings.weight")
            .narrow(0, 0, t)?
            .broadcast_add(&self.v("embeddings.token_type_embeddings.weight").i(0)?)?;
        let x = x.broadcast_add(&pos)?.reshape((b * t, h))?;
        let mut x = self.norm(&x, "embeddings.LayerNorm")?;
        let bias = ((mask.ones_like()? - mask)? * -1e4)?.reshape((b, 1, 1, t))?;
        let scale = 1.0 / (hd as f64).sqrt();
        for i in 0..self.layers {
            let p = format!("encoder.layer.{i}");
            let split = |y: Tensor| -> Result<Tensor> {
                Ok(y.reshape((b, t, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = split(self.linear(&x, &format!("{p}.attention.self.query"))?)?;
            let k = split(self.linear(&x, &format!("{p}.attention.self.key"))?)?;
            let v = split(self.linear(&x, &format!("{p}.attention.self.value"))?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * t, h))?;
            let a = self.linear(&ctx, &format!("{p}.attention.output.dense"))?;
            x = self.norm(&(a + &x)?, &format!("{p}.attention.output.LayerNorm"))?;
            let inner = self
                .linear(&x, &format!("{p}.intermediate.dense"))?
                .gelu_erf()?;
            let o = self.linear(&inner, &format!("{p}.output.dense"))?;
            x = self.norm(&(o + &x)?, &format!("{p}.output.LayerNorm"))?;
        }
        Ok(x)
    }

    /// Parameters, the frozen word embeddings included.
    pub fn parameters(&self) -> usize {
        self.word.elem_count() + self.vars.values().map(|v| v.elem_count()).sum::<usize>()
    }

    fn named_tensors(&self, prefix_encoder: &str) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(k, v)| {
                let name = if k.starts_with("classifier") {
                    k.clone()
                } else {
                    format!("{prefix_encoder}{k}")
                };
                (name, v.as_tensor().clone())
            })
            .collect();
        out.insert(
            format!("{prefix_encoder}embeddings.word_embeddings.weight"),
            self.word.clone(),
        );
        out
    }

    /// Writes the Hugging Face `BertForSequenceClassification` files into `dir`.
    pub fn save_hf(&self, dir: &Path, info: &StudentInfo) -> Result<()> {
        let mut config = self.config.clone();
        let obj = config
            .as_object_mut()
            .ok_or_else(|| StudentError::Invalid("teacher config.json is not an object".into()))?;
        obj.insert(
            "architectures".into(),
            serde_json::json!(["BertForSequenceClassification"]),
        );
        obj.insert("model_type".into(), "bert".into());
        obj.insert("num_hidden_layers".into(), self.layers.into());
        let i2l: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone().into()))
            .collect();
        let l2i: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        obj.insert("id2label".into(), i2l.into());
        obj.insert("label2id".into(), l2i.into());
        obj.insert("problem_type".into(), "single_label_classification".into());
        obj.remove("_name_or_path");
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .map_err(StudentError::io(dir.join("config.json")))?;
        let tensors: HashMap<String, Tensor> = self
            .named_tensors("bert.")
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
        ] {
            let src = self.teacher_dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, dir.join(f)).map_err(StudentError::io(&src))?;
            }
        }
        std::fs::write(
            dir.join(crate::dir::INFO_FILE),
            serde_json::to_vec_pretty(info).expect("json"),
        )
        .map_err(StudentError::io(dir.join(crate::dir::INFO_FILE)))
    }
}

/// Copies the files of `from` (recursively) whose names `keep` accepts into `to`.
fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    std::fs::create_dir_all(to).map_err(StudentError::io(to))?;
    for e in std::fs::read_dir(from).map_err(StudentError::io(from))? {
        let e = e.map_err(StudentError::io(from))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.') || !keep(&name) {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &to.join(&name), keep)?;
        } else {
            std::fs::copy(&path, to.join(&name)).map_err(StudentError::io(&path))?;
        }
    }
    Ok(())
}

/// A tokenizer set up as training uses it: no padding, truncation at `max_seq`.
pub fn tokenizer(teacher: &ModelDir, max_seq: usize) -> Result<tokenizers::Tokenizer> {
    let bad = |e: String| StudentError::Model {
        path: teacher.location.clone(),
        reason: format!("tokenizer.json: {e}"),
    };
    let mut tok = distill_teacher::tokenizer::read_hf(&teacher.location, teacher.hf_tokenizer()?)?;
    tok.with_padding(None);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: max_seq,
        ..Default::default()
    }))
    .map_err(|e| bad(e.to_string()))?;
    Ok(tok)
}

/// A training batch as tensors.
pub(crate) struct Batch {
    pub(crate) ids: Tensor,
    pub(crate) mask: Tensor,
    soft: Tensor,
    gold: Tensor,
    gold_mask: Tensor,
    emb: Option<Tensor>,
}

pub(crate) fn make_batch(
    rows: &[(Vec<u32>, &Example)],
    classes: usize,
    device: &Device,
) -> Result<Batch> {
    let b = rows.len();
    let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(1);
    let mut ids = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    let mut soft = Vec::with_capacity(b * classes);
    let mut gold = vec![0u32; b];
    let mut gold_mask = vec![0f32; b];
    let mut emb: Vec<f32> = Vec::new();
    for (i, (tok, ex)) in rows.iter().enumerate() {
        ids[i * t..i * t + tok.len()].copy_from_slice(tok);
        mask[i * t..i * t + tok.len()]
            .iter_mut()
            .for_each(|m| *m = 1.0);
        soft.extend_from_slice(&ex.soft);
        if let Some(g) = ex.gold {
            gold[i] = g as u32;
            gold_mask[i] = 1.0;
        }
        if let Some(e) = &ex.embedding {
            emb.extend_from_slice(e);
        }
    }
    let emb = if emb.is_empty() {
        None
    } else {
        Some(Tensor::from_vec(emb.clone(), (b, emb.len() / b), device)?)
    };
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        mask: Tensor::from_vec(mask, (b, t), device)?,
        soft: Tensor::from_vec(soft, (b, classes), device)?,
        gold: Tensor::from_vec(gold, b, device)?,
        gold_mask: Tensor::from_vec(gold_mask, b, device)?,
        emb,
    })
}

/// The KD loss of a batch ([`crate::kd::kd_loss_tensor`]).
pub(crate) fn kd_loss(logits: &Tensor, batch: &Batch, kd: KdWeights) -> Result<Tensor> {
    Ok(crate::kd::kd_loss_tensor(
        logits,
        &batch.soft,
        &batch.gold,
        &batch.gold_mask,
        kd,
    )?)
}

/// `1 − cos(s, t) + ‖s − t‖²`, averaged over the batch.
fn mimic_loss(pooled: &Tensor, target: &Tensor) -> Result<Tensor> {
    let b = pooled.dim(0)? as f64;
    let dot = (pooled * target)?.sum(D::Minus1)?;
    let ns = pooled.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nt = target.sqr()?.sum(D::Minus1)?.sqrt()?;
    let cos = (dot / ((ns * nt)? + 1e-8)?)?;
    let mse = (pooled - target)?.sqr()?.sum_all()?;
    Ok((((cos.ones_like()? - cos)?.sum_all()? + mse)? / b)?)
}

/// Optimiser state of one variable.
/// A training phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Pooled output learns the teacher's cached embeddings (task-agnostic).
    Mimic,
    /// Logits learn the task's cached logits (and gold labels).
    Distill,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Mimic => "mimic",
            Self::Distill => "distill",
        }
    }
}

impl TransformerStudent {
    /// A deep copy (to distill several tasks from one mimicked student).
    pub fn duplicate(&self) -> Result<Self> {
        let vars = self
            .vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), Var::from_tensor(&v.as_tensor().copy()?)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: self.config.clone(),
            shape: self.shape.clone(),
            layers: self.layers,
            word: self.word.clone(),
            vars,
            labels: self.labels.clone(),
            teacher_dir: self.teacher_dir.clone(),
            teacher_pooler: self.teacher_pooler,
            device: self.device.clone(),
        })
    }

    /// A copy of every weight (the best epoch's, for early stopping).
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Sets the weights named in `weights` (a [`TransformerStudent::snapshot`]).
    pub fn load_snapshot(&self, weights: &HashMap<String, Tensor>) -> Result<()> {
        for (k, v) in &self.vars {
            if let Some(t) = weights.get(k) {
                v.set(t)?;
            }
        }
        Ok(())
    }

    /// Replaces the classifier by a task's head (same width as the pooled output), for a student whose
    /// pooled output mimics the teacher's embeddings.
    pub fn set_head(&mut self, head: &LinearHead, labels: Vec<String>) -> Result<()> {
        if head.dim != self.shape.hidden || head.classes != labels.len() {
            return Err(StudentError::Invalid(format!(
                "the task head reads {}-wide embeddings, the student's pooled output is {} wide",
                head.dim, self.shape.hidden
            )));
        }
        self.vars.insert(
            "classifier.weight".into(),
            Var::from_tensor(&Tensor::from_slice(
                &head.weight,
                (head.classes, head.dim),
                &self.device,
            )?)?,
        );
        self.vars.insert(
            "classifier.bias".into(),
            Var::from_tensor(&Tensor::from_slice(&head.bias, head.classes, &self.device)?)?,
        );
        self.labels = labels;
        Ok(())
    }
}

/// One training phase to run: which, how long, how fast, and where it checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct PhaseRun<'a> {
    pub phase: Phase,
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Checkpoints of another run id are not resumed from.
    pub run_id: &'a str,
    pub checkpoint: Option<&'a Path>,
    /// Held-out rows scoring each epoch, for early stopping (distillation only).
    pub validation: Option<&'a Validation>,
}

/// Runs one training phase over `data`. With a checkpoint folder, saves there as it goes and
/// resumes from it when its run id matches.
pub fn train_phase(
    student: &TransformerStudent,
    tok: &tokenizers::Tokenizer,
    data: &TrainData,
    opts: &TransformerOptions,
    run: PhaseRun<'_>,
    mut on_step: impl FnMut(StepReport),
) -> Result<()> {
    let PhaseRun {
        phase,
        epochs,
        lr,
        run_id,
        checkpoint,
        validation,
    } = run;
    let validation = validation.filter(|_| phase == Phase::Distill);
    let layers = student.layers;
    let classes = student.labels.len();
    let device = student.device.clone();
    let mut optimizer = VarAdamW::new(
        opts.adamw,
        student.vars.iter().map(|(n, v)| {
            (
                n.clone(),
                v.clone(),
                !(n.ends_with("bias") || n.contains("LayerNorm")),
            )
        }),
    )?
    .with_rates(|name| layer_rate(name, layers, opts.layer_lr_decay));
    let (mut start_epoch, mut skip, mut step) = (0usize, 0u64, 0u64);
    let mut tracker = Tracker::default();
    if let Some(dir) = checkpoint {
        if let Some((pos, state)) = checkpoint::load(dir, run_id, &device)? {
            optimizer.restore(&state)?;
            tracker = Tracker::load(&state, student)?;
            tracing::info!(
                phase = phase.name(),
                epoch = pos.epoch,
                batch = pos.batch,
                "resuming from checkpoint"
            );
            start_epoch = pos.epoch;
            skip = pos.batch;
            step = pos.step;
        }
    }
    let per_epoch = count_batches(data, opts.batch)?;
    let total = per_epoch * epochs as u64;
    let warmup = (total as f64 * opts.warmup) as u64;
    let mut last = StepReport::default();
    // A run interrupted after it decided to stop (before its export) stops again.
    if let (Some(b), true) = (tracker.best, validation.is_some() && opts.patience > 0) {
        if start_epoch >= b.epoch + opts.patience {
            start_epoch = epochs;
        }
    }
    for epoch in start_epoch..epochs {
        let mut done = 0u64;
        let mut it = data.epoch(epoch as u64).peekable();
        let mut wrng = Rng::derive(opts.seed, phase.name(), epoch as u64);
        while it.peek().is_some() {
            // A window of examples, sorted by length into batches (little padding), in random order.
            let window: Vec<Example> = it
                .by_ref()
                .take(opts.batch * 16)
                .collect::<distill_tasks::Result<_>>()?;
            let rows = tokenized(tok, &window)?;
            let mut batches: Vec<&[(Vec<u32>, &Example)]> = rows.chunks(opts.batch).collect();
            wrng.shuffle(&mut batches);
            for rows in batches {
                done += 1;
                if done <= skip {
                    continue;
                }
                let batch = make_batch(rows, classes, &device)?;
                let loss = batch_loss(student, &batch, phase, opts)?;
                let grads = loss.backward()?;
                step += 1;
                let rate = lr_at(lr, step - 1, warmup, total);
                optimizer.step(&grads, opts.clip, rate, step)?;
                last = StepReport {
                    step,
                    total,
                    epoch,
                    loss: loss.to_scalar::<f32>()?,
                    lr: rate,
                    held_out: None,
                };
                on_step(last);
                if let (Some(dir), true) = (
                    checkpoint,
                    opts.checkpoint_every > 0 && step % opts.checkpoint_every == 0,
                ) {
                    let pos = Position {
                        run: run_id.into(),
                        epoch,
                        batch: done,
                        step,
                    };
                    checkpoint::save(dir, &state_of(&optimizer, &tracker)?, &pos)?;
                }
            }
        }
        skip = 0;
        let stop = match validation {
            Some(v) => {
                let (score, best, stop) = tracker.score(v, student, epoch + 1, opts.patience)?;
                on_step(StepReport {
                    epoch,
                    held_out: Some((score, best)),
                    ..last
                });
                stop
            }
            None => false,
        };
        if let Some(dir) = checkpoint {
            let pos = Position {
                run: run_id.into(),
                epoch: epoch + 1,
                batch: 0,
                step,
            };
            checkpoint::save(dir, &state_of(&optimizer, &tracker)?, &pos)?;
        }
        if stop {
            break;
        }
    }
    tracker.restore(student)
}

/// The share of the learning rate of the variable `name` in a student of `layers` encoder layers
/// under layer-wise decay `decay` (see [`TransformerOptions::layer_lr_decay`]).
fn layer_rate(name: &str, layers: usize, decay: f64) -> f64 {
    let depth = if let Some(rest) = name.strip_prefix("encoder.layer.") {
        let i: usize = rest
            .split('.')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        layers.saturating_sub(1 + i)
    } else if name.starts_with("embeddings.") {
        layers
    } else {
        0
    };
    decay.powi(depth as i32)
}

/// A window of examples tokenized, sorted by length (batches cut from it carry little padding).
pub(crate) fn tokenized<'a>(
    tok: &tokenizers::Tokenizer,
    examples: &'a [Example],
) -> Result<Vec<(Vec<u32>, &'a Example)>> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let enc = tok
        .encode_batch(texts, true)
        .map_err(|e| StudentError::Invalid(format!("tokenizer: {e}")))?;
    let mut rows: Vec<(Vec<u32>, &Example)> = enc
        .iter()
        .map(|e| e.get_ids().to_vec())
        .zip(examples)
        .collect();
    rows.sort_by_key(|r| r.0.len());
    Ok(rows)
}

/// One batch's loss in `phase`: embedding mimicry, or the KD loss on the task's logits.
fn batch_loss(
    student: &TransformerStudent,
    batch: &Batch,
    phase: Phase,
    opts: &TransformerOptions,
) -> Result<Tensor> {
    let (pooled, logits) = student.forward(&batch.ids, &batch.mask)?;
    Ok(match phase {
        Phase::Mimic => {
            let target = batch
                .emb
                .as_ref()
                .ok_or_else(|| StudentError::Invalid("mimicry needs cached embeddings".into()))?;
            if opts.normalize_target {
                mimic_loss(&pooled, &distill_teacher::outputs::l2_normalize(target)?)?
            } else {
                mimic_loss(&pooled, target)?
            }
        }
        Phase::Distill => kd_loss(
            &logits,
            batch,
            KdWeights {
                temperature: opts.temperature,
                soft: opts.soft,
                alpha: opts.alpha,
            },
        )?,
    })
}

/// What a checkpoint holds: the optimiser's weights and moments, and the best epoch's weights.
fn state_of(optimizer: &VarAdamW, tracker: &Tracker) -> Result<HashMap<String, Tensor>> {
    let mut state = optimizer.state()?;
    tracker.save_into(&mut state)?;
    Ok(state)
}

/// Batches of one epoch: batches are cut per window of `batch × 16` examples.
fn count_batches(data: &TrainData, batch: usize) -> Result<u64> {
    let n = data.count()?;
    if n == 0 {
        return Err(StudentError::Invalid("no training examples".into()));
    }
    let window = batch * 16;
    Ok((n / window * 16 + (n % window).div_ceil(batch)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::write_dir;
    use crate::model::Predictor;
    use distill_teacher::fixtures::{write_tiny_bert, TinyKind};

    fn tiny_teacher(dir: &Path) -> ModelDir {
        let kind = TinyKind::SentenceEncoder {
            pooling: "mean",
            normalize: true,
        };
        write_tiny_bert(dir, &kind, 5).unwrap();
        ModelDir::inspect("tiny", dir).unwrap()
    }

    fn labels() -> Vec<String> {
        vec!["neg".into(), "neu".into(), "pos".into()]
    }

    fn opts() -> TransformerOptions {
        TransformerOptions {
            layers: 1,
            max_seq: 24,
            ..Default::default()
        }
    }

    fn batch_of(
        tok: &tokenizers::Tokenizer,
        texts: &[&str],
        soft: &[[f32; 3]],
        gold: &[Option<usize>],
    ) -> Batch {
        let examples: Vec<Example> = texts
            .iter()
            .zip(soft.iter().zip(gold))
            .map(|(t, (s, g))| Example {
                id: t.to_string(),
                text: t.to_string(),
                soft: s.to_vec(),
                gold: *g,
                embedding: Some(vec![0.1; distill_teacher::fixtures::HIDDEN]),
            })
            .collect();
        let rows: Vec<(Vec<u32>, &Example)> = examples
            .iter()
            .map(|e| {
                (
                    tok.encode(e.text.as_str(), true)
                        .unwrap()
                        .get_ids()
                        .to_vec(),
                    e,
                )
            })
            .collect();
        make_batch(&rows, 3, &Device::Cpu).unwrap()
    }

    #[test]
    fn layer_wise_rates_decay_from_the_top_layer_down() {
        let r = |n: &str| layer_rate(n, 3, 0.5);
        assert_eq!(r("classifier.weight"), 1.0);
        assert_eq!(r("pooler.dense.weight"), 1.0);
        assert_eq!(r("encoder.layer.2.output.dense.weight"), 1.0);
        assert_eq!(r("encoder.layer.1.attention.self.query.weight"), 0.5);
        assert_eq!(r("encoder.layer.0.intermediate.dense.bias"), 0.25);
        assert_eq!(r("embeddings.LayerNorm.weight"), 0.125);
        assert_eq!(layer_rate("embeddings.LayerNorm.weight", 3, 1.0), 1.0);
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch_and_resumes_it() {
        use crate::early::{Tracker, Validation};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tiny_teacher(&tmp.path().join("t"));
        let dev = Device::Cpu;
        let s = TransformerStudent::new(&dir, labels(), &opts(), &dev).unwrap();
        let tok = tokenizer(&dir, 24).unwrap();
        let held: Vec<Example> = ["a good film", "dull and long", "fine"]
            .iter()
            .zip([[3.0f32, 0.0, -3.0], [-2.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
            .map(|(t, soft)| Example {
                id: t.to_string(),
                text: t.to_string(),
                soft: soft.to_vec(),
                gold: None,
                embedding: None,
            })
            .collect();
        let v = Validation::new(&tok, &held, 3, 2, &dev).unwrap().unwrap();
        assert!(Validation::new(&tok, &[], 3, 2, &dev).unwrap().is_none());
        let first = v.loss(&s).unwrap();
        assert!(first.is_finite() && first > 0.0, "KL {first}");
        let mut tr = Tracker::default();
        assert!(!tr.observe(&s, 1, first, 2).unwrap());
        let best = s.snapshot().unwrap();
        // Worse epochs: the weights move, the best stays, and the second worse one stops.
        let w = &s.vars["classifier.bias"];
        w.set(&Tensor::new(&[5f32, -5.0, 0.0], &dev).unwrap())
            .unwrap();
        let worse = v.loss(&s).unwrap();
        assert!(worse > first, "{worse} vs {first}");
        assert!(!tr.observe(&s, 2, worse, 2).unwrap());
        assert!(
            tr.observe(&s, 3, worse, 2).unwrap(),
            "2 epochs without a better score"
        );
        // Saved in a checkpoint's tensors and read back: the same best epoch and weights.
        let mut tensors = HashMap::new();
        tr.save_into(&mut tensors).unwrap();
        let ck = tmp.path().join("ck");
        let pos = Position {
            run: "r".into(),
            epoch: 3,
            batch: 0,
            step: 9,
        };
        checkpoint::save(&ck, &tensors, &pos).unwrap();
        let (_, state) = checkpoint::load(&ck, "r", &dev).unwrap().unwrap();
        let back = Tracker::load(&state, &s).unwrap();
        assert_eq!(back.best, tr.best);
        back.restore(&s).unwrap();
        for (k, t) in &best {
            let now = s.vars[k]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(
                now,
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{k}"
            );
        }
        assert!((v.loss(&s).unwrap() - first).abs() < 1e-9);
        // A checkpoint without a best epoch (an earlier release's, or no holdout) holds none.
        checkpoint::save(&ck, &HashMap::new(), &pos).unwrap();
        let (_, state) = checkpoint::load(&ck, "r", &dev).unwrap().unwrap();
        assert_eq!(Tracker::load(&state, &s).unwrap().best, None);
        // No patience: never stops.
        let mut tr = Tracker::default();
        for e in 1..6 {
            assert!(!tr.observe(&s, e, 1.0 + e as f64, 0).unwrap());
        }
    }

    #[test]
    fn exported_student_reloads_with_identical_predictions() {
        let tmp = tempfile::tempdir().unwrap();
        let teacher = tiny_teacher(&tmp.path().join("teacher"));
        let student = TransformerStudent::new(&teacher, labels(), &opts(), &Device::Cpu).unwrap();
        // The reloaded model truncates at its position limit (64 for the tiny model), not at max_seq.
        let tok = tokenizer(&teacher, 64).unwrap();
        let texts = [
            "the movie was good",
            "bad",
            "a long and winding plot about nothing much",
        ];
        // In memory, one text at a time (no padding).
        let mut expected = Vec::new();
        for t in texts {
            let ids = tok.encode(t, true).unwrap().get_ids().to_vec();
            let n = ids.len();
            let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
            let mask = Tensor::ones((1, n), DType::F32, &Device::Cpu).unwrap();
            let (_, logits) = student.forward(&ids, &mask).unwrap();
            expected.push(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        let out = tmp.path().join("student");
        let info = StudentInfo {
            kind: "transformer".into(),
            task: "t".into(),
            labels: labels(),
            teacher: "x".into(),
            task_output: "y".into(),
            producer: "test".into(),
            created_unix: 0,
            training: serde_json::Value::Null,
        };
        write_dir(&out, |d| student.save_hf(d, &info)).unwrap();
        // Reloaded as a standard BertForSequenceClassification by the worker's loader, batched (padded).
        let loaded = Predictor::load(&out, &distill_teacher::DeviceSpec::Cpu).unwrap();
        assert_eq!(loaded.labels(), labels().as_slice());
        let got = loaded.logits(&texts).unwrap();
        for (e, g) in expected.iter().zip(&got) {
            for (a, b) in e.iter().zip(g) {
                assert!((a - b).abs() < 1e-4, "{e:?} vs {g:?}");
            }
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"][0], "BertForSequenceClassification");
        assert_eq!(config["num_hidden_layers"], 1);
        assert_eq!(config["id2label"]["2"], "pos");
        assert!(out.join("tokenizer.json").is_file());
    }

    #[test]
    fn autograd_gradients_match_finite_differences() {
        let tmp = tempfile::tempdir().unwrap();
        let teacher = tiny_teacher(&tmp.path().join("teacher"));
        let student = TransformerStudent::new(&teacher, labels(), &opts(), &Device::Cpu).unwrap();
        let tok = tokenizer(&teacher, 24).unwrap();
        // Rows of different lengths: padding and the attention mask take part.
        let batch = batch_of(
            &tok,
            &["good film", "a bad and boring plot"],
            &[[1.0, 0.2, -0.5], [-0.4, 0.1, 0.9]],
            &[Some(2), None],
        );
        let kd = KdWeights {
            temperature: 2.0,
            soft: 1.0,
            alpha: 0.5,
        };
        let loss_of = |s: &TransformerStudent, mimic: bool| -> f64 {
            let (pooled, logits) = s.forward(&batch.ids, &batch.mask).unwrap();
            let l = if mimic {
                mimic_loss(&pooled, batch.emb.as_ref().unwrap()).unwrap()
            } else {
                kd_loss(&logits, &batch, kd).unwrap()
            };
            l.to_scalar::<f32>().unwrap() as f64
        };
        for mimic in [false, true] {
            let (pooled, logits) = student.forward(&batch.ids, &batch.mask).unwrap();
            let loss = if mimic {
                mimic_loss(&pooled, batch.emb.as_ref().unwrap()).unwrap()
            } else {
                kd_loss(&logits, &batch, kd).unwrap()
            };
            let grads = loss.backward().unwrap();
            for (name, index) in [
                ("classifier.weight", 4),
                ("encoder.layer.0.attention.self.query.weight", 37),
                ("encoder.layer.0.intermediate.dense.bias", 3),
                ("embeddings.LayerNorm.bias", 5),
                ("pooler.dense.weight", 11),
            ] {
                if mimic && name.starts_with("classifier") {
                    continue;
                }
                let var = &student.vars[name];
                let g = grads
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[index] as f64;
                let orig = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let eps = 1e-2f32;
                let at = |delta: f32| {
                    let mut v = orig.clone();
                    v[index] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss_of(&student, mimic)
                };
                let num = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                at(0.0);
                assert!(
                    (num - g).abs() < 2e-3 + 0.05 * g.abs(),
                    "{name}[{index}] (mimic {mimic}): numeric {num} vs autograd {g}"
                );
            }
        }
    }

    #[test]
    fn kd_loss_on_tensors_matches_the_slice_version() {
        let tmp = tempfile::tempdir().unwrap();
        let teacher = tiny_teacher(&tmp.path().join("teacher"));
        let tok = tokenizer(&teacher, 24).unwrap();
        let batch = batch_of(
            &tok,
            &["a", "b"],
            &[[1.0, 0.2, -0.5], [-0.4, 0.1, 0.9]],
            &[Some(2), None],
        );
        let s = [[0.3f32, -0.2, 0.1], [0.0, 0.5, -1.0]];
        let logits = Tensor::from_iter(s.iter().flatten().copied(), &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let kd = KdWeights {
            temperature: 2.0,
            soft: 1.0,
            alpha: 0.5,
        };
        let got = kd_loss(&logits, &batch, kd)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mut g = [0.0; 3];
        let want = (crate::kd::kd_loss(&s[0], Some(&[1.0, 0.2, -0.5]), Some(2), kd, &mut g)
            + crate::kd::kd_loss(&s[1], Some(&[-0.4, 0.1, 0.9]), None, kd, &mut g))
            / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
