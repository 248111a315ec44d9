//! Every conversion between the coordinator's domain types and the `distill.v1` messages, in one
//! place: a job spec from and to the wire (the server and `distill label` use the same one), jobs,
//! job states (proto enums, never text), prompts and shard reports. The ledger needs none: it is the
//! wire message itself ([`crate::sched::Ledger`]).

use crate::job::{JobRecord, JobSpec};
use crate::ledger::{FailedShardSummary, JobSummary};
use crate::sched::{Grant, Held, JobState, JobView, ShardStats};
use crate::service::{parse_format, CallResult};
use distill_cache::corpus::CorpusSpec;
use distill_proto::v1;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

impl JobSpec {
    /// A submission from a `SubmitJob` spec (empty strings take the documented defaults).
    pub fn from_wire(spec: v1::JobSpec) -> CallResult<Self> {
        let corpus = spec.corpus.unwrap_or_default();
        let or = |s: String, d: &str| if s.is_empty() { d.to_owned() } else { s };
        Ok(JobSpec {
            corpus: CorpusSpec {
                url: corpus.url,
                format: parse_format(&corpus.format)?,
                text_field: or(corpus.text_field, "text"),
                id_field: or(corpus.id_field, "id"),
                max_row_bytes: corpus.max_row_bytes,
            },
            teacher: spec.teacher,
            store: spec.store,
            output: or(spec.output, "embeddings"),
            dtype: or(spec.dtype, "f32"),
            top_k: spec.top_k,
            samples: spec.samples,
            window: spec.window,
            stride: spec.stride,
            prompt: spec.prompt.map(prompt_from_wire),
            shard_size: spec.shard_size,
            strict: spec.strict,
            max_attempts: spec.max_attempts,
            precision: match spec.precision.as_str() {
                "f32" => String::new(),
                p => p.to_owned(),
            },
        })
    }

    /// The spec `distill label` submits.
    pub fn to_wire(&self) -> v1::JobSpec {
        v1::JobSpec {
            corpus: Some(v1::CorpusSpec {
                url: self.corpus.url.clone(),
                format: self
                    .corpus
                    .format
                    .map(|f| f.name().to_owned())
                    .unwrap_or_default(),
                text_field: self.corpus.text_field.clone(),
                id_field: self.corpus.id_field.clone(),
                max_row_bytes: self.corpus.max_row_bytes,
            }),
            teacher: self.teacher.clone(),
            store: self.store.clone(),
            output: self.output.clone(),
            dtype: self.dtype.clone(),
            shard_size: self.shard_size,
            strict: self.strict,
            max_attempts: self.max_attempts,
            top_k: self.top_k,
            samples: self.samples,
            window: self.window,
            stride: self.stride,
            prompt: self.prompt.as_ref().map(prompt_to_wire),
            precision: self.precision.clone(),
        }
    }
}

/// A job state as the proto enum.
pub fn state_to_wire(s: JobState) -> v1::JobState {
    match s {
        JobState::Running => v1::JobState::Running,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

/// A job state from the proto enum (`None` for unspecified or unknown values).
pub fn state_from_wire(s: i32) -> Option<JobState> {
    match v1::JobState::try_from(s).ok()? {
        v1::JobState::Running => Some(JobState::Running),
        v1::JobState::Succeeded => Some(JobState::Succeeded),
        v1::JobState::Failed => Some(JobState::Failed),
        v1::JobState::Cancelled => Some(JobState::Cancelled),
        _ => None,
    }
}

impl ShardStats {
    /// A worker's report of one shard.
    pub fn from_wire(s: &v1::ShardStats) -> Self {
        Self {
            rows: s.rows,
            tokens: s.tokens,
            padded_tokens: s.padded_tokens,
            truncated_rows: s.truncated_rows,
            device_seconds: s.device_seconds,
            bytes_written: s.bytes_written,
            rows_reused: s.rows_reused,
            seconds_saved: s.seconds_saved,
        }
    }
}

impl JobSummary {
    /// The summary of a job as the coordinator reports it.
    pub fn from_wire(job: &v1::Job) -> Self {
        let spec = job.spec.clone().unwrap_or_default();
        Self {
            job_id: job.job_id.clone(),
            state: state_from_wire(job.state)
                .map(|s| s.name().to_owned())
                .unwrap_or_default(),
            error: job.error.clone(),
            corpus: spec.corpus.map(|c| c.url).unwrap_or_default(),
            store: spec.store,
            teacher: spec.teacher,
            teacher_fingerprint: job.teacher_fingerprint.clone(),
            output_fingerprint: job.output_fingerprint.clone(),
            manifest: job.manifest.clone(),
            ledger: job.ledger.unwrap_or_default(),
            reject_files: job.reject_files.clone(),
            first_rejects: job.first_rejects.clone(),
            failed_shards: job
                .failed_shards
                .iter()
                .map(|f| FailedShardSummary {
                    index: f.index,
                    fingerprint: f.fingerprint.clone(),
                    attempts: f.attempts,
                    last_error: f.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// Wall-clock milliseconds of a monotonic instant (deadlines on the wire).
pub fn unix_ms(at: Instant) -> i64 {
    let now = SystemTime::now();
    let wall = if at >= Instant::now() {
        now + at.duration_since(Instant::now())
    } else {
        now - Instant::now().duration_since(at)
    };
    wall.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The prompt of a job spec, from the wire.
pub fn prompt_from_wire(p: v1::Prompt) -> distill_cache::spec::PromptSpec {
    distill_cache::spec::PromptSpec {
        template: p.template,
        choices: p
            .choices
            .into_iter()
            .map(|c| distill_cache::spec::Choice {
                label: c.label,
                continuation: c.continuation,
            })
            .collect(),
        chat: p.chat,
        system: p.system,
        answer_prefix: p.answer_prefix,
        length_normalize: p.length_normalize,
    }
}

/// The prompt of a job spec, to the wire.
pub fn prompt_to_wire(p: &distill_cache::spec::PromptSpec) -> v1::Prompt {
    v1::Prompt {
        template: p.template.clone(),
        choices: p
            .choices
            .iter()
            .map(|c| v1::Choice {
                label: c.label.clone(),
                continuation: c.continuation.clone(),
            })
            .collect(),
        chat: p.chat,
        system: p.system.clone(),
        answer_prefix: p.answer_prefix.clone(),
        length_normalize: p.length_normalize,
    }
}

/// A job in wire form (`store`: the coordinator's store, where every job's cache is).
pub fn job_to_wire(v: JobView, store: &str) -> v1::Job {
    let l = v.ledger;
    let info = &v.info;
    let output = info.output_spec();
    let topk = match &output {
        distill_cache::spec::OutputSpec::TokenTopk(t) => Some(*t),
        _ => None,
    };
    let mut spec = info.spec.clone();
    spec.store = store.to_owned();
    if let Some(t) = topk {
        (spec.top_k, spec.samples, spec.window, spec.stride) =
            (t.top_k, t.samples, t.window, t.stride);
    }
    if let distill_cache::spec::OutputSpec::Logits { prompt, .. } = &output {
        spec.prompt = prompt.as_deref().cloned();
    }
    v1::Job {
        job_id: info.job_id.clone(),
        spec: Some(spec.to_wire()),
        state: state_to_wire(v.state) as i32,
        teacher_fingerprint: v.info.teacher_fingerprint.clone(),
        output_fingerprint: v.info.output_fingerprint.clone(),
        ledger: Some(l),
        failed_shards: v
            .failed
            .into_iter()
            .take(WIRE_LIST_LIMIT)
            .map(|f| v1::FailedShard {
                index: f.index,
                fingerprint: f.fingerprint.to_string(),
                attempts: f.attempts,
                last_error: f.last_error,
            })
            .collect(),
        error: v.error.unwrap_or_default(),
        planned: v.planned,
        shards_pending: v.pending,
        shards_leased: v.leased,
        shards_done: v.done,
        manifest: v.manifest.unwrap_or_default(),
        created_unix_ms: v.info.created_unix_ms,
        finished_unix_ms: v.finished_unix_ms,
        reject_files: v.reject_files.into_iter().take(WIRE_LIST_LIMIT).collect(),
        first_rejects: v.first_rejects,
    }
}

/// Failed shards and reject files sent per job (the counts are in the ledger, the full lists in the
/// job's `result.json`): a job of a million shards still fits in a message.
pub const WIRE_LIST_LIMIT: usize = 100;

impl Held {
    /// A lease a worker re-states when it registers.
    pub fn from_wire(h: v1::HeldLease) -> Self {
        Held {
            lease_id: h.lease_id,
            job: h.job_id,
            index: h.shard_index,
        }
    }
}

/// A granted lease as the worker receives it: the shard and everything needed to label it.
pub fn lease_to_wire(g: Grant, info: &JobRecord) -> v1::ShardLease {
    v1::ShardLease {
        lease_id: g.lease_id,
        job_id: g.job,
        shard_index: g.index,
        shard_fingerprint: g.fingerprint.to_string(),
        teacher: info.spec.teacher.clone(),
        teacher_fingerprint: info.teacher_fingerprint.clone(),
        output: info.spec.output.clone(),
        dtype: info.spec.dtype.clone(),
        store: info.spec.store.clone(),
        input: g.input,
        corpus: info.spec.corpus.url.clone(),
        deadline_unix_ms: unix_ms(g.deadline),
        speculative: g.speculative,
        attempt: g.attempt,
        output_spec: serde_json::to_string(&info.output_spec()).expect("serialisable"),
        precision: info.spec.precision.clone(),
    }
}
