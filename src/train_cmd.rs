//! `distill train`: distill a student from a task's cached soft labels (no teacher pass).

use clap::{Args, ValueEnum};
use distill_cache::store::{self, Location};
use distill_student_trainer::ngram::NgramConfig;
use distill_student_trainer::progress::{bars, TrainBar};
use distill_student_trainer::recipe::{self, TaskStudent, TrainSpec, TransformerSettings};
use distill_teacher::DeviceSpec;
use std::collections::HashSet;
use std::path::PathBuf;

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
    /// Ids never to train on (a held-out test set): JSONL with an `id` field or one id per line, or
    /// a corpus of several files (a folder, a glob or an object-store prefix or URL): the ids of its
    /// rows, as `distill label` read them.
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
    /// Weight α of the gold cross-entropy (lm: of the next-token cross-entropy blended into the KD
    /// loss), default 0.5.
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
    /// Transformer: share of the soft-labeled rows (never gold ones) held out to score each epoch;
    /// the best epoch's weights are exported (0: none; used with 2 epochs or more).
    #[arg(long, env = "DISTILL_HOLDOUT", default_value_t = 0.1)]
    pub holdout: f64,
    /// Transformer: epochs without a better held-out score before training stops (0: never early).
    #[arg(long, env = "DISTILL_PATIENCE", default_value_t = 2)]
    pub patience: usize,
    /// Transformer: layer-wise learning-rate decay — each encoder layer below the top learns at this
    /// share of the one above it, the embeddings below the lowest (1: one rate for all).
    #[arg(long, env = "DISTILL_LAYER_LR_DECAY", default_value_t = 1.0)]
    pub layer_lr_decay: f64,
    /// Transformer: tokens per text (longer texts are truncated).
    #[arg(long, env = "DISTILL_MAX_SEQ", default_value_t = 128)]
    pub max_seq: usize,
    /// Transformer: the teacher model (default: the source recorded in the cache); its fingerprint
    /// must match the cache's.
    #[arg(long, env = "DISTILL_TEACHER")]
    pub teacher: Option<String>,
    /// Transformer: start from this pretrained BERT-family encoder (an HF directory, local or at an
    /// object-store URL; e.g. all-MiniLM-L6-v2), with its own tokenizer over the rows' texts, instead of
    /// the task's teacher: the way to a BERT-size student of any task, an LLM's included. --layers
    /// keeps that many evenly spaced layers of it.
    #[arg(long, env = "DISTILL_STUDENT_INIT")]
    pub init: Option<String>,
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
        self.alpha.unwrap_or(0.5)
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
            args.student
                .to_possible_value()
                .expect("no skipped variants")
                .get_name()
        );
    };
    let task = distill_cache::task::read_task(&loc, name).await?;
    let exclude = distill_tasks::labels::excluded(args.exclude.as_deref()).await?;
    let started = std::time::Instant::now();
    let info = recipe::train(&loc, &task, &args.spec(exclude)?, None, bars(true)).await?;
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
        exclude: distill_tasks::labels::excluded(args.exclude.as_deref()).await?,
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
        "trained an lm student ({} parameters, {} rows, {} tokens per epoch, loss {}) in {:.0} s → {}",
        trained.parameters,
        trained.rows,
        trained.tokens_per_epoch,
        args.loss.name(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

impl TrainArgs {
    /// The library's recipe spec of these flags (task students).
    pub fn spec(&self, exclude: HashSet<String>) -> anyhow::Result<TrainSpec> {
        let student = match self.student {
            StudentKind::Ngram => TaskStudent::Ngram,
            StudentKind::Transformer => TaskStudent::Transformer,
            StudentKind::Lm => {
                anyhow::bail!("the lm student trains from a token-topk entry, not a task")
            }
        };
        Ok(TrainSpec {
            student,
            out: self.out.clone(),
            exclude,
            gold_only: self.gold_only,
            epochs: self.epochs,
            batch: self.batch(),
            lr: self.lr,
            temperature: self.temperature,
            alpha: self.alpha(),
            seed: self.seed,
            shuffle_buffer: self.shuffle_buffer,
            holdout: self.holdout,
            patience: self.patience,
            layer_lr_decay: self.layer_lr_decay,
            ngram: NgramConfig {
                buckets: self.buckets,
                dim: self.dim,
                word_ngrams: self.word_ngrams,
                char_ngram: self.char_ngram,
            },
            transformer: TransformerSettings {
                layers: self.layers(),
                random_init: self.random_init,
                mimic_epochs: self.mimic_epochs,
                max_seq: self.max_seq,
                teacher: self.teacher.clone(),
                init: self.init.clone(),
                device: self.device.clone(),
                checkpoint_every: self.checkpoint_every,
            },
            checkpoint: self.checkpoint.clone(),
        })
    }

    /// Rejects settings that cannot train, naming the flag (the lm student's are checked by its
    /// options when it starts).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.student == StudentKind::Lm {
            return Ok(());
        }
        Ok(self.spec(HashSet::new())?.validate()?)
    }
}
