//! `task fit` as one library call: a [`FitSpec`] (which cached entry, which gold labels or label
//! descriptions, the head's settings) → the task's record, written with its derived logits entry.
//!
//! The task's kind follows from the spec and the entry: label descriptions give a zero-shot head;
//! gold labels on embeddings a cross-validated head; gold labels on a prompted decoder's class
//! scores a calibration; a classifier teacher's logits are the task as they are. (A teacher tuned on
//! the gold labels first is `distill_student_trainer::tuned::fit`, after [`prepare`].)

use crate::labels::{self, Fields, Gold};
use crate::logreg::CvOptions;
use crate::task::{self, Entry, EntryQuery, ZeroShot};
use crate::{Result, TaskError};
use distill_cache::model_dir::ModelDir;
use distill_cache::spec::OutputKind;
use distill_cache::store::Location;
use distill_cache::task::TaskRecord;
use distill_teacher::{DeviceSpec, Teacher};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One task to fit from a cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitSpec {
    /// Task name (letters, digits, '.', '_', '-').
    pub name: String,
    /// Which cached corpus, when the store holds several: a part of its path or URL.
    pub corpus: Option<String>,
    /// Which teacher, when the corpus was labeled by several: a prefix of its fingerprint.
    pub teacher_fingerprint: Option<String>,
    /// Which output, when one teacher labeled the corpus several ways.
    pub output: Option<String>,
    /// Gold labels: JSONL with an id and a label per line (ids of the cached corpus).
    pub labels: Option<PathBuf>,
    pub fields: Fields,
    /// Add `labels` to the existing task's gold labels and fit it again on the same entry.
    pub add: bool,
    /// Zero-shot: (label, description) per class, embedded by the teacher.
    pub describe: Vec<(String, String)>,
    /// Zero-shot: the teacher model (default: the source recorded in the cache).
    pub teacher: Option<String>,
    /// Zero-shot softmax temperature on cosine similarities.
    pub temperature: f32,
    /// The head's cross-validation (C fixed with `c`), or a calibration's folds and seed.
    pub cv: CvOptions,
    /// Fewest gold examples a class may have.
    pub min_per_class: usize,
}

impl Default for FitSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            corpus: None,
            teacher_fingerprint: None,
            output: None,
            labels: None,
            fields: Fields::default(),
            add: false,
            describe: Vec::new(),
            teacher: None,
            temperature: 0.05,
            cv: CvOptions::default(),
            min_per_class: 2,
        }
    }
}

impl FitSpec {
    fn query(&self, kind: Option<OutputKind>) -> EntryQuery<'_> {
        EntryQuery {
            corpus: self.corpus.as_deref(),
            teacher: self.teacher_fingerprint.as_deref(),
            output: self.output.as_deref(),
            kind,
        }
    }

    /// A fixed `C` must be a positive number.
    pub fn check_c(&self) -> Result<()> {
        match self.cv.c.filter(|c| !(c.is_finite() && *c > 0.0)) {
            Some(c) => Err(TaskError::Invalid(format!(
                "--c {c}: must be a positive number"
            ))),
            None => Ok(()),
        }
    }
}

/// The gold labels a fit reads (merged into the task's with `add`), the file they came from, and the
/// entry they are fitted on.
pub struct Prepared {
    pub gold: Vec<Gold>,
    pub path: String,
    pub entry: Entry,
}

/// Reads the spec's gold labels and finds its entry: the existing task's with `add`, else the one
/// the spec names.
pub async fn prepare(loc: &Location, spec: &FitSpec) -> Result<Prepared> {
    let fields = Fields {
        // Suggestions left unlabeled are skipped when they are added.
        skip_unlabeled: spec.add,
        ..spec.fields.clone()
    };
    let mut gold = match &spec.labels {
        Some(p) => labels::read(p, &fields)?,
        None => Vec::new(),
    };
    let path = spec
        .labels
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !spec.add {
        let entry = task::find_entry(loc, &spec.query(None)).await?;
        return Ok(Prepared { gold, path, entry });
    }
    // The task as it is: its gold labels, and the entry it was fitted on.
    let existing = distill_cache::task::read_task(loc, &spec.name).await?;
    let before = existing.gold.len();
    gold = labels::merge(&existing.gold, gold, &path)?;
    tracing::info!(
        task = %spec.name,
        gold = gold.len(),
        added = gold.len() - before,
        "gold labels added from {path}"
    );
    let (teacher, output) = (
        existing.teacher.to_string(),
        existing.base_output.to_string(),
    );
    let query = EntryQuery {
        corpus: None,
        teacher: Some(&teacher),
        output: Some(&output),
        kind: None,
    };
    let entry = task::find_entry(loc, &query).await?;
    Ok(Prepared { gold, path, entry })
}

/// Fits the task the spec describes and writes its record.
pub async fn fit(loc: &Location, spec: &FitSpec) -> Result<TaskRecord> {
    if !spec.describe.is_empty() {
        return zero_shot(loc, spec).await;
    }
    let Prepared { gold, path, entry } = prepare(loc, spec).await?;
    match entry.spec.kind() {
        Some(OutputKind::Embeddings) => {
            if gold.is_empty() {
                return Err(TaskError::Invalid(format!(
                    "{} is cached as embeddings: give gold labels (--labels FILE) or label descriptions (--describe LABEL=TEXT)",
                    entry.manifest.corpus
                )));
            }
            spec.check_c()?;
            let (name, min) = (&spec.name, spec.min_per_class);
            task::fit_head(loc, name, &entry, &gold, &path, spec.cv, min).await
        }
        Some(OutputKind::Logits) if entry.spec_is_prompted() && !gold.is_empty() => {
            let (folds, seed) = (spec.cv.folds, spec.cv.seed);
            task::fit_calibrated(loc, &spec.name, &entry, &gold, &path, folds, seed).await
        }
        Some(OutputKind::Logits) => {
            let info = distill_cache::catalog::read_teacher(loc, &entry.manifest.teacher).await?;
            if !gold.is_empty() {
                task::gold_embeddings(loc, &entry, &gold, &path).await?;
            }
            task::from_teacher(loc, &spec.name, &entry, &info, &gold, &path).await
        }
        _ => unreachable!("find_entry returns per-example entries only"),
    }
}

/// A zero-shot head: the teacher (the cache's own, checked by fingerprint) embeds each label's
/// description.
async fn zero_shot(loc: &Location, spec: &FitSpec) -> Result<TaskRecord> {
    let entry = task::find_entry(loc, &spec.query(Some(OutputKind::Embeddings))).await?;
    let mut labels: Vec<String> = Vec::new();
    for (l, _) in &spec.describe {
        if labels.contains(l) {
            return Err(TaskError::Invalid(format!(
                "--describe: label {l:?} is described twice"
            )));
        }
        labels.push(l.clone());
    }
    let descriptions: Vec<String> = spec.describe.iter().map(|d| d.1.clone()).collect();
    let info = distill_cache::catalog::read_teacher(loc, &entry.manifest.teacher).await?;
    let source = spec.teacher.clone().unwrap_or(info.source.clone());
    let dir = ModelDir::resolve(&source).await?;
    let fp = entry.manifest.teacher.clone();
    let texts = descriptions.clone();
    let (embedded, secs) = tokio::task::spawn_blocking(move || embed(&dir, &fp, &texts))
        .await
        .map_err(|e| TaskError::Invalid(format!("embedding the descriptions: {e}")))??;
    let z = ZeroShot {
        labels,
        descriptions,
        embedded,
        temperature: spec.temperature,
        teacher_seconds: secs,
    };
    task::fit_zero_shot(loc, &spec.name, &entry, z).await
}

/// The descriptions embedded by the teacher of `dir`, which must be the cache's (`fp`), and the
/// device-seconds it took.
fn embed(
    dir: &ModelDir,
    fp: &distill_cache::fingerprint::Fingerprint,
    texts: &[String],
) -> Result<(Vec<Vec<f32>>, f64)> {
    let teacher = Teacher::load(dir, &DeviceSpec::Cpu)?;
    if &teacher.info().fingerprint != fp {
        return Err(TaskError::Invalid(format!(
            "teacher {} has fingerprint {}, but the cache was labeled by {}: give the same teacher with --teacher",
            dir.location,
            teacher.info().fingerprint,
            fp
        )));
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let out = teacher.label(&texts, 4096)?;
    let v = out.vectors();
    let embedded = v.values.chunks(v.width).map(<[f32]>::to_vec).collect();
    Ok((embedded, out.device_seconds))
}
