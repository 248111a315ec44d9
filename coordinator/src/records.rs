//! The JSON records the coordinator keeps per job in the store (paths in [`distill_cache::jobs`]).

use crate::sched::{FailedShard, JobState, Ledger};
use distill_cache::corpus::CorpusSpec;
use distill_cache::spec::{Dtype, OutputKind, OutputSpec};
use serde::{Deserialize, Serialize};

/// An accepted job: everything needed to plan it again after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub corpus: CorpusSpec,
    pub teacher: String,
    pub store: String,
    pub output: String,
    pub dtype: String,
    /// The resolved output spec (absent in records of the first release: `output` and `dtype` say it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_spec: Option<OutputSpec>,
    pub shard_size: u64,
    pub strict: bool,
    pub max_attempts: u32,
    pub teacher_fingerprint: String,
    pub output_fingerprint: String,
    pub created_unix_ms: i64,
}

impl JobRecord {
    /// The output spec the job labels into.
    pub fn spec(&self) -> OutputSpec {
        if let Some(s) = &self.output_spec {
            return s.clone();
        }
        let dtype = self.dtype.parse().unwrap_or(Dtype::F32);
        match self.output.parse() {
            Ok(OutputKind::Logits) => OutputSpec::Logits {
                dtype,
                prompt: None,
            },
            _ => OutputSpec::Embeddings { dtype },
        }
    }
}

/// A finished job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultRecord {
    pub state: JobState,
    pub error: Option<String>,
    pub ledger: Ledger,
    pub failed_shards: Vec<FailedShard>,
    pub reject_files: Vec<String>,
    /// Added after 0.1: records written before read as none.
    #[serde(default)]
    pub first_rejects: Vec<String>,
    pub manifest: Option<String>,
    pub finished_unix_ms: i64,
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
