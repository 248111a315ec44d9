//! Labeling one shard: the unit of work a worker does, and what a cache commit holds.

use crate::teacher::{Labels, Teacher};
use crate::{Result, WorkerError};
use distill_cache::corpus::Shard;
use distill_cache::format::{OutputKind, OutputSpec, ShardData, ShardMeta};

/// Checks that a teacher can produce an output kind; the message says what to do instead.
pub fn check_output(teacher: &Teacher, kind: OutputKind) -> Result<()> {
    distill_cache::model_dir::check_output(&teacher.info().head, &teacher.info().source, kind)
        .map_err(WorkerError::Config)
}

/// A labeled shard, ready to commit, with the padding it cost.
#[derive(Debug)]
pub struct LabeledShard {
    pub meta: ShardMeta,
    pub data: ShardData,
    pub padded_tokens: u64,
}

/// Runs the teacher over a shard's rows.
pub fn label_shard(
    teacher: &Teacher,
    shard: &Shard,
    spec: OutputSpec,
    corpus: &str,
    max_batch_tokens: usize,
) -> Result<LabeledShard> {
    check_output(teacher, spec.kind)?;
    let texts: Vec<&str> = shard.rows.iter().map(|r| r.text.as_str()).collect();
    let labels: Labels = if texts.is_empty() {
        Labels {
            width: teacher.width(),
            ..Default::default()
        }
    } else {
        teacher.label(&texts, max_batch_tokens)?
    };
    let data = ShardData {
        ids: shard.rows.iter().map(|r| r.id.clone()).collect(),
        texts: shard.rows.iter().map(|r| r.text.clone()).collect(),
        tokens: labels.tokens,
        truncated: labels.truncated,
        values: labels.values,
        width: labels.width,
    };
    let meta = ShardMeta {
        schema_version: distill_cache::SCHEMA_VERSION,
        producer: distill_cache::PRODUCER.to_owned(),
        teacher: teacher.info().clone(),
        output: spec,
        output_fingerprint: spec.fingerprint(),
        shard_fingerprint: shard.fingerprint.clone(),
        corpus: corpus.to_owned(),
        shard_index: shard.index,
        rows: data.ids.len() as u64,
        rejected_rows: shard.rejects.len() as u64,
        truncated_rows: data.truncated.iter().filter(|t| **t).count() as u64,
        tokens: data.tokens.iter().map(|t| *t as u64).sum(),
        device_seconds: labels.device_seconds,
        device: teacher.device().to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    Ok(LabeledShard {
        meta,
        data,
        padded_tokens: labels.padded_tokens,
    })
}
