//! Tasks: named classification problems defined over a cached corpus.
//!
//! A task turns a teacher's cached outputs into per-example class logits without running the teacher
//! again. Its logits are a *derived cache entry*: an ordinary logits entry
//! (`v1/<teacher>/<task output>/…`, same shard fingerprints as the base entry) whose output fingerprint
//! hashes the base entry and the head. Students train from it exactly as from a classifier teacher's
//! cached logits. The record below, at `v1/tasks/<name>.json`, names the entry and keeps the head and
//! the gold labels it was fitted on.

use crate::fingerprint::{Fingerprint, Hasher};
use crate::store::{describe_store_error, Location};
use crate::{CacheError, Result};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// How a task's logits were made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A linear head fitted on gold labels over cached embeddings.
    Head,
    /// Cosine similarity to teacher-embedded label descriptions, with a temperature.
    ZeroShot,
    /// A classifier teacher's own cached logits.
    Teacher,
}

impl TaskKind {
    /// The name records and listings use (as serialised).
    pub fn name(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::ZeroShot => "zero_shot",
            Self::Teacher => "teacher",
        }
    }
}

/// A linear head over cached embeddings: `logits = weight · x̂ + bias`, where `x̂` is `x` scaled to unit
/// length when `normalize_input` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    pub classes: usize,
    pub dim: usize,
    /// Row-major `classes × dim`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub normalize_input: bool,
}

impl LinearHead {
    /// The head's content fingerprint (weights, bias, normalisation).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Hasher::new("distill.head.v1");
        h.u64(self.classes as u64).u64(self.dim as u64);
        for v in self.weight.iter().chain(&self.bias) {
            h.field(&v.to_le_bytes());
        }
        h.u64(self.normalize_input as u64);
        h.finish()
    }

    /// Logits for one input vector.
    pub fn apply(&self, x: &[f32], out: &mut [f32]) {
        let scale = if self.normalize_input {
            let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                1.0 / n
            } else {
                1.0
            }
        } else {
            1.0
        };
        for (c, o) in out.iter_mut().enumerate() {
            let w = &self.weight[c * self.dim..(c + 1) * self.dim];
            *o = self.bias[c] + scale * w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
    }
}

/// One gold label the task was fitted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoldLabel {
    pub id: String,
    pub label: String,
}

/// The record of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub schema_version: u32,
    pub name: String,
    pub kind: TaskKind,
    /// Class names; logits column `i` is `labels[i]`.
    pub labels: Vec<String>,
    pub teacher: Fingerprint,
    /// The embeddings entry the head reads (the task entry itself for [`TaskKind::Teacher`]).
    pub base_output: Fingerprint,
    /// The logits entry of this task.
    pub output: Fingerprint,
    /// The corpus, as recorded in its manifest, and the manifest's fingerprint.
    pub corpus: String,
    pub corpus_fingerprint: Fingerprint,
    pub head: Option<LinearHead>,
    /// Zero-shot: the label descriptions and the temperature.
    #[serde(default)]
    pub descriptions: Vec<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// The gold labels used to fit the head (the trainer adds their cross-entropy to the distillation
    /// loss).
    #[serde(default)]
    pub gold: Vec<GoldLabel>,
    /// Teacher device-seconds spent to define the task (embedding label descriptions; 0 for a head).
    pub teacher_seconds: f64,
    pub rows: u64,
    pub created_unix: u64,
    /// How the head was chosen on the gold labels, when it was (cross-validated figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_validation: Option<serde_json::Value>,
}

/// The fingerprint of a derived task entry: base entry and head.
pub fn derived_output(
    teacher: &Fingerprint,
    base: &Fingerprint,
    head: &Fingerprint,
) -> Fingerprint {
    Hasher::new("distill.task-output.v1")
        .str(teacher.as_str())
        .str(base.as_str())
        .str(head.as_str())
        .clone()
        .finish()
}

/// Task names are path components: letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 100
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(CacheError::Task {
            name: name.to_owned(),
            reason: "a task name is 1-100 letters, digits, '.', '_' or '-', not starting with '.'"
                .into(),
        });
    }
    Ok(())
}

/// Writes (or replaces) a task record. The entry it names must be complete before this is called: the
/// record is the last thing written, so a reader never finds a task whose logits are partial.
pub async fn write_task(loc: &Location, record: &TaskRecord) -> Result<()> {
    check_name(&record.name)?;
    let path = loc.child(&crate::layout::task_path(&record.name));
    let bytes = serde_json::to_vec_pretty(record).expect("serialisable");
    loc.store
        .put(&path, PutPayload::from(bytes))
        .await
        .map_err(|e| CacheError::Store {
            url: loc.display(&path),
            reason: describe_store_error(&e),
        })?;
    Ok(())
}

/// Reads a task record; a missing task is an error naming the tasks the store has.
pub async fn read_task(loc: &Location, name: &str) -> Result<TaskRecord> {
    check_name(name)?;
    if let Some(record) = crate::catalog::get_json(loc, &crate::layout::task_path(name)).await? {
        return Ok(record);
    }
    let known = list_tasks(loc).await?;
    Err(CacheError::Task {
        name: name.to_owned(),
        reason: if known.is_empty() {
            format!(
                "no such task in {} (it has none: fit one with `distill task fit`)",
                loc.url
            )
        } else {
            format!("no such task in {} (it has: {})", loc.url, known.join(", "))
        },
    })
}

/// Names of the tasks a store holds, sorted.
pub async fn list_tasks(loc: &Location) -> Result<Vec<String>> {
    let dir = loc.child(&crate::layout::tasks_dir());
    let objects = crate::catalog::list_under(loc, &dir).await?;
    let mut names: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            o.location
                .filename()?
                .strip_suffix(".json")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_safe() {
        assert!(check_name("sentiment").is_ok());
        assert!(check_name("rt.review-vs_plot2").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn head_applies_with_and_without_normalisation() {
        let mut head = LinearHead {
            classes: 2,
            dim: 2,
            weight: vec![1.0, 0.0, 0.0, 2.0],
            bias: vec![0.5, -0.5],
            normalize_input: false,
        };
        let mut out = [0.0; 2];
        head.apply(&[3.0, 4.0], &mut out);
        assert_eq!(out, [3.5, 7.5]);
        head.normalize_input = true;
        head.apply(&[3.0, 4.0], &mut out);
        assert!((out[0] - 1.1).abs() < 1e-6 && (out[1] - 1.1).abs() < 1e-6);
        let fp = head.fingerprint();
        head.bias[0] = 0.0;
        assert_ne!(fp, head.fingerprint());
    }
}
