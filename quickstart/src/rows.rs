//! How a row of the table is made: a teacher with a task's head scored on the test set
//! ([`TeacherRow`]), a student trained and scored ([`train_student`], [`evaluate_student`]), and
//! the transformer students' shared embedding mimicry ([`mimic_once`]).

use crate::{QuickstartSpec, Result};
use distill_cache::model_dir::ModelDir;
use distill_cache::store::Location;
use distill_cache::task::TaskRecord;
use distill_student_trainer::eval::{self, EvalReport, TeacherSource};
use distill_student_trainer::model::{dir_bytes, Predictor};
use distill_student_trainer::recipe::{self, TaskStudent, TrainSpec};
use distill_student_trainer::transformer::{TransformerOptions, TransformerStudent};
use distill_tasks::data::{Example, TrainData};
use distill_tasks::labels::Fields;
use distill_teacher::{DeviceSpec, Teacher};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Texts the labeling loop's heads are timed on (their latency is the teacher's, timed in full on
/// the draw's `teacher + head` row).
const LOOP_TIMING_SAMPLES: usize = 50;

/// A "teacher + head" row: the teacher run live (for its latency), a task's head on top.
#[derive(Clone)]
pub struct TeacherRow {
    pub teacher: Arc<Teacher>,
    pub params: u64,
    pub bytes: u64,
    pub samples: usize,
    pub source: TeacherSource,
}

/// How a "teacher + head" row gets its classes.
#[derive(Clone, Copy, PartialEq)]
pub enum Scoring {
    /// The teacher run live over every test text.
    Live,
    /// The task's cached logits of the test rows (the head over the cached embeddings: what the live
    /// teacher gives, to float rounding), the teacher run live on a few texts for latency only: the
    /// labeling loop scores many heads.
    FromCache,
}

impl TeacherRow {
    /// The teacher of `dir` loaded on the CPU, its size from its files.
    pub async fn load(dir: &ModelDir, source: TeacherSource, samples: usize) -> Result<Self> {
        let teacher = load_teacher(dir).await?;
        Ok(Self {
            teacher,
            params: eval::safetensors_parameters(&dir.dir),
            bytes: weight_bytes(dir),
            samples,
            source,
        })
    }

    /// Scores `record`'s head on the teacher over the test set at `test_path`.
    pub async fn evaluate(
        &self,
        loc: &Location,
        record: &TaskRecord,
        test_path: &Path,
        row: &str,
        scoring: Scoring,
    ) -> Result<EvalReport> {
        let examples = test_examples(loc, record, test_path, &self.source).await?;
        let head = record.head.clone().expect("a fitted task has a head");
        let th = Predictor::TeacherHead(self.teacher.clone(), head, record.labels.clone());
        let (samples, params, bytes, name) =
            (self.samples, self.params, self.bytes, row.to_owned());
        let report = tokio::task::spawn_blocking(move || {
            if scoring == Scoring::FromCache {
                let samples = samples.min(LOOP_TIMING_SAMPLES);
                eval::evaluate_cached(&name, &th, &examples, samples, params, bytes)
            } else {
                eval::evaluate(&name, &th, &examples, samples, params, bytes)
            }
        })
        .await??;
        eprintln!("      {row}: {:.1}% accuracy", 100.0 * report.accuracy);
        Ok(report)
    }
}

/// Loads a teacher on the CPU off the async threads.
pub async fn load_teacher(dir: &ModelDir) -> Result<Arc<Teacher>> {
    let d = dir.clone();
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || Teacher::load(&d, &DeviceSpec::Cpu)).await??,
    ))
}

/// Bytes of a model's weight files.
pub fn weight_bytes(dir: &ModelDir) -> u64 {
    dir.weights
        .iter()
        .filter_map(|w| std::fs::metadata(w).ok())
        .map(|m| m.len())
        .sum()
}

/// The test set's examples for a task: its cached rows, labeled from the file.
pub async fn test_examples(
    loc: &Location,
    record: &TaskRecord,
    test_path: &Path,
    source: &TeacherSource,
) -> Result<Vec<Example>> {
    Ok(eval::labeled_examples_file(
        loc,
        record,
        test_path,
        &Fields::default(),
        &record.labels,
        source,
    )
    .await?)
}

/// How a draw's students are trained (into `dir`, no checkpoint folder given): the spec's settings.
pub fn student_spec(spec: &QuickstartSpec, kind: TaskStudent, dir: &Path, seed: u64) -> TrainSpec {
    let mut t = TrainSpec::new(kind, dir);
    t.seed = seed;
    t.transformer.layers = spec.layers;
    t.transformer.max_seq = spec.max_seq;
    t.transformer.mimic_epochs = spec.mimic_epochs;
    t.transformer.teacher = Some(spec.teacher.clone());
    t.epochs = (kind == TaskStudent::Transformer).then_some(spec.transformer_epochs);
    t
}

/// Trains one student of a task (progress bars as the spec says).
pub async fn train_student(
    spec: &QuickstartSpec,
    loc: &Location,
    record: &TaskRecord,
    train: &TrainSpec,
    mimicked: Option<&(TransformerStudent, String)>,
) -> Result<()> {
    let mimicked = mimicked.map(|(m, id)| (m, id.as_str()));
    let bars = distill_student_trainer::progress::bars(spec.progress);
    recipe::train(loc, record, train, mimicked, bars).await?;
    Ok(())
}

/// Loads a trained student from `dir` and scores it on `examples` as row `row`.
pub async fn evaluate_student(
    dir: &Path,
    examples: Vec<Example>,
    samples: usize,
    row: &str,
) -> Result<EvalReport> {
    let model = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Predictor::load(&dir, &DeviceSpec::Cpu)).await??
    };
    let (params, bytes) = (eval::parameters(&model, dir), dir_bytes(dir));
    let name = row.to_owned();
    let mut report = tokio::task::spawn_blocking(move || {
        eval::evaluate(&name, &model, &examples, samples, params, bytes)
    })
    .await??;
    report.model = row.to_owned();
    Ok(report)
}

/// An n-gram student distilled from a task (into `<out>/models/<task>-ngram`) and scored on the
/// test examples.
pub async fn distilled_ngram(
    spec: &QuickstartSpec,
    loc: &Location,
    record: &TaskRecord,
    exclude: &HashSet<String>,
    seed: u64,
    examples: Vec<Example>,
    row: &str,
) -> Result<EvalReport> {
    let dir = spec
        .out
        .join("models")
        .join(format!("{}-ngram", record.name));
    let mut train = TrainSpec::new(TaskStudent::Ngram, &dir);
    train.seed = seed;
    train.exclude = exclude.clone();
    eprintln!("    training {row}");
    train_student(spec, loc, record, &train, None).await?;
    let report = evaluate_student(&dir, examples, spec.latency_samples, row).await?;
    eprintln!("      {:.1}% accuracy", 100.0 * report.accuracy);
    Ok(report)
}

/// The task-agnostic embedding mimicry every transformer student of the run starts from, trained
/// once (resumed from its checkpoint after a failure), with the run id that names it.
pub async fn mimic_once(
    loc: &Location,
    record: &TaskRecord,
    train: &TrainSpec,
    dir: &ModelDir,
    progress: bool,
) -> Result<(TransformerStudent, String)> {
    let data = TrainData::open(loc, record, train.exclude.clone(), train.seed)
        .await?
        .with_embeddings(record)?;
    let opts = TransformerOptions {
        layers: train.transformer.layers,
        max_seq: train.transformer.max_seq,
        batch: train.batch,
        mimic_epochs: train.transformer.mimic_epochs,
        seed: train.seed,
        ..Default::default()
    };
    let dir = dir.clone();
    let ckpt = PathBuf::from(format!("{}.mimic-checkpoint", train.out.display()));
    let run_id = mimic_run_id(record, &opts, &train.exclude)?;
    tokio::task::spawn_blocking(move || -> Result<_> {
        let s = recipe::mimic(
            &dir,
            &data,
            &recipe::Phases {
                opts: &opts,
                run_id: &run_id,
                checkpoint: Some(&ckpt),
                device: &candle_core::Device::Cpu,
                progress: &distill_student_trainer::progress::bars(progress),
                validation: None,
            },
        )?;
        // Removed only on success: after a failure a rerun resumes from it.
        let _ = std::fs::remove_dir_all(&ckpt);
        Ok((s, run_id))
    })
    .await?
}

/// The mimicry's run id: the entry, the options and the ids kept out.
fn mimic_run_id(
    record: &TaskRecord,
    opts: &TransformerOptions,
    exclude: &HashSet<String>,
) -> Result<String> {
    let run_id = format!(
        "quickstart-mimic-{}-{}",
        record.base_output,
        serde_json::to_string(opts)?
    );
    let mut ids: Vec<&String> = exclude.iter().collect();
    ids.sort();
    Ok(
        distill_cache::fingerprint::Hasher::new("distill.quickstart-mimic")
            .str(&run_id)
            .str(&serde_json::to_string(&ids)?)
            .clone()
            .finish()
            .to_string(),
    )
}
