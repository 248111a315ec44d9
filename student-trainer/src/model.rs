//! Saved students: the on-disk layout, atomic writing, loading and prediction.
//!
//! Every student directory has `config.json`, `model.safetensors` and `distill.json` (what it is and
//! where it came from). A transformer student is a standard Hugging Face `BertForSequenceClassification`
//! checkpoint with the teacher's tokenizer files; an n-gram student has `model_type: "distill-ngram"`.
//! Directories are written aside and renamed into place: a reader never sees a half-written model.

use crate::dir::INFO_FILE;
use crate::ngram::{NgramConfig, NgramModel};
use crate::{Result, StudentError};
use candle_core::{Device, Tensor};
use distill_cache::model_dir::{Head, ModelDir};
use distill_teacher::{DeviceSpec, Teacher};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// `distill.json`: what a student directory holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudentInfo {
    /// `transformer`, `ngram` or `lm`.
    pub kind: String,
    pub task: String,
    pub labels: Vec<String>,
    pub teacher: String,
    /// The task's logits entry the student was distilled from.
    pub task_output: String,
    pub producer: String,
    pub created_unix: u64,
    /// Training settings and figures, for the record.
    #[serde(default)]
    pub training: serde_json::Value,
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v).expect("serialisable"))
        .map_err(StudentError::io(path))
}

fn id2label(labels: &[String]) -> (serde_json::Value, serde_json::Value) {
    let a: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    let b: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    (a.into(), b.into())
}

/// Saves an n-gram student into `dir` (use inside [`crate::dir::write_dir`]).
pub fn save_ngram(model: &NgramModel, info: &StudentInfo, dir: &Path) -> Result<()> {
    let (i2l, l2i) = id2label(&model.labels);
    let config = serde_json::json!({
        "model_type": "distill-ngram",
        "architectures": ["DistillNgramClassifier"],
        "buckets": model.config.buckets,
        "dim": model.config.dim,
        "word_ngrams": model.config.word_ngrams,
        "char_ngram": model.config.char_ngram,
        "id2label": i2l,
        "label2id": l2i,
    });
    write_json(&dir.join("config.json"), &config)?;
    let c = model.labels.len();
    let d = model.config.dim;
    let tensors: HashMap<String, Tensor> = [
        (
            "embeddings.weight",
            Tensor::from_slice(&model.embeddings, (model.config.buckets, d), &Device::Cpu)?,
        ),
        (
            "classifier.weight",
            Tensor::from_slice(&model.weight, (c, d), &Device::Cpu)?,
        ),
        (
            "classifier.bias",
            Tensor::from_slice(&model.bias, c, &Device::Cpu)?,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    write_json(&dir.join(INFO_FILE), info)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(StudentError::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| StudentError::File {
        path: path.display().to_string(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// A loaded model that predicts class logits: a student, or a teacher with a task head.
pub enum Predictor {
    Ngram(NgramModel),
    /// A `BertForSequenceClassification` directory (a transformer student or a classifier teacher).
    Bert(Box<Teacher>, Vec<String>),
    /// An embedding teacher followed by a task's linear head.
    TeacherHead(
        std::sync::Arc<Teacher>,
        distill_cache::task::LinearHead,
        Vec<String>,
    ),
    /// A decoder teacher scoring a prompt's choices, then the task's calibration head.
    Prompted(
        std::sync::Arc<Teacher>,
        Box<distill_cache::spec::PromptSpec>,
        distill_cache::task::LinearHead,
        Vec<String>,
    ),
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ngram(_) => "Predictor::Ngram",
            Self::Bert(..) => "Predictor::Bert",
            Self::TeacherHead(..) => "Predictor::TeacherHead",
            Self::Prompted(..) => "Predictor::Prompted",
        })
    }
}

impl Predictor {
    /// Loads a model directory written by `distill train` (or any BertForSequenceClassification one).
    pub fn load(dir: &Path, device: &DeviceSpec) -> Result<Self> {
        let name = dir.display().to_string();
        let model_err = |reason: String| StudentError::Model {
            path: name.clone(),
            reason,
        };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(model_err("no config.json: not a model directory".into()));
        }
        let config: serde_json::Value = read_json(&config_path)?;
        if config.get("model_type").and_then(|v| v.as_str()) == Some("distill-ngram") {
            let cfg = NgramConfig {
                buckets: json_usize(&config, "buckets").map_err(&model_err)?,
                dim: json_usize(&config, "dim").map_err(&model_err)?,
                word_ngrams: json_usize(&config, "word_ngrams").map_err(&model_err)?,
                char_ngram: json_usize(&config, "char_ngram").map_err(&model_err)?,
            };
            let labels = labels_of(&config).map_err(&model_err)?;
            let weights = dir.join("model.safetensors");
            let t = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| {
                model_err(format!(
                    "model.safetensors: {}",
                    distill_teacher::error::without_backtrace(e)
                ))
            })?;
            let get = |k: &str, shape: &[usize]| -> Result<Vec<f32>> {
                let v = t
                    .get(k)
                    .ok_or_else(|| model_err(format!("model.safetensors has no {k}")))?;
                if v.dims() != shape {
                    return Err(model_err(format!(
                        "model.safetensors {k} has shape {:?}, config.json implies {shape:?}",
                        v.dims()
                    )));
                }
                Ok(v.flatten_all()?.to_vec1::<f32>()?)
            };
            let c = labels.len();
            return Ok(Self::Ngram(NgramModel {
                embeddings: get("embeddings.weight", &[cfg.buckets, cfg.dim])?,
                weight: get("classifier.weight", &[c, cfg.dim])?,
                bias: get("classifier.bias", &[c])?,
                labels,
                config: cfg,
            }));
        }
        let md = ModelDir::inspect(&name, dir)?;
        let Head::Classifier { labels } = md.head.clone() else {
            return Err(model_err(
                "not a classifier (config.json architectures has no *ForSequenceClassification): give a student or classifier directory".into(),
            ));
        };
        let teacher = Teacher::load(&md, device)?;
        Ok(Self::Bert(Box::new(teacher), labels))
    }

    /// [`Self::load_for_task`] on the blocking pool.
    pub async fn load_for_task_async(
        dir: &Path,
        device: &DeviceSpec,
        task: &distill_cache::task::TaskRecord,
    ) -> Result<Self> {
        let (dir, device, task) = (dir.to_owned(), device.clone(), task.clone());
        tokio::task::spawn_blocking(move || Self::load_for_task(&dir, &device, &task))
            .await
            .map_err(|e| StudentError::Invalid(format!("loading thread: {e}")))?
    }

    /// Loads a model for a task: a student or classifier directory, or — when `dir` is the embedding
    /// teacher the task was fitted on — the teacher with the task's head (teacher + head).
    pub fn load_for_task(
        dir: &Path,
        device: &DeviceSpec,
        task: &distill_cache::task::TaskRecord,
    ) -> Result<Self> {
        let name = dir.display().to_string();
        if let (Ok(md), Some(head)) = (ModelDir::inspect(&name, dir), &task.head) {
            if matches!(md.head, Head::Embedding { .. }) {
                let teacher = Teacher::load(&md, device)?;
                if teacher.info().fingerprint != task.teacher {
                    return Err(StudentError::Model {
                        path: name,
                        reason: format!(
                            "an embedding model with fingerprint {}, but task {} was fitted on teacher {}",
                            teacher.info().fingerprint,
                            task.name,
                            task.teacher
                        ),
                    });
                }
                return Ok(Self::TeacherHead(
                    std::sync::Arc::new(teacher),
                    head.clone(),
                    task.labels.clone(),
                ));
            }
        }
        Self::load(dir, device)
    }

    pub fn labels(&self) -> &[String] {
        match self {
            Self::Ngram(m) => &m.labels,
            Self::Bert(_, l) | Self::TeacherHead(_, _, l) | Self::Prompted(_, _, _, l) => l,
        }
    }

    /// Class logits of each text, batched where the model benefits.
    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(match self {
            Self::Ngram(m) => texts.iter().map(|t| m.logits(t)).collect(),
            Self::Bert(t, _) => {
                let out = t.label(texts, 8192)?;
                let v = out.vectors();
                v.values.chunks(v.width).map(<[f32]>::to_vec).collect()
            }
            Self::TeacherHead(t, head, _) => {
                let out = t.label(texts, 8192)?;
                let v = out.vectors();
                v.values
                    .chunks(v.width)
                    .map(|e| {
                        let mut z = vec![0.0; head.classes];
                        head.apply(e, &mut z);
                        z
                    })
                    .collect()
            }
            Self::Prompted(t, prompt, head, _) => {
                let out = t.label_prompted(texts, prompt, 8192)?;
                let v = out.vectors();
                v.values
                    .chunks(v.width)
                    .map(|e| {
                        let mut z = vec![0.0; head.classes];
                        head.apply(e, &mut z);
                        z
                    })
                    .collect()
            }
        })
    }
}

fn json_usize(v: &serde_json::Value, k: &str) -> std::result::Result<usize, String> {
    v.get(k)
        .and_then(|x| x.as_u64())
        .map(|x| x as usize)
        .ok_or_else(|| format!("config.json has no integer {k:?}"))
}

fn labels_of(v: &serde_json::Value) -> std::result::Result<Vec<String>, String> {
    let map = v
        .get("id2label")
        .and_then(|m| m.as_object())
        .ok_or("config.json has no id2label")?;
    let mut labels = vec![String::new(); map.len()];
    for (k, l) in map {
        let i: usize = k
            .parse()
            .map_err(|_| format!("id2label key {k:?} is not an integer"))?;
        let slot = labels.get_mut(i).ok_or("id2label must map 0..N-1")?;
        *slot = l
            .as_str()
            .ok_or("id2label values must be strings")?
            .to_owned();
    }
    Ok(labels)
}

/// Bytes of every file in a directory (the model's size on disk).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A trained model scores rows for a task's suggestions (teacher–student disagreement).
impl distill_tasks::suggest::Classifier for Predictor {
    fn labels(&self) -> &[String] {
        Predictor::labels(self)
    }

    fn logits(
        &self,
        texts: &[&str],
    ) -> std::result::Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Predictor::logits(self, texts)?)
    }
}
