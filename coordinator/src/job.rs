//! A job's spec, in one shape from submission to lease: [`JobSpec`] is what a client submits (the
//! wire's `v1::JobSpec` converts to and from it in [`crate::wire`]), [`JobRecord`] is the accepted
//! job — the spec plus its id, resolved output and fingerprints — as the store keeps it and as the
//! scheduler carries it.

use distill_cache::corpus::CorpusSpec;
use distill_cache::spec::{Dtype, OutputKind, OutputSpec, PromptSpec};
use serde::{Deserialize, Serialize};

/// A job as submitted, in domain types (validated by [`crate::Coordinator::submit`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub corpus: CorpusSpec,
    pub teacher: String,
    /// The store to label into ("" on submission: the coordinator's).
    pub store: String,
    pub output: String,
    pub dtype: String,
    /// `token-topk` settings (0: the defaults). Resolved into [`JobRecord::output_spec`], so not
    /// recorded.
    #[serde(skip)]
    pub top_k: u32,
    #[serde(skip)]
    pub samples: u32,
    #[serde(skip)]
    pub window: u32,
    #[serde(skip)]
    pub stride: u32,
    /// Decoder logits: the prompt (resolved into [`JobRecord::output_spec`], so not recorded).
    #[serde(skip)]
    pub prompt: Option<PromptSpec>,
    pub shard_size: u64,
    pub strict: bool,
    /// Attempts per shard (0 on submission: the coordinator's default).
    pub max_attempts: u32,
    /// A decoder teacher's precision: "" (f32, as every record before it) or "bf16".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precision: String,
}

impl JobSpec {
    /// f32 embeddings of `corpus` by `teacher`, in shards of `shard_size`, into the coordinator's
    /// store with its default attempts: the other fields as `distill label` leaves them.
    pub fn embeddings(corpus: CorpusSpec, teacher: impl Into<String>, shard_size: u64) -> Self {
        Self {
            corpus,
            teacher: teacher.into(),
            store: String::new(),
            output: "embeddings".into(),
            dtype: "f32".into(),
            top_k: 0,
            samples: 0,
            window: 0,
            stride: 0,
            prompt: None,
            shard_size,
            strict: false,
            max_attempts: 0,
            precision: String::new(),
        }
    }
}

/// The precisions a job can ask for ("" is f32).
pub const PRECISIONS: &[&str] = &["", "bf16"];

impl JobSpec {
    /// The compute dtype of the teacher's fingerprint.
    pub fn compute_dtype(&self) -> &str {
        match self.precision.as_str() {
            "" => distill_cache::model_dir::COMPUTE_DTYPE,
            p => p,
        }
    }
}

/// An accepted job: everything needed to plan it again after a restart. Its JSON is the record's
/// first-release shape with fields only added (`output_spec`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    #[serde(flatten)]
    pub spec: JobSpec,
    /// The resolved output spec (absent in records of the first release: `output` and `dtype` say
    /// it; [`JobRecord::output_spec`] reads either).
    #[serde(
        default,
        rename = "output_spec",
        skip_serializing_if = "Option::is_none"
    )]
    resolved: Option<OutputSpec>,
    pub teacher_fingerprint: String,
    pub output_fingerprint: String,
    pub created_unix_ms: i64,
}

impl JobRecord {
    pub fn new(
        job_id: String,
        spec: JobSpec,
        output: OutputSpec,
        teacher_fingerprint: String,
        created_unix_ms: i64,
    ) -> Self {
        Self {
            job_id,
            output_fingerprint: output.fingerprint().to_string(),
            spec,
            resolved: Some(output),
            teacher_fingerprint,
            created_unix_ms,
        }
    }

    /// The output spec the job labels into.
    pub fn output_spec(&self) -> OutputSpec {
        if let Some(s) = &self.resolved {
            return s.clone();
        }
        let dtype = self.spec.dtype.parse().unwrap_or(Dtype::F32);
        match self.spec.output.parse() {
            Ok(OutputKind::Logits) => OutputSpec::Logits {
                dtype,
                prompt: None,
            },
            _ => OutputSpec::Embeddings { dtype },
        }
    }

    /// Whether `other` is the same work (corpus and how it is read, teacher, output, shard size,
    /// strictness): a resubmission attaches to a running twin instead of starting one.
    pub fn same_work(&self, other: &JobRecord) -> bool {
        let key = |r: &JobRecord| {
            (
                r.spec.corpus.url.clone(),
                r.spec.corpus.format,
                r.spec.corpus.text_field.clone(),
                r.spec.corpus.id_field.clone(),
                r.teacher_fingerprint.clone(),
                r.output_fingerprint.clone(),
                r.spec.shard_size,
                r.spec.strict,
            )
        };
        key(self) == key(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the first release wrote it (no `output_spec`) still reads, and a record written
    /// now keeps every field of that shape.
    #[test]
    fn records_of_the_first_release_read_and_new_ones_keep_their_shape() {
        let old = r#"{"job_id":"job-1","corpus":{"url":"c.jsonl","format":null,"text_field":"text","id_field":"id"},
            "teacher":"t","store":"file:///s","output":"logits","dtype":"f16","shard_size":10,"strict":false,
            "max_attempts":3,"teacher_fingerprint":"tf","output_fingerprint":"of","created_unix_ms":5}"#;
        let rec: JobRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.spec.corpus.url, "c.jsonl");
        assert_eq!(rec.spec.max_attempts, 3);
        assert_eq!(
            rec.output_spec(),
            OutputSpec::Logits {
                dtype: Dtype::F16,
                prompt: None
            }
        );
        let written = serde_json::to_value(JobRecord::new(
            "job-2".into(),
            rec.spec.clone(),
            OutputSpec::Embeddings { dtype: Dtype::F32 },
            "tf".into(),
            6,
        ))
        .unwrap();
        let old: serde_json::Value = serde_json::from_str(old).unwrap();
        for key in old.as_object().unwrap().keys() {
            assert!(
                written.get(key).is_some(),
                "{key} missing from a new record"
            );
        }
        assert!(written.get("output_spec").is_some());
        assert!(
            written.get("top_k").is_none(),
            "request-only fields are not recorded"
        );
    }
}
