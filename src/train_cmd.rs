//! `distill train`: distill a student from a task's cached soft labels (no teacher pass).

use clap::{Args, ValueEnum};
use distill_cache::model_dir::ModelDir;
use distill_cache::store::{self, Location};
use distill_cache::task::TaskRecord;
use distill_student_trainer::checkpoint;
use distill_student_trainer::data::{Selection, TrainData};
use distill_student_trainer::kd::KdWeights;
use distill_student_trainer::model::{save_ngram, write_dir, StudentInfo};
use distill_student_trainer::ngram::{self, NgramConfig, NgramTrainOptions, StepReport};
use distill_student_trainer::optim::AdamW;
use distill_student_trainer::transformer::{self, Phase, TransformerOptions, TransformerStudent};
use distill_teacher::DeviceSpec;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StudentKind {
    /// A BERT with the teacher's tokenizer and N layers (exported as BertForSequenceClassification).
    Transformer,
    /// A hashed bag-of-n-grams model (fastText-like).
    Ngram,
    /// A smaller llama causal LM from a decoder teacher's token-topk entry (exported as
    /// LlamaForCausalLM, optionally GGUF).
    Lm,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Cache store holding the task.
    #[arg(long, env = "DISTILL_CACHE")]
    pub cache: String,
    /// The task to distill (see `distill task fit`); not for --student lm, which reads a token-topk
    /// entry (--corpus, --teacher-fingerprint, --output choose it).
    #[arg(long, env = "DISTILL_TASK")]
    pub task: Option<String>,
    #[arg(long, env = "DISTILL_STUDENT", value_enum)]
    pub student: StudentKind,
    /// Output directory (written aside and renamed into place when complete).
    #[arg(long, env = "DISTILL_OUT")]
    pub out: PathBuf,
    /// Ids never to train on (a held-out test set): JSONL with an `id` field or one id per line.
    #[arg(long, env = "DISTILL_EXCLUDE")]
    pub exclude: Option<PathBuf>,
    /// Train on the task's gold labels alone (no teacher soft labels): the few-shot baseline.
    #[arg(long, env = "DISTILL_GOLD_ONLY")]
    pub gold_only: bool,
    /// Epochs of distillation (default: 10 n-gram, 2 transformer; 60 with --gold-only).
    #[arg(long, env = "DISTILL_EPOCHS")]
    pub epochs: Option<usize>,
    /// Examples per step (default 32; lm: chunks of --max-seq tokens per step, default 8).
    #[arg(long, env = "DISTILL_BATCH")]
    pub batch: Option<usize>,
    /// Peak learning rate (default: 0.01 n-gram, 1e-4 transformer).
    #[arg(long, env = "DISTILL_LR")]
    pub lr: Option<f64>,
    /// Distillation temperature T.
    #[arg(long, env = "DISTILL_TEMPERATURE", default_value_t = 1.0)]
    pub temperature: f32,
    /// Weight α of the gold cross-entropy (default 0.5; lm: of the next-token cross-entropy blended
    /// into the KD loss, default 0.1).
    #[arg(long, env = "DISTILL_ALPHA")]
    pub alpha: Option<f32>,
    #[arg(long, env = "DISTILL_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Shuffle-buffer size (examples held in memory while streaming shards).
    #[arg(long, env = "DISTILL_SHUFFLE_BUFFER", default_value_t = 4096)]
    pub shuffle_buffer: usize,
    /// Transformer: encoder layers (default 2); lm: decoder layers, from evenly spaced teacher layers
    /// (default 4).
    #[arg(long, env = "DISTILL_LAYERS")]
    pub layers: Option<usize>,
    /// Transformer: initialise from random weights instead of the teacher's layers.
    #[arg(long, env = "DISTILL_RANDOM_INIT")]
    pub random_init: bool,
    /// Transformer: epochs of task-agnostic embedding mimicry before distillation (0 = none).
    #[arg(long, env = "DISTILL_MIMIC_EPOCHS", default_value_t = 1)]
    pub mimic_epochs: usize,
    /// Transformer: tokens per text (longer texts are truncated).
    #[arg(long, env = "DISTILL_MAX_SEQ", default_value_t = 128)]
    pub max_seq: usize,
    /// Transformer: the teacher model (default: the source recorded in the cache); its fingerprint
    /// must match the cache's.
    #[arg(long, env = "DISTILL_TEACHER")]
    pub teacher: Option<String>,
    /// Transformer: device to train on.
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Checkpoint folder (default: `<out>.checkpoint`), removed when the model is written; a rerun with
    /// the same settings resumes from it. The n-gram student saves after every epoch, the transformer
    /// every --checkpoint-every steps and after every epoch.
    #[arg(long, env = "DISTILL_CHECKPOINT")]
    pub checkpoint: Option<PathBuf>,
    /// Transformer: optimiser steps between checkpoints (0: only at the end of each epoch).
    #[arg(long, env = "DISTILL_CHECKPOINT_EVERY", default_value_t = 200)]
    pub checkpoint_every: u64,
    /// N-gram: hash buckets.
    #[arg(long, env = "DISTILL_BUCKETS", default_value_t = 1 << 17)]
    pub buckets: usize,
    /// N-gram: embedding width.
    #[arg(long, env = "DISTILL_DIM", default_value_t = 32)]
    pub dim: usize,
    /// N-gram: word n-grams up to this length.
    #[arg(long, env = "DISTILL_WORD_NGRAMS", default_value_t = 2)]
    pub word_ngrams: usize,
    /// N-gram: character n-gram length inside words (0: none).
    #[arg(long, env = "DISTILL_CHAR_NGRAM", default_value_t = 3)]
    pub char_ngram: usize,
    /// lm: the loss — ce (next token only), topk (KL on the teacher's top-k and tail), sampled (the
    /// sampled-token estimate; needs an entry labeled with --samples).
    #[arg(long, env = "DISTILL_LOSS", default_value = "topk")]
    pub loss: distill_student_trainer::lm::LmLoss,
    /// lm: stop after this many optimiser steps (0: the epochs decide).
    #[arg(long, env = "DISTILL_MAX_STEPS", default_value_t = 0)]
    pub max_steps: u64,
    /// lm: train the embedding table and the tied output head too (frozen by default).
    #[arg(long, env = "DISTILL_TRAIN_EMBEDDINGS")]
    pub train_embeddings: bool,
    /// lm: also write `model.gguf` with matrices in f16 or q8_0 (a GGUF teacher's tokenizer).
    #[arg(long, env = "DISTILL_GGUF")]
    pub gguf: Option<String>,
    /// lm: which cached corpus, when the store holds several: a part of its path or URL.
    #[arg(long, env = "DISTILL_TASK_CORPUS")]
    pub corpus: Option<String>,
    /// lm: which teacher: a prefix of its fingerprint.
    #[arg(long, env = "DISTILL_TEACHER_FINGERPRINT")]
    pub teacher_fingerprint: Option<String>,
    /// lm: which token-topk entry, when a teacher labeled the corpus several ways: as `cache ls` shows
    /// it or a prefix of its fingerprint.
    #[arg(long = "output", env = "DISTILL_TASK_OUTPUT")]
    pub output: Option<String>,
}

impl TrainArgs {
    pub fn layers(&self) -> usize {
        self.layers.unwrap_or(if self.student == StudentKind::Lm {
            4
        } else {
            2
        })
    }

    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(if self.student == StudentKind::Lm {
            8
        } else {
            32
        })
    }

    pub fn alpha(&self) -> f32 {
        self.alpha.unwrap_or(if self.student == StudentKind::Lm {
            0.1
        } else {
            0.5
        })
    }

    /// Defaults for a command line with only the required flags.
    pub fn new(cache: &str, task: &str, student: StudentKind, out: &Path) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            a: TrainArgs,
        }
        let kind = match student {
            StudentKind::Transformer => "transformer",
            StudentKind::Ngram => "ngram",
            StudentKind::Lm => "lm",
        };
        P::parse_from([
            "train",
            "--cache",
            cache,
            "--task",
            task,
            "--student",
            kind,
            "--out",
            &out.display().to_string(),
        ])
        .a
    }
}

pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let loc = store::open(&args.cache, false)?;
    if args.student == StudentKind::Lm {
        return run_lm(&loc, &args).await;
    }
    let Some(name) = &args.task else {
        anyhow::bail!(
            "--task is required for the {} student",
            format!("{:?}", args.student).to_lowercase()
        );
    };
    let task = distill_cache::task::read_task(&loc, name).await?;
    let exclude = match &args.exclude {
        Some(p) => distill_student_trainer::labels::read_ids(p)?,
        None => HashSet::new(),
    };
    let started = std::time::Instant::now();
    let info = train(&loc, &task, &args, exclude, None, true).await?;
    println!(
        "trained a {} student for task {} in {:.0} s → {}",
        info.kind,
        task.name,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// `distill train --student lm`: maps the flags onto the library's recipe.
async fn run_lm(loc: &Location, args: &TrainArgs) -> anyhow::Result<()> {
    use distill_student_trainer::lm::{self, LmOptions, LmTrainSpec};
    if args.task.is_some() {
        anyhow::bail!("--task: the lm student reads a token-topk entry, not a task (choose it with --corpus / --teacher-fingerprint / --output)");
    }
    if args.temperature != 1.0 {
        anyhow::bail!(
            "--temperature {}: a token-topk entry holds log-probabilities at temperature 1, and its top-k cannot be renormalised at another temperature exactly (the tail's tokens are unknown); distill refuses rather than approximate",
            args.temperature
        );
    }
    if args.gold_only {
        anyhow::bail!("--gold-only applies to task students; for an LM trained on the next token alone use --loss ce");
    }
    args.validate()?;
    let defaults = LmOptions::default();
    let spec = LmTrainSpec {
        corpus: args.corpus.clone(),
        teacher_fingerprint: args.teacher_fingerprint.clone(),
        output: args.output.clone(),
        teacher: args.teacher.clone(),
        exclude: match &args.exclude {
            Some(p) => distill_student_trainer::labels::read_ids(p)?,
            None => HashSet::new(),
        },
        options: LmOptions {
            layers: args.layers(),
            from_teacher: !args.random_init,
            train_embeddings: args.train_embeddings,
            loss: args.loss,
            alpha: if args.loss == lm::LmLoss::Ce {
                1.0
            } else {
                args.alpha()
            },
            max_seq: args.max_seq,
            batch: args.batch(),
            epochs: args.epochs.unwrap_or(1),
            max_steps: args.max_steps,
            lr: args.lr.unwrap_or(defaults.lr),
            seed: args.seed,
            checkpoint_every: args.checkpoint_every,
            ..defaults
        },
        out: args.out.clone(),
        checkpoint: args.checkpoint.clone(),
        gguf: args.gguf.clone(),
        device: args.device.clone(),
    };
    let started = std::time::Instant::now();
    let mut bar = TrainBar::new(true, "lm");
    let trained = lm::train_lm(loc, &spec, move |r| bar.step(r)).await?;
    println!(
        "trained an lm student ({} parameters, {} rows, {} tokens per epoch, loss {:?}) in {:.0} s → {}",
        trained.parameters,
        trained.rows,
        trained.tokens_per_epoch,
        args.loss,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// Training progress: a bar on a terminal, a line every 10% in logs, nothing when hidden.
pub struct TrainBar {
    bar: indicatif::ProgressBar,
    lines: bool,
    smooth: f32,
    what: &'static str,
}

impl TrainBar {
    pub fn new(show: bool, what: &'static str) -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if show && terminal {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}} ETA {{eta}}"
            ))
            .expect("valid template"),
        );
        Self {
            bar,
            lines: show && !terminal,
            smooth: 0.0,
            what,
        }
    }

    pub fn step(&mut self, r: StepReport) {
        self.smooth = if r.step == 1 {
            r.loss
        } else {
            0.95 * self.smooth + 0.05 * r.loss
        };
        self.bar.set_length(r.total);
        self.bar.set_position(r.step);
        let msg = format!(
            "epoch {} loss {:.4} lr {:.2e}",
            r.epoch + 1,
            self.smooth,
            r.lr
        );
        if self.lines && (r.step.is_multiple_of((r.total / 10).max(1)) || r.step == r.total) {
            eprintln!(
                "  {} step {}/{} ({:.0} s) {msg}",
                self.what,
                r.step,
                r.total,
                self.bar.elapsed().as_secs_f64()
            );
        }
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The checkpoint folder of a training run: `--checkpoint`, or `<out>.checkpoint` next to `<out>`.
fn checkpoint_dir(args: &TrainArgs) -> PathBuf {
    checkpoint::folder_for(&args.out, args.checkpoint.as_deref())
}

fn prepare_checkpoint(dir: &Path) -> anyhow::Result<()> {
    Ok(checkpoint::prepare(dir)?)
}

fn remove_checkpoint(dir: &Path) {
    checkpoint::remove(dir)
}

/// Identifies a run by everything that decides its result, so a checkpoint is only resumed by the
/// same run: settings, the task's entry and gold labels, the excluded ids, the shuffle buffer and the
/// starting point.
fn run_fingerprint(
    task: &TaskRecord,
    settings: &str,
    exclude: &HashSet<String>,
    args: &TrainArgs,
    base: &str,
) -> String {
    let mut ids: Vec<&String> = exclude.iter().collect();
    ids.sort();
    let mut h = distill_cache::fingerprint::Hasher::new("distill.train-run");
    h.str(task.output.as_str())
        .str(settings)
        .str(base)
        .u64(args.shuffle_buffer as u64)
        .u64(args.gold_only as u64);
    for g in &task.gold {
        h.str(&g.id).str(&g.label);
    }
    for id in ids {
        h.str(id);
    }
    h.finish().to_string()
}

impl TrainArgs {
    /// Rejects settings that cannot train, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let checks: [(bool, &str); 7] = [
            (self.batch() == 0, "--batch must be at least 1"),
            (self.buckets == 0, "--buckets must be at least 1"),
            (self.dim == 0, "--dim must be at least 1"),
            (
                self.shuffle_buffer == 0,
                "--shuffle-buffer must be at least 1",
            ),
            (self.max_seq < 2, "--max-seq must be at least 2"),
            (
                !(self.temperature.is_finite() && self.temperature > 0.0),
                "--temperature must be a positive number",
            ),
            (
                !(self.alpha().is_finite() && self.alpha() >= 0.0)
                    || self.lr.is_some_and(|l| !(l.is_finite() && l > 0.0)),
                "--alpha must be ≥ 0 and --lr > 0",
            ),
        ];
        match checks.iter().find(|c| c.0) {
            Some((_, msg)) => anyhow::bail!("{msg}"),
            None => Ok(()),
        }
    }
}

/// Finds the teacher for a transformer student and checks it is the one the cache was labeled with.
pub async fn teacher_dir(
    loc: &Location,
    task: &TaskRecord,
    given: Option<&str>,
) -> anyhow::Result<ModelDir> {
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
        .await??
    };
    if fp != task.teacher {
        anyhow::bail!(
            "teacher {source} has fingerprint {fp}, but task {} was cached from teacher {}: the student would get another tokenizer and weights; give the cache's teacher with --teacher",
            task.name,
            task.teacher
        );
    }
    Ok(dir)
}

/// Trains and saves one student. `mimicked`: a transformer whose pooled output already mimics the
/// teacher's embeddings (skips the mimic phase; used to share it across tasks).
pub async fn train(
    loc: &Location,
    task: &TaskRecord,
    args: &TrainArgs,
    exclude: HashSet<String>,
    mimicked: Option<(&TransformerStudent, &str)>,
    show: bool,
) -> anyhow::Result<StudentInfo> {
    args.validate()?;
    if args.gold_only && task.gold.is_empty() {
        anyhow::bail!("--gold-only: task {} has no gold labels", task.name);
    }
    let mut data = TrainData::open(loc, task, exclude.clone(), args.seed).await?;
    data.buffer = args.shuffle_buffer.max(1);
    let data = if args.gold_only {
        data.select(Selection::Gold)
    } else {
        data
    };
    let mut info = StudentInfo {
        kind: match args.student {
            StudentKind::Transformer => "transformer".into(),
            StudentKind::Ngram => "ngram".into(),
            StudentKind::Lm => {
                anyhow::bail!("the lm student trains from a token-topk entry, not a task")
            }
        },
        task: task.name.clone(),
        labels: task.labels.clone(),
        teacher: task.teacher.to_string(),
        task_output: task.output.to_string(),
        producer: distill_cache::PRODUCER.into(),
        created_unix: now(),
        training: serde_json::Value::Null,
    };
    let out = args.out.clone();
    match args.student {
        StudentKind::Lm => unreachable!("refused above"),
        StudentKind::Ngram => {
            let cfg = NgramConfig {
                buckets: args.buckets,
                dim: args.dim,
                word_ngrams: args.word_ngrams,
                char_ngram: args.char_ngram,
            };
            let opts = NgramTrainOptions {
                epochs: args.epochs.unwrap_or(if args.gold_only { 60 } else { 10 }),
                batch: args.batch(),
                lr: args.lr.unwrap_or(0.01),
                kd: KdWeights {
                    temperature: args.temperature,
                    soft: if args.gold_only { 0.0 } else { 1.0 },
                    alpha: if args.gold_only { 1.0 } else { args.alpha() },
                },
                seed: args.seed,
                ..Default::default()
            };
            info.training = serde_json::json!({
                "epochs": opts.epochs, "batch": opts.batch, "lr": opts.lr, "temperature": args.temperature,
                "alpha": opts.kd.alpha, "gold_only": args.gold_only, "buckets": cfg.buckets, "dim": cfg.dim,
                "seed": args.seed, "excluded_ids": exclude.len(),
            });
            let info2 = info.clone();
            let checkpoint = checkpoint_dir(args);
            prepare_checkpoint(&checkpoint)?;
            let run_id = run_fingerprint(task, &format!("{cfg:?}-{opts:?}"), &exclude, args, "");
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut bar = TrainBar::new(show, "n-gram");
                let model = ngram::train(
                    &data,
                    cfg,
                    &opts,
                    Some((&checkpoint.join("ngram"), &run_id)),
                    |r| bar.step(r),
                )?;
                bar.finish();
                write_dir(&out, |tmp| save_ngram(&model, &info2, tmp))?;
                remove_checkpoint(&checkpoint);
                Ok(())
            })
            .await??;
        }
        StudentKind::Transformer => {
            let dir = teacher_dir(loc, task, args.teacher.as_deref()).await?;
            let device = args.device.open()?;
            let opts = TransformerOptions {
                layers: args.layers(),
                from_teacher: !args.random_init,
                max_seq: args.max_seq,
                batch: args.batch(),
                mimic_epochs: if mimicked.is_some() || task.head.is_none() || args.gold_only {
                    0
                } else {
                    args.mimic_epochs
                },
                soft: if args.gold_only { 0.0 } else { 1.0 },
                normalize_target: task.head.as_ref().is_some_and(|h| h.normalize_input),
                epochs: args.epochs.unwrap_or(if args.gold_only { 20 } else { 2 }),
                lr: args.lr.unwrap_or(1e-4),
                temperature: args.temperature,
                alpha: if args.gold_only { 1.0 } else { args.alpha() },
                seed: args.seed,
                adamw: AdamW::default(),
                checkpoint_every: args.checkpoint_every,
                ..Default::default()
            };
            info.training = serde_json::to_value(&opts)?;
            info.training["excluded_ids"] = exclude.len().into();
            let checkpoint = checkpoint_dir(args);
            prepare_checkpoint(&checkpoint)?;
            let run_id = run_fingerprint(
                task,
                &serde_json::to_string(&opts)?,
                &exclude,
                args,
                mimicked.map(|m| m.1).unwrap_or(""),
            );
            let mimic_data = if opts.mimic_epochs > 0 && mimicked.is_none() {
                let mut d = TrainData::open(loc, task, exclude, args.seed)
                    .await?
                    .with_embeddings(task)?;
                d.buffer = args.shuffle_buffer.max(1);
                Some(d)
            } else {
                None
            };
            let base = mimicked.map(|m| m.0.duplicate()).transpose()?;
            let head = task.head.clone();
            let info2 = info.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let student = mimic_then_distill(
                    &dir,
                    &data,
                    mimic_data.as_ref(),
                    base,
                    head.as_ref(),
                    &opts,
                    &run_id,
                    Some(&checkpoint),
                    &device,
                    show,
                )?;
                write_dir(&out, |tmp| student.save_hf(tmp, &info2))?;
                remove_checkpoint(&checkpoint);
                Ok(())
            })
            .await??;
        }
    }
    Ok(info)
}

/// The transformer recipe: (optionally) mimic the teacher's embeddings, put the task head on the
/// mimicked pooled output, then distill the task's logits. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn mimic_then_distill(
    dir: &ModelDir,
    data: &TrainData,
    mimic_data: Option<&TrainData>,
    base: Option<TransformerStudent>,
    head: Option<&distill_cache::task::LinearHead>,
    opts: &TransformerOptions,
    run_id: &str,
    checkpoint: Option<&Path>,
    device: &candle_core::Device,
    show: bool,
) -> anyhow::Result<TransformerStudent> {
    let tok = transformer::tokenizer(dir, opts.max_seq)?;
    let mimicked = base.is_some() || mimic_data.is_some();
    let mut student = match base {
        Some(s) => s,
        None => TransformerStudent::new(dir, data.labels.clone(), opts, device)?,
    };
    if let Some(md) = mimic_data {
        run_phase(
            &student,
            &tok,
            Phase::Mimic,
            md,
            opts,
            run_id,
            checkpoint,
            show,
        )?;
    }
    if let (true, Some(h)) = (mimicked, head) {
        student.set_head(h, data.labels.clone())?;
    } else if student.labels != data.labels {
        anyhow::bail!("internal: a mimicked student needs the task's head");
    }
    run_phase(
        &student,
        &tok,
        Phase::Distill,
        data,
        opts,
        run_id,
        checkpoint,
        show,
    )?;
    Ok(student)
}

/// The task-agnostic phase alone: a student whose pooled output mimics the teacher's embeddings.
pub fn mimic(
    dir: &ModelDir,
    data: &TrainData,
    opts: &TransformerOptions,
    run_id: &str,
    checkpoint: Option<&Path>,
    device: &candle_core::Device,
    show: bool,
) -> anyhow::Result<TransformerStudent> {
    let tok = transformer::tokenizer(dir, opts.max_seq)?;
    let student = TransformerStudent::new(dir, data.labels.clone(), opts, device)?;
    run_phase(
        &student,
        &tok,
        Phase::Mimic,
        data,
        opts,
        run_id,
        checkpoint,
        show,
    )?;
    Ok(student)
}

/// One phase with its epochs and learning rate from `opts`, a progress bar, and its own checkpoint
/// folder (`<checkpoint>/mimic`, `<checkpoint>/distill`).
#[allow(clippy::too_many_arguments)]
fn run_phase(
    student: &TransformerStudent,
    tok: &transformer::Tokenizer,
    phase: Phase,
    data: &TrainData,
    opts: &TransformerOptions,
    run_id: &str,
    checkpoint: Option<&Path>,
    show: bool,
) -> anyhow::Result<()> {
    let (name, epochs, lr) = match phase {
        Phase::Mimic => ("mimic", opts.mimic_epochs, opts.mimic_lr),
        Phase::Distill => ("distill", opts.epochs, opts.lr),
    };
    if epochs == 0 {
        return Ok(());
    }
    let mut bar = TrainBar::new(show, name);
    transformer::train_phase(
        student,
        tok,
        phase,
        data,
        epochs,
        lr,
        opts,
        &format!("{run_id}-{name}"),
        checkpoint.map(|c| c.join(name)).as_deref(),
        |r| bar.step(r),
    )?;
    bar.finish();
    Ok(())
}
