//! A loaded teacher: model, tokenizer and head, ready to label texts.
//!
//! The tokenizer comes from the model's `tokenizer.json`, with two overrides: no padding (many packaged
//! tokenizers pad every input to a fixed length; batching pads to the longest row of each batch instead)
//! and truncation at the model's `max_seq_length`. Truncated rows are counted, never dropped.

use crate::batching;
use crate::bert::{self, Bert};
use crate::{Result, WorkerError};
use candle_core::{Device, Tensor};
use distill_cache::model_dir::{Head, ModelDir, TeacherInfo};
use std::time::Instant;

/// Which device runs the teacher: `cpu` or `cuda:N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: use cpu or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    pub fn open(&self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(WorkerError::Device {
                        device: self.to_string(),
                        reason:
                            "this distill was built without CUDA: rebuild with `--features cuda`"
                                .into(),
                    });
                }
                Device::new_cuda(*n).map_err(|e| WorkerError::Device {
                    device: self.to_string(),
                    reason: crate::error::without_backtrace(e).to_string(),
                })
            }
        }
    }
}

/// One tokenized text.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

/// The teacher's outputs for a list of texts, in input order.
#[derive(Clone, Debug, Default)]
pub struct Labels {
    /// Row-major `texts × width`.
    pub values: Vec<f32>,
    pub width: usize,
    pub tokens: Vec<u32>,
    pub truncated: Vec<bool>,
    /// Wall-clock seconds spent in forward passes (the device time this work cost).
    pub device_seconds: f64,
    /// Token slots processed, padding included.
    pub padded_tokens: u64,
}

/// A teacher ready to run.
pub struct Teacher {
    model: Bert,
    tokenizer: tokenizers::Tokenizer,
    head: Head,
    device: Device,
    device_spec: DeviceSpec,
    info: TeacherInfo,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("info", &self.info)
            .field("device", &self.device_spec)
            .finish()
    }
}

pub use distill_cache::model_dir::COMPUTE_DTYPE;

impl Teacher {
    /// Loads a teacher from an inspected model directory. Fails with a message naming the model if its
    /// files do not fit together (tokenizer vocabulary vs `config.json`, weights vs `config.json`).
    pub fn load(dir: &ModelDir, device: &DeviceSpec) -> Result<Self> {
        let loc = dir.location.as_str();
        let model_err = |reason: String| WorkerError::Model {
            location: loc.to_owned(),
            reason,
        };
        let cfg_bytes = std::fs::read(&dir.config)
            .map_err(|e| model_err(format!("cannot read config.json: {e}")))?;
        let config: bert::Config = serde_json::from_slice(&cfg_bytes)
            .map_err(|e| model_err(format!("config.json: {e}")))?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(&dir.tokenizer)
            .map_err(|e| model_err(format!("tokenizer.json: {e}")))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(model_err(format!(
                "tokenizer.json has {vocab} tokens but config.json vocab_size is {}: they do not belong together",
                config.vocab_size
            )));
        }
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: dir.max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| model_err(format!("tokenizer.json: {e}")))?;
        let device_handle = device.open()?;
        let tensors = bert::load_tensors(&dir.weights, &device_handle).map_err(|e| {
            model_err(format!(
                "cannot read weights: {}",
                crate::error::without_backtrace(e)
            ))
        })?;
        let num_labels = match &dir.head {
            Head::Classifier { labels } => Some(labels.len()),
            Head::Embedding { .. } => None,
        };
        let model = Bert::load(loc, config, tensors, num_labels, &device_handle)?;
        let fingerprint = dir.fingerprint(COMPUTE_DTYPE)?;
        Ok(Self {
            model,
            tokenizer,
            head: dir.head.clone(),
            device: device_handle,
            device_spec: device.clone(),
            info: dir.info(fingerprint, COMPUTE_DTYPE),
        })
    }

    pub fn info(&self) -> &TeacherInfo {
        &self.info
    }

    /// The encoder's `config.json` fields.
    pub fn model_config(&self) -> &bert::Config {
        &self.model.config
    }

    pub fn device(&self) -> &DeviceSpec {
        &self.device_spec
    }

    /// Values per example: embedding dimension or number of labels.
    pub fn width(&self) -> usize {
        match &self.head {
            Head::Embedding { dim, .. } => *dim,
            Head::Classifier { labels } => labels.len(),
        }
    }

    /// Tokenizes texts (special tokens added, truncated to the model's limit, no padding).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| WorkerError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded {
                truncated: !e.get_overflowing().is_empty(),
                ids: e.get_ids().to_vec(),
            })
            .collect())
    }

    /// Runs one padded batch; returns `rows × width` values.
    pub fn forward(&self, rows: &[&Encoded]) -> Result<Vec<f32>> {
        let t = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let b = rows.len();
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (i, r) in rows.iter().enumerate() {
            ids[i * t..i * t + r.ids.len()].copy_from_slice(&r.ids);
            mask[i * t..i * t + r.ids.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, t), &self.device)?;
        let lengths: Vec<usize> = rows.iter().map(|r| r.ids.len()).collect();
        let states = self.model.forward(&ids, &mask, &lengths)?;
        let out = match &self.head {
            Head::Embedding {
                pooling, normalize, ..
            } => {
                let pooled = bert::pool(&states, &mask, *pooling)?;
                if *normalize {
                    bert::l2_normalize(&pooled)?
                } else {
                    pooled
                }
            }
            Head::Classifier { .. } => self.model.classify(&states)?,
        };
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Labels texts: tokenizes, batches by length under `max_batch_tokens`, runs the model and returns
    /// the outputs in input order.
    pub fn label(&self, texts: &[&str], max_batch_tokens: usize) -> Result<Labels> {
        let encoded = self.tokenize(texts)?;
        self.label_encoded(&encoded, max_batch_tokens)
    }

    /// Labels already tokenized texts.
    pub fn label_encoded(&self, encoded: &[Encoded], max_batch_tokens: usize) -> Result<Labels> {
        let width = self.width();
        let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
        let batches = batching::plan(&lengths, max_batch_tokens.max(1));
        let mut values = vec![0f32; encoded.len() * width];
        let start = Instant::now();
        for batch in &batches {
            let rows: Vec<&Encoded> = batch.rows.iter().map(|&i| &encoded[i]).collect();
            let out = self.forward(&rows)?;
            for (j, &i) in batch.rows.iter().enumerate() {
                values[i * width..(i + 1) * width]
                    .copy_from_slice(&out[j * width..(j + 1) * width]);
            }
        }
        Ok(Labels {
            values,
            width,
            tokens: lengths.iter().map(|&l| l as u32).collect(),
            truncated: encoded.iter().map(|e| e.truncated).collect(),
            device_seconds: start.elapsed().as_secs_f64(),
            padded_tokens: batching::padded_tokens(&batches),
        })
    }
}
