//! What a labeling job is: the corpus, the teacher, the store, the output, and where it runs.

use crate::{LabelError, Result};
use distill_cache::corpus::CorpusSpec;
use distill_cache::format::OutputRequest;
use distill_cache::model_dir::ModelDir;
use distill_teacher::{DeviceSpec, LoadOptions, Resident, Teacher};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// One labeling job: run `teacher` over `corpus` once and cache `output` in `store`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub corpus: CorpusSpec,
    pub teacher: TeacherSpec,
    /// The cache store (a directory or URL). With a remote coordinator: optional, and must be the
    /// coordinator's.
    #[serde(default)]
    pub store: Option<String>,
    pub output: OutputRequest,
    /// Corpus entries per shard (the unit of caching, retry and parallelism).
    #[serde(default = "default_shard_size")]
    pub shard_size: u64,
    /// Fail on the first bad entry instead of recording it in the shard's rejects file.
    #[serde(default)]
    pub strict: bool,
    /// Attempts per shard before it is marked failed (0: the coordinator's default).
    #[serde(default)]
    pub max_attempts: u32,
    /// A running coordinator to submit to; `None`: coordinator and worker in this process.
    #[serde(default)]
    pub remote: Option<RemoteSpec>,
}

fn default_shard_size() -> u64 {
    1000
}

impl LabelSpec {
    /// A job in this process with the defaults: shards of 1000, rejects recorded, f32 on the CPU.
    pub fn new(corpus: &str, teacher: &str, store: &str, output: OutputRequest) -> Self {
        Self {
            corpus: CorpusSpec::new(corpus),
            teacher: TeacherSpec::new(teacher),
            store: Some(store.to_owned()),
            output,
            shard_size: default_shard_size(),
            strict: false,
            max_attempts: 0,
            remote: None,
        }
    }

    /// Rejects a spec that cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.shard_size == 0 {
            return invalid("--shard-size must be at least 1 (corpus entries per shard)");
        }
        match &self.remote {
            Some(r) => {
                r.wait()?;
            }
            None if self.store.is_none() => {
                return invalid("--store is required without --coordinator (the cache to write)")
            }
            None => {}
        }
        Ok(())
    }

    /// The coordinator's job spec.
    pub fn job(&self) -> distill_coordinator::JobSpec {
        let o = &self.output;
        distill_coordinator::JobSpec {
            corpus: self.corpus.clone(),
            teacher: self.teacher.model.clone(),
            store: self.store.clone().unwrap_or_default(),
            output: o.kind.name().into(),
            dtype: o.dtype.to_string(),
            top_k: o.top_k,
            samples: o.samples,
            window: o.window,
            stride: o.stride,
            prompt: o.prompt.clone(),
            shard_size: self.shard_size,
            strict: self.strict,
            max_attempts: self.max_attempts,
            precision: self.teacher.precision.wire().into(),
        }
    }
}

fn invalid<T>(m: &str) -> Result<T> {
    Err(LabelError::Invalid(m.to_owned()))
}

/// Which teacher, on which device, held how.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// An HF-layout model directory or a GGUF file, local or at an object-store URL.
    pub model: String,
    #[serde(default = "default_device")]
    pub device: DeviceSpec,
    /// Token budget of one forward batch (rows × padded length).
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// How a decoder's weights stay in memory on the CPU (compact or f32).
    #[serde(default)]
    pub resident: Resident,
    #[serde(default)]
    pub precision: Precision,
}

fn default_device() -> DeviceSpec {
    DeviceSpec::Cpu
}

fn default_max_batch_tokens() -> usize {
    4096
}

impl TeacherSpec {
    /// `model` on the CPU, compact, f32, batches of 4096 tokens.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            device: default_device(),
            max_batch_tokens: default_max_batch_tokens(),
            resident: Resident::default(),
            precision: Precision::default(),
        }
    }

    /// How the teacher is loaded (bf16 products hold bf16 weights).
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            resident: match self.precision {
                Precision::Bf16 => Resident::Bf16,
                Precision::F32 => self.resident,
            },
            memory_limit: None,
        }
    }

    /// Finds and inspects the model, then loads it on the chosen device.
    pub async fn load(&self) -> Result<Teacher> {
        self.load_dir(ModelDir::resolve(&self.model).await?).await
    }

    /// Loads an inspected model on the chosen device.
    pub async fn load_dir(&self, dir: ModelDir) -> Result<Teacher> {
        let (device, options) = (self.device.clone(), self.load_options());
        tokio::task::spawn_blocking(move || Teacher::load_with(&dir, &device, &options))
            .await
            .map_err(|e| LabelError::Local(format!("loading the teacher: {e}")))?
            .map_err(Into::into)
    }
}

/// The precision of a decoder teacher's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Weights and product inputs in bf16, accumulated in f32: what GPUs run fast; labels under
    /// another teacher fingerprint.
    Bf16,
}

impl Precision {
    /// As the wire names it ("" is f32, what jobs of earlier releases mean).
    pub fn wire(self) -> &'static str {
        match self {
            Self::F32 => "",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown precision {s:?}: use f32 or bf16")),
        }
    }
}

/// A running coordinator and how to reach it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    /// http://host:port, or https:// with TLS.
    pub url: String,
    /// Sent as `authorization: Bearer …`.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the coordinator's certificate (default: public roots).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Seconds to keep retrying a coordinator that cannot be reached or is not ready (a restart, a
    /// rollout) before giving up; the job goes on without the client.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: f64,
}

/// Seconds a client waits out an unreachable coordinator by default.
pub const WAIT_SECONDS: f64 = 600.0;

fn default_wait_seconds() -> f64 {
    WAIT_SECONDS
}

impl RemoteSpec {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            token: None,
            tls_ca: None,
            wait_seconds: WAIT_SECONDS,
        }
    }

    pub fn client_config(&self) -> distill_proto::ClientConfig {
        distill_proto::ClientConfig {
            url: self.url.clone(),
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
        }
    }

    /// How long to ride out an unreachable coordinator.
    pub fn wait(&self) -> Result<Duration> {
        Duration::try_from_secs_f64(self.wait_seconds).map_err(|_| {
            LabelError::Invalid(format!(
                "--wait-seconds {}: must be a number of seconds ≥ 0",
                self.wait_seconds
            ))
        })
    }
}
