//! Labeling one shard: the unit of work a worker does, and what a cache commit holds.

use crate::teacher::{Labels, Teacher, Tokenized};
use crate::Result;
use distill_cache::corpus::Shard;
use distill_cache::format::{ShardData, ShardMeta};
use distill_cache::spec::OutputSpec;
use distill_cache::values::OutputValues;

/// A labeled shard, ready to commit, with the padding it cost.
#[derive(Debug)]
pub struct LabeledShard {
    pub meta: ShardMeta,
    pub data: ShardData,
    pub padded_tokens: u64,
}

/// The seed of a shard's sampled tokens: its fingerprint, so a relabel draws the same samples.
pub fn shard_seed(shard: &Shard) -> u64 {
    u64::from_str_radix(&shard.fingerprint.as_str()[..16], 16).unwrap_or(0)
}

/// Runs the teacher over a shard's rows.
pub fn label_shard(
    teacher: &Teacher,
    shard: &Shard,
    spec: &OutputSpec,
    corpus: &str,
    max_batch_tokens: usize,
) -> Result<LabeledShard> {
    let input = tokenize_shard(teacher, shard, spec)?;
    label_tokenized_shard(teacher, shard, &input, spec, corpus, max_batch_tokens)
}

/// The host half of [`label_shard`]: the shard's texts tokenized for `spec`.
pub fn tokenize_shard(teacher: &Teacher, shard: &Shard, spec: &OutputSpec) -> Result<Tokenized> {
    let texts: Vec<&str> = shard.rows.iter().map(|r| r.text.as_str()).collect();
    teacher.tokenize_for(&texts, spec)
}

/// The device half of [`label_shard`], from [`tokenize_shard`]'s output for the same shard and spec.
pub fn label_tokenized_shard(
    teacher: &Teacher,
    shard: &Shard,
    input: &Tokenized,
    spec: &OutputSpec,
    corpus: &str,
    max_batch_tokens: usize,
) -> Result<LabeledShard> {
    teacher.check_output(spec)?;
    let labels: Labels = if shard.rows.is_empty() {
        Labels {
            values: OutputValues::empty(spec, teacher.width()),
            tokens: vec![],
            truncated: vec![],
            device_seconds: 0.0,
            padded_tokens: 0,
            prefix_tokens_saved: 0,
        }
    } else {
        teacher.label_tokenized(input, spec, max_batch_tokens, shard_seed(shard))?
    };
    let data = ShardData {
        ids: shard.rows.iter().map(|r| r.id.clone()).collect(),
        texts: shard.rows.iter().map(|r| r.text.clone()).collect(),
        tokens: labels.tokens,
        truncated: labels.truncated,
        values: labels.values,
    };
    let meta = ShardMeta {
        schema_version: distill_cache::SCHEMA_VERSION,
        producer: distill_cache::PRODUCER.to_owned(),
        teacher: teacher.info().clone(),
        output: spec.clone(),
        output_fingerprint: spec.fingerprint(),
        shard_fingerprint: shard.fingerprint.clone(),
        corpus: corpus.to_owned(),
        shard_index: shard.index,
        rows: data.ids.len() as u64,
        rejected_rows: shard.rejects.len() as u64,
        truncated_rows: data.truncated.iter().filter(|t| **t).count() as u64,
        tokens: data.tokens.iter().map(|t| *t as u64).sum(),
        // Rounded as the metadata stores it, so what a worker reports equals what a later cache hit
        // reads back.
        device_seconds: (labels.device_seconds * 1e6).round() / 1e6,
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
