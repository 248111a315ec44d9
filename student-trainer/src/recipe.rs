//! The training recipes of the task students — what `distill train` and the quickstart run, as a
//! library: a [`TrainSpec`] (the defaults per student, the settings), the checkpoint life cycle (a
//! folder per run, resumed only by the same run, removed when the model is written), the run
//! fingerprint, and the transformer's mimic-then-distill. The command line maps its flags onto a spec;
//! tests build specs directly. (The LM student's recipe is [`crate::lm::train_lm`].)

use crate::checkpoint;
use crate::dir::write_dir;
use crate::early::Validation;
use crate::kd::KdWeights;
use crate::model::{save_ngram, StudentInfo};
use crate::ngram::{self, NgramConfig, NgramTrainOptions, StepReport};
use crate::optim::AdamW;
use crate::transformer::{self, Phase, TransformerOptions, TransformerStudent};
use crate::{Result, StudentError};
use distill_cache::model_dir::ModelDir;
use distill_cache::store::Location;
use distill_cache::task::TaskRecord;
use distill_tasks::data::{Holdout, Selection, Side, TrainData};
use distill_teacher::DeviceSpec;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The students a task trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskStudent {
    /// A hashed bag-of-n-grams model.
    Ngram,
    /// A BERT initialised from the teacher's layers.
    Transformer,
}

impl TaskStudent {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ngram => "ngram",
            Self::Transformer => "transformer",
        }
    }
}

/// Transformer settings.
#[derive(Clone, Debug)]
pub struct TransformerSettings {
    pub layers: usize,
    pub random_init: bool,
    /// Epochs of embedding mimicry before distillation (0: none).
    pub mimic_epochs: usize,
    pub max_seq: usize,
    /// The teacher model (default: the source recorded with the cache); its fingerprint must be the
    /// task's teacher's.
    pub teacher: Option<String>,
    /// A pretrained BERT-family encoder (HF directory, local or in object storage) the student starts
    /// from, with its own tokenizer over the rows' texts: what lets any task — an LLM's included —
    /// have a transformer student. `None`: the task's teacher, which must then be a BERT.
    pub init: Option<String>,
    pub device: DeviceSpec,
    pub checkpoint_every: u64,
}

impl Default for TransformerSettings {
    fn default() -> Self {
        Self {
            layers: 2,
            random_init: false,
            mimic_epochs: 1,
            max_seq: 128,
            teacher: None,
            init: None,
            device: DeviceSpec::Cpu,
            checkpoint_every: 200,
        }
    }
}

/// What to train for a task, and how. `None` fields take the student's default.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    pub student: TaskStudent,
    /// The model directory (written aside and renamed into place when complete).
    pub out: PathBuf,
    /// Ids never trained on (a held-out test set).
    pub exclude: HashSet<String>,
    /// The task's gold labels alone (no soft labels): the few-shot baseline.
    pub gold_only: bool,
    /// Default: 10 n-gram, 2 transformer; 60 / 20 with `gold_only`.
    pub epochs: Option<usize>,
    pub batch: usize,
    /// Default: 0.01 n-gram, 1e-4 transformer.
    pub lr: Option<f64>,
    pub temperature: f32,
    pub alpha: f32,
    pub seed: u64,
    pub shuffle_buffer: usize,
    /// Transformer: share of the soft-labeled rows held out to score each epoch, the best epoch's
    /// weights exported (0: none). Only with 2 epochs or more and soft labels (not `gold_only`).
    pub holdout: f64,
    /// Transformer: epochs without a better held-out score before training stops (0: never early).
    pub patience: usize,
    /// Transformer: layer-wise learning-rate decay (1: one rate for every layer).
    pub layer_lr_decay: f64,
    pub ngram: NgramConfig,
    pub transformer: TransformerSettings,
    /// The checkpoint folder (default `<out>.checkpoint`).
    pub checkpoint: Option<PathBuf>,
}

impl TrainSpec {
    /// A spec with every default for `student` writing to `out`.
    pub fn new(student: TaskStudent, out: &Path) -> Self {
        Self {
            student,
            out: out.to_owned(),
            exclude: HashSet::new(),
            gold_only: false,
            epochs: None,
            batch: 32,
            lr: None,
            temperature: 1.0,
            alpha: 0.5,
            seed: 0,
            shuffle_buffer: 4096,
            holdout: 0.1,
            patience: 2,
            layer_lr_decay: 1.0,
            ngram: NgramConfig::default(),
            transformer: TransformerSettings::default(),
            checkpoint: None,
        }
    }

    /// Rejects settings that cannot train, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let t = &self.transformer;
        let checks: [(bool, &str); 9] = [
            (self.batch == 0, "--batch must be at least 1"),
            (self.ngram.buckets == 0, "--buckets must be at least 1"),
            (self.ngram.dim == 0, "--dim must be at least 1"),
            (
                self.shuffle_buffer == 0,
                "--shuffle-buffer must be at least 1",
            ),
            (t.max_seq < 2, "--max-seq must be at least 2"),
            (
                !(0.0..0.5).contains(&self.holdout),
                "--holdout must be at least 0 and under 0.5",
            ),
            (
                !(self.layer_lr_decay > 0.0 && self.layer_lr_decay <= 1.0),
                "--layer-lr-decay must be above 0 and at most 1",
            ),
            (
                !(self.temperature.is_finite() && self.temperature > 0.0),
                "--temperature must be a positive number",
            ),
            (
                !(self.alpha.is_finite() && self.alpha >= 0.0)
                    || self.lr.is_some_and(|l| !(l.is_finite() && l > 0.0)),
                "--alpha must be ≥ 0 and --lr > 0",
            ),
        ];
        match checks.iter().find(|c| c.0) {
            Some((_, msg)) => Err(StudentError::Invalid((*msg).into())),
            None => Ok(()),
        }
    }

    fn checkpoint_dir(&self) -> PathBuf {
        checkpoint::folder_for(&self.out, self.checkpoint.as_deref())
    }
}

/// Makes the progress reporter of a training phase (`"n-gram"`, `"mimic"`, `"distill"`): a progress
/// bar on the command line, nothing in tests.
pub type Progress = Arc<dyn Fn(&'static str) -> Box<dyn FnMut(StepReport) + Send> + Send + Sync>;

/// A progress reporter that reports nothing.
pub fn quiet() -> Progress {
    Arc::new(|_| Box::new(|_| {}))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Identifies a run by everything that decides its result, so a checkpoint is only resumed by the
/// same run: settings, the task's entry and gold labels, the excluded ids, the shuffle buffer and the
/// starting point.
fn run_fingerprint(task: &TaskRecord, settings: &str, spec: &TrainSpec, base: &str) -> String {
    let mut ids: Vec<&String> = spec.exclude.iter().collect();
    ids.sort();
    let mut h = distill_cache::fingerprint::Hasher::new("distill.train-run");
    h.str(task.output.as_str())
        .str(settings)
        .str(base)
        .u64(spec.shuffle_buffer as u64)
        .u64(spec.gold_only as u64);
    for g in &task.gold {
        h.str(&g.id).str(&g.label);
    }
    for id in ids {
        h.str(id);
    }
    h.finish().to_string()
}

fn join_err(e: tokio::task::JoinError) -> StudentError {
    StudentError::Invalid(format!("training thread: {e}"))
}

/// Finds the teacher for a transformer student and checks it is the one the cache was labeled with.
pub async fn teacher_dir(
    loc: &Location,
    task: &TaskRecord,
    given: Option<&str>,
) -> Result<ModelDir> {
    let source = match given {
        Some(s) => s.to_owned(),
        None => {
            distill_cache::catalog::read_teacher(loc, &task.teacher)
                .await?
                .source
        }
    };
    let dir = ModelDir::resolve(&source).await?;
    let fp = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            dir.fingerprint(distill_teacher::teacher::COMPUTE_DTYPE)
        })
        .await
        .map_err(join_err)??
    };
    if fp != task.teacher {
        return Err(StudentError::Invalid(format!(
            "teacher {source} has fingerprint {fp}, but task {} was cached from teacher {}: the student would get another tokenizer and weights; give the cache's teacher with --teacher",
            task.name, task.teacher
        )));
    }
    Ok(dir)
}

/// The encoder of `--init`: a BERT-family HF directory whose tokenizer adds `[CLS]` and `[SEP]`, or an
/// error naming it and what is wrong.
pub async fn init_dir(init: &str) -> Result<ModelDir> {
    let dir = ModelDir::resolve(init).await?;
    let bad = |reason: String| StudentError::Model {
        path: init.to_owned(),
        reason,
    };
    if dir.family != distill_cache::model_dir::Family::Bert {
        return Err(bad(format!(
            "--init must be a BERT-family encoder (BertModel, MiniLM, BertForSequenceClassification), not {} ({})",
            dir.architecture,
            if dir.family == distill_cache::model_dir::Family::Llama {
                "a decoder"
            } else {
                "another family"
            }
        )));
    }
    let tok = transformer::tokenizer(&dir, 16)?;
    let enc = tok
        .encode("a", true)
        .map_err(|e| bad(format!("tokenizer.json: {e}")))?;
    let (cls, sep) = (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"));
    let ids = enc.get_ids();
    if cls.is_none() || sep.is_none() || ids.first() != cls.as_ref() || ids.last() != sep.as_ref() {
        return Err(bad(
            "tokenizer.json does not wrap a text in [CLS] … [SEP] (missing special tokens or post-processor): a BERT student needs them".into(),
        ));
    }
    Ok(dir)
}

/// Trains and saves one student of a task. `mimicked`: a transformer whose pooled output already
/// mimics the teacher's embeddings (skips the mimic phase; used to share it across tasks).
pub async fn train(
    loc: &Location,
    task: &TaskRecord,
    spec: &TrainSpec,
    mimicked: Option<(&TransformerStudent, &str)>,
    progress: Progress,
) -> Result<StudentInfo> {
    spec.validate()?;
    if spec.gold_only && task.gold.is_empty() {
        return Err(StudentError::Invalid(format!(
            "--gold-only: task {} has no gold labels",
            task.name
        )));
    }
    let mut data = TrainData::open(loc, task, spec.exclude.clone(), spec.seed).await?;
    data.buffer = spec.shuffle_buffer.max(1);
    let holdout = holdout_of(spec, data.rows);
    let data = match holdout {
        Some(h) => data.split(h, Side::Train),
        None => data,
    };
    let data = if spec.gold_only {
        data.select(Selection::Gold)
    } else {
        data
    };
    let info = StudentInfo {
        kind: spec.student.name().into(),
        task: task.name.clone(),
        labels: task.labels.clone(),
        teacher: task.teacher.to_string(),
        task_output: task.output.to_string(),
        producer: distill_cache::PRODUCER.into(),
        created_unix: now(),
        training: serde_json::Value::Null,
    };
    match spec.student {
        TaskStudent::Ngram => train_ngram(task, spec, data, info, progress).await,
        TaskStudent::Transformer => {
            let held = TransformerRun { holdout, mimicked };
            train_transformer(loc, task, spec, data, info, held, progress).await
        }
    }
}

/// The soft-label and gold weights of a run: gold labels alone with `gold_only`.
fn blend(spec: &TrainSpec) -> (f32, f32) {
    match spec.gold_only {
        true => (1.0, 0.0),
        false => (spec.alpha, 1.0),
    }
}

/// What a transformer run brings beside the data: its held-out slice and a shared mimicked start.
struct TransformerRun<'a> {
    holdout: Option<Holdout>,
    mimicked: Option<(&'a TransformerStudent, &'a str)>,
}

/// The n-gram student: trains on a blocking thread and writes its directory.
async fn train_ngram(
    task: &TaskRecord,
    spec: &TrainSpec,
    data: TrainData,
    mut info: StudentInfo,
    progress: Progress,
) -> Result<StudentInfo> {
    let (out, checkpoint) = (spec.out.clone(), spec.checkpoint_dir());
    let (alpha, soft) = blend(spec);
    let cfg = spec.ngram;
    let opts = NgramTrainOptions {
        epochs: spec.epochs.unwrap_or(if spec.gold_only { 60 } else { 10 }),
        batch: spec.batch,
        lr: spec.lr.unwrap_or(0.01),
        kd: KdWeights {
            temperature: spec.temperature,
            soft,
            alpha,
        },
        seed: spec.seed,
        ..Default::default()
    };
    info.training = serde_json::json!({
        "epochs": opts.epochs, "batch": opts.batch, "lr": opts.lr, "temperature": spec.temperature,
        "alpha": opts.kd.alpha, "gold_only": spec.gold_only, "buckets": cfg.buckets, "dim": cfg.dim,
        "seed": spec.seed, "excluded_ids": spec.exclude.len(),
    });
    let info2 = info.clone();
    checkpoint::prepare(&checkpoint)?;
    let run_id = run_fingerprint(task, &format!("{cfg:?}-{opts:?}"), spec, "");
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut step = progress("n-gram");
        let model = ngram::train(
            &data,
            cfg,
            &opts,
            Some((&checkpoint.join("ngram"), &run_id)),
            &mut step,
        )?;
        drop(step);
        write_dir(&out, |tmp| save_ngram(&model, &info2, tmp))?;
        checkpoint::remove(&checkpoint);
        Ok(())
    })
    .await
    .map_err(join_err)??;
    Ok(info)
}

/// The transformer student: its starting encoder, options and run id, then mimicry (where the
/// task's embeddings live in its space) and distillation on a blocking thread.
async fn train_transformer(
    loc: &Location,
    task: &TaskRecord,
    spec: &TrainSpec,
    data: TrainData,
    mut info: StudentInfo,
    run: TransformerRun<'_>,
    progress: Progress,
) -> Result<StudentInfo> {
    let TransformerRun { holdout, mimicked } = run;
    let (out, checkpoint) = (spec.out.clone(), spec.checkpoint_dir());
    let (alpha, soft) = blend(spec);
    let t = &spec.transformer;
    // The encoder the student starts from, and whether it is the task's teacher (then its
    // embeddings live in the student's space and the mimic phase applies).
    let (dir, own_teacher) = match &t.init {
        Some(init) => {
            let dir = init_dir(init).await?;
            let fp = dir.fingerprint(distill_teacher::teacher::COMPUTE_DTYPE)?;
            let own = fp.to_string() == task.teacher.to_string();
            (dir, own)
        }
        None => {
            let dir = teacher_dir(loc, task, t.teacher.as_deref()).await?;
            if dir.family != distill_cache::model_dir::Family::Bert {
                return Err(StudentError::Invalid(format!(
                    "task {} was labeled by {} ({}), a decoder: give the transformer student a pretrained encoder to start from with --init (e.g. all-MiniLM-L6-v2), or use --student ngram",
                    task.name, dir.location, dir.architecture
                )));
            }
            (dir, true)
        }
    };
    let mimicked = mimicked.filter(|_| own_teacher);
    let device = t.device.open()?;
    let opts = TransformerOptions {
        layers: t.layers,
        from_teacher: !t.random_init,
        max_seq: t.max_seq,
        batch: spec.batch,
        mimic_epochs: if !own_teacher || mimicked.is_some() || task.head.is_none() || spec.gold_only
        {
            0
        } else {
            t.mimic_epochs
        },
        init: t.init.as_ref().map(|_| dir.location.clone()),
        soft,
        normalize_target: task.head.as_ref().is_some_and(|h| h.normalize_input),
        epochs: transformer_epochs(spec),
        holdout: holdout.map(|h| h.fraction).unwrap_or(0.0),
        patience: holdout.map(|_| spec.patience).unwrap_or(0),
        layer_lr_decay: spec.layer_lr_decay,
        lr: spec.lr.unwrap_or(1e-4),
        temperature: spec.temperature,
        alpha,
        seed: spec.seed,
        adamw: AdamW::default(),
        checkpoint_every: t.checkpoint_every,
        ..Default::default()
    };
    info.training = serde_json::to_value(&opts).expect("serialisable");
    info.training["excluded_ids"] = spec.exclude.len().into();
    checkpoint::prepare(&checkpoint)?;
    let run_id = run_fingerprint(
        task,
        &serde_json::to_string(&opts).expect("serialisable"),
        spec,
        mimicked.map(|m| m.1).unwrap_or(""),
    );
    let mimic_data = if opts.mimic_epochs > 0 && mimicked.is_none() {
        let mut d = TrainData::open(loc, task, spec.exclude.clone(), spec.seed)
            .await?
            .with_embeddings(task)?;
        d.buffer = spec.shuffle_buffer.max(1);
        Some(d)
    } else {
        None
    };
    let validation = match holdout {
        Some(h) => Some(
            TrainData::open(loc, task, spec.exclude.clone(), spec.seed)
                .await?
                .split(h, Side::Held),
        ),
        None => None,
    };
    let base = mimicked.map(|m| m.0.duplicate()).transpose()?;
    let head = task.head.clone();
    let info2 = info.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let student = mimic_then_distill(
            &dir,
            &data,
            mimic_data.as_ref(),
            base,
            head.as_ref(),
            &Phases {
                opts: &opts,
                run_id: &run_id,
                checkpoint: Some(&checkpoint),
                device: &device,
                progress: &progress,
                validation: validation.as_ref(),
            },
        )?;
        write_dir(&out, |tmp| student.save_hf(tmp, &info2))?;
        checkpoint::remove(&checkpoint);
        Ok(())
    })
    .await
    .map_err(join_err)??;
    Ok(info)
}

/// A transformer student's epochs: the spec's, or 2 (20 on gold labels alone).
fn transformer_epochs(spec: &TrainSpec) -> usize {
    spec.epochs.unwrap_or(if spec.gold_only { 20 } else { 2 })
}

/// The held-out slice of a transformer run over a corpus of `rows`: only with soft labels, a share
/// above 0 and 2 epochs or more (one epoch has no other to choose).
fn holdout_of(spec: &TrainSpec, rows: u64) -> Option<Holdout> {
    let on = spec.student == TaskStudent::Transformer
        && !spec.gold_only
        && spec.holdout > 0.0
        && transformer_epochs(spec) > 1;
    on.then(|| Holdout::of(spec.holdout, rows, spec.seed))
}

/// What every phase of a transformer run shares: its options, run id, checkpoint folder, device,
/// progress reporter and the held-out rows that score its distillation epochs.
pub struct Phases<'a> {
    pub opts: &'a TransformerOptions,
    pub run_id: &'a str,
    pub checkpoint: Option<&'a Path>,
    pub device: &'a candle_core::Device,
    pub progress: &'a Progress,
    pub validation: Option<&'a TrainData>,
}

/// The transformer recipe: (optionally) mimic the teacher's embeddings, put the task head on the
/// mimicked pooled output, then distill the task's logits. Blocking.
pub fn mimic_then_distill(
    dir: &ModelDir,
    data: &TrainData,
    mimic_data: Option<&TrainData>,
    base: Option<TransformerStudent>,
    head: Option<&distill_cache::task::LinearHead>,
    p: &Phases<'_>,
) -> Result<TransformerStudent> {
    let tok = transformer::tokenizer(dir, p.opts.max_seq)?;
    let mimicked = base.is_some() || mimic_data.is_some();
    let mut student = match base {
        Some(s) => s,
        None => TransformerStudent::new(dir, data.labels.clone(), p.opts, p.device)?,
    };
    if let Some(md) = mimic_data {
        run_phase(&student, &tok, Phase::Mimic, md, None, p)?;
    }
    if let (true, Some(h)) = (mimicked, head) {
        student.set_head(h, data.labels.clone())?;
    } else if student.labels != data.labels {
        return Err(StudentError::Invalid(
            "internal: a mimicked student needs the task's head".into(),
        ));
    }
    let held = match p.validation {
        Some(v) => {
            let rows = v.collect()?;
            let val = Validation::new(&tok, &rows, data.labels.len(), p.opts.batch, p.device)?;
            if val.is_none() {
                tracing::warn!("the held-out slice is empty (a small corpus): no early stopping");
            }
            val
        }
        None => None,
    };
    run_phase(&student, &tok, Phase::Distill, data, held.as_ref(), p)?;
    Ok(student)
}

/// The task-agnostic phase alone: a student whose pooled output mimics the teacher's embeddings.
pub fn mimic(dir: &ModelDir, data: &TrainData, p: &Phases<'_>) -> Result<TransformerStudent> {
    let tok = transformer::tokenizer(dir, p.opts.max_seq)?;
    let student = TransformerStudent::new(dir, data.labels.clone(), p.opts, p.device)?;
    run_phase(&student, &tok, Phase::Mimic, data, None, p)?;
    Ok(student)
}

/// One phase with its epochs and learning rate from the options, a progress reporter, and its own
/// checkpoint folder (`<checkpoint>/mimic`, `<checkpoint>/distill`).
fn run_phase(
    student: &TransformerStudent,
    tok: &transformer::Tokenizer,
    phase: Phase,
    data: &TrainData,
    validation: Option<&Validation>,
    p: &Phases<'_>,
) -> Result<()> {
    let (name, epochs, lr) = match phase {
        Phase::Mimic => ("mimic", p.opts.mimic_epochs, p.opts.mimic_lr),
        Phase::Distill => ("distill", p.opts.epochs, p.opts.lr),
    };
    if epochs == 0 {
        return Ok(());
    }
    let step = (p.progress)(name);
    let (run_id, checkpoint) = (
        format!("{}-{name}", p.run_id),
        p.checkpoint.map(|c| c.join(name)),
    );
    let run = transformer::PhaseRun {
        phase,
        epochs,
        lr,
        run_id: &run_id,
        checkpoint: checkpoint.as_deref(),
        validation,
    };
    transformer::train_phase(student, tok, data, p.opts, run, step)
}
