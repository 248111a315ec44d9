//! `distill task fit|ls`: define tasks over a cached corpus without running the teacher over it.

use anyhow::Context;
use clap::{Args, Subcommand};
use distill_cache::model_dir::ModelDir;
use distill_cache::spec::OutputKind;
use distill_cache::store;
use distill_cache::task::TaskRecord;
use distill_student_trainer::finetune::{self, FinetuneOptions, Objective};
use distill_student_trainer::labels::{self, Fields};
use distill_student_trainer::logreg::{CvOptions, HeadReport};
use distill_student_trainer::task;
use distill_teacher::{DeviceSpec, Teacher};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Fit a task on the cached teacher outputs of a corpus: a few-shot head from gold labels
    /// (--labels), a zero-shot head from label descriptions (--describe), or a classifier teacher's
    /// own logits. Writes the task's logits for the whole corpus as a derived cache entry.
    Fit(Box<FitArgs>),
    /// List the tasks of a cache.
    Ls(TaskLsArgs),
    /// Propose the corpus examples worth labeling next (teacher uncertainty, teacher–student
    /// disagreement, spread over the embedding space), as JSONL to fill in and add with
    /// `task fit --add --labels FILE`.
    Suggest(SuggestArgs),
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    #[arg(long, env = "DISTILL_CACHE")]
    pub cache: String,
    #[arg(long, env = "DISTILL_TASK")]
    pub task: String,
    /// How many examples.
    #[arg(long, env = "DISTILL_SUGGEST_N", default_value_t = 50)]
    pub n: usize,
    /// A student of the task: rows where it and the teacher disagree score higher.
    #[arg(long, env = "DISTILL_MODEL")]
    pub student: Option<PathBuf>,
    /// Where the JSONL goes (`-`: standard output).
    #[arg(long, env = "DISTILL_SUGGESTIONS", default_value = "-")]
    pub out: String,
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

/// Which cached corpus.
#[derive(Debug, Clone, Args)]
pub struct EntryArgs {
    /// Cache store (local directory or URL) holding the teacher's outputs.
    #[arg(long, env = "DISTILL_CACHE")]
    pub cache: String,
    /// Which cached corpus, when the store holds several: a part of its path or URL.
    #[arg(long = "corpus", env = "DISTILL_TASK_CORPUS")]
    pub corpus: Option<String>,
    /// Which teacher, when the corpus was labeled by several: a prefix of its fingerprint.
    #[arg(long, env = "DISTILL_TEACHER_FINGERPRINT")]
    pub teacher_fingerprint: Option<String>,
    /// Which output, when one teacher labeled the corpus several ways: as `cache ls` shows it
    /// (`embeddings/f16`) or a prefix of its fingerprint.
    #[arg(long = "output", env = "DISTILL_TASK_OUTPUT")]
    pub output: Option<String>,
}

impl EntryArgs {
    fn query(&self, kind: Option<OutputKind>) -> task::EntryQuery<'_> {
        task::EntryQuery {
            corpus: self.corpus.as_deref(),
            teacher: self.teacher_fingerprint.as_deref(),
            output: self.output.as_deref(),
            kind,
        }
    }
}

#[derive(Debug, Args)]
pub struct FitArgs {
    #[command(flatten)]
    pub entry: EntryArgs,
    /// Task name (letters, digits, '.', '_', '-').
    #[arg(long, env = "DISTILL_TASK")]
    pub name: String,
    /// Gold labels: JSONL with an id and a label per line (ids of the cached corpus).
    #[arg(long, env = "DISTILL_LABELS", conflicts_with = "describe")]
    pub labels: Option<PathBuf>,
    /// Add --labels to the existing task's gold labels (labeled suggestions from `task suggest`)
    /// and fit it again on the same cached entry.
    #[arg(long, requires = "labels", conflicts_with = "finetune")]
    pub add: bool,
    #[arg(long, env = "DISTILL_ID_FIELD", default_value = "id")]
    pub id_field: String,
    #[arg(long, env = "DISTILL_LABEL_FIELD", default_value = "label")]
    pub label_field: String,
    /// Fix the inverse L2 strength of the logistic-regression head (scikit-learn's C; the soft
    /// labels' temperature stays 1). Default: C and the temperature chosen by stratified
    /// cross-validation on the gold labels (--folds), as LogisticRegressionCV does.
    #[arg(long, env = "DISTILL_C")]
    pub c: Option<f64>,
    /// Fewest gold examples a class may have.
    #[arg(long, env = "DISTILL_MIN_PER_CLASS", default_value_t = 2)]
    pub min_per_class: usize,
    /// Zero-shot: `LABEL=description`, once per label (the teacher embeds the descriptions).
    #[arg(long = "describe", value_name = "LABEL=TEXT")]
    pub describe: Vec<String>,
    /// Folds of the stratified cross-validation that chooses the head's C and temperature (or a
    /// prompted entry's calibration) and estimates the task's accuracy.
    #[arg(long, env = "DISTILL_FOLDS", default_value_t = 5)]
    pub folds: usize,
    /// Seeded k-fold splits the head's cross-validation averages over (a single split of a few
    /// hundred labels is noisy).
    #[arg(long = "cv-repeats", env = "DISTILL_CV_REPEATS", default_value_t = distill_student_trainer::logreg::CV_REPEATS)]
    pub cv_repeats: usize,
    /// Seed of the cross-validation folds.
    #[arg(long, env = "DISTILL_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Zero-shot softmax temperature on cosine similarities.
    #[arg(long, env = "DISTILL_ZERO_SHOT_TEMPERATURE", default_value_t = 0.05)]
    pub temperature: f32,
    /// Zero-shot: the teacher model (default: the source recorded in the cache).
    #[arg(long, env = "DISTILL_TEACHER")]
    pub teacher: Option<String>,
    /// Fine-tune the embeddings teacher on the gold labels first (--finetune-objective), write the
    /// tuned teacher to --tuned-out, label the corpus with it once (its own cache entry) and fit the
    /// head on its embeddings.
    #[arg(long, requires = "tuned_out", requires = "labels")]
    pub finetune: bool,
    /// Where the tuned teacher goes: a local directory or an object-store URL (an HF-layout model
    /// directory; reused when it holds the same run).
    #[arg(long, env = "DISTILL_TUNED_OUT", requires = "finetune")]
    pub tuned_out: Option<String>,
    /// --finetune: the corpus's text and id fields, as it was labeled (the tuned teacher labels it again).
    #[arg(long, env = "DISTILL_TEXT_FIELD", default_value = "text")]
    pub text_field: String,
    #[arg(long, env = "DISTILL_CORPUS_ID_FIELD", default_value = "id")]
    pub corpus_id_field: String,
    /// Fine-tuning objective: `classifier` (a linear head trained with the encoder, cross-entropy; the
    /// head is dropped after) or `contrastive` (pairs of gold examples, cosine loss, SetFit's way, the
    /// first release's). See the README for how they compare.
    #[arg(long, env = "DISTILL_FINETUNE_OBJECTIVE", default_value_t = Objective::RECOMMENDED)]
    pub finetune_objective: Objective,
    /// Contrastive: iterations per gold example (each one positive and one negative pair; default 5).
    /// (SetFit uses 20; 5 costs a quarter and gained as much on the quickstart's task, see the README).
    #[arg(long, env = "DISTILL_FINETUNE_PAIRS")]
    pub finetune_pairs: Option<usize>,
    /// Epochs (default: the objective's, 1 contrastive, 10 classifier).
    #[arg(long, env = "DISTILL_FINETUNE_EPOCHS")]
    pub finetune_epochs: Option<usize>,
    /// Peak learning rate of the encoder (default: the objective's, 2e-5 contrastive, 3e-5 classifier).
    #[arg(long, env = "DISTILL_FINETUNE_LR")]
    pub finetune_lr: Option<f64>,
    /// Classifier: peak learning rate of the head (default 1e-2).
    #[arg(long, env = "DISTILL_FINETUNE_HEAD_LR")]
    pub finetune_head_lr: Option<f64>,
    /// Device of the fine-tuning and of the tuned teacher's pass (`cpu`, `cuda:0`).
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Print the task record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TaskLsArgs {
    #[arg(long, env = "DISTILL_CACHE")]
    pub cache: String,
}

pub async fn run(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Fit(args) => {
            let record = fit(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print_record(&record);
            }
            Ok(())
        }
        TaskCommand::Suggest(args) => suggest(&args).await,
        TaskCommand::Ls(args) => {
            let loc = store::open(&args.cache, false)?;
            for name in distill_cache::task::list_tasks(&loc).await? {
                let r = distill_cache::task::read_task(&loc, &name).await?;
                println!(
                    "{:<24} {:<9} {:>7} rows  labels: {}  corpus: {}",
                    r.name,
                    r.kind.name(),
                    r.rows,
                    r.labels.join(", "),
                    r.corpus
                );
            }
            Ok(())
        }
    }
}

pub fn print_record(r: &TaskRecord) {
    println!("task {} ({}) over {}", r.name, r.kind.name(), r.corpus);
    println!("  labels          {}", r.labels.join(", "));
    println!("  gold examples   {}", r.gold.len());
    println!("  rows            {}", r.rows);
    println!(
        "  logits entry    {}/{}",
        r.teacher.short(),
        r.output.short()
    );
    println!(
        "  teacher seconds {:.2} (the corpus was not relabeled)",
        r.teacher_seconds
    );
    if let Some(cv) = r
        .cross_validation
        .as_ref()
        .and_then(|v| serde_json::from_value::<HeadReport>(v.clone()).ok())
    {
        println!(
            "  cross-validated accuracy {:.1}%, macro-F1 {:.3} ({} folds on the gold labels, {} splits)",
            100.0 * cv.accuracy,
            cv.macro_f1,
            cv.folds,
            cv.repeats
        );
        println!(
            "  head            C = {}{}, temperature {:.2}",
            cv.c,
            if cv.c_fixed {
                " (fixed by --c)".to_owned()
            } else {
                format!(
                    " (chosen from {}–{})",
                    cv.grid.first().map(|p| p.c).unwrap_or(0.0),
                    cv.grid.last().map(|p| p.c).unwrap_or(0.0)
                )
            },
            cv.temperature
        );
    }
}

pub async fn fit(args: &FitArgs) -> anyhow::Result<TaskRecord> {
    let loc = store::open(&args.entry.cache, false)?;
    let fields = Fields {
        id: args.id_field.clone(),
        label: args.label_field.clone(),
        // Suggestions left unlabeled are skipped when they are added.
        skip_unlabeled: args.add,
        ..Default::default()
    };
    if !args.describe.is_empty() {
        let entry = task::find_entry(&loc, &args.entry.query(Some(OutputKind::Embeddings))).await?;
        let mut labels = Vec::new();
        let mut descriptions = Vec::new();
        for d in &args.describe {
            let (l, t) = d
                .split_once('=')
                .filter(|(l, t)| !l.is_empty() && !t.trim().is_empty())
                .with_context(|| format!("--describe {d:?}: expected LABEL=description"))?;
            if labels.iter().any(|x| x == l) {
                anyhow::bail!("--describe: label {l:?} is described twice");
            }
            labels.push(l.to_owned());
            descriptions.push(t.trim().to_owned());
        }
        let info = distill_cache::catalog::read_teacher(&loc, &entry.manifest.teacher).await?;
        let source = args.teacher.clone().unwrap_or(info.source.clone());
        let dir = ModelDir::resolve(&source).await?;
        let (embedded, secs) = tokio::task::spawn_blocking({
            let descriptions = descriptions.clone();
            let fp = entry.manifest.teacher.clone();
            move || -> anyhow::Result<(Vec<Vec<f32>>, f64)> {
                let teacher = Teacher::load(&dir, &DeviceSpec::Cpu)?;
                if teacher.info().fingerprint != fp {
                    anyhow::bail!(
                        "teacher {} has fingerprint {}, but the cache was labeled by {}: give the same teacher with --teacher",
                        dir.location,
                        teacher.info().fingerprint,
                        fp
                    );
                }
                let texts: Vec<&str> = descriptions.iter().map(String::as_str).collect();
                let out = teacher.label(&texts, 4096)?;
                let v = out.vectors();
                Ok((v.values.chunks(v.width).map(<[f32]>::to_vec).collect(), out.device_seconds))
            }
        })
        .await??;
        let z = task::ZeroShot {
            labels,
            descriptions,
            embedded,
            temperature: args.temperature,
            teacher_seconds: secs,
        };
        return Ok(task::fit_zero_shot(&loc, &args.name, &entry, z).await?);
    }
    let mut gold = match &args.labels {
        Some(p) => labels::read(p, &fields)?,
        None => Vec::new(),
    };
    let path = args
        .labels
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let entry = if args.add {
        // The task as it is: its gold labels, and the entry it was fitted on.
        let existing = distill_cache::task::read_task(&loc, &args.name).await?;
        let before = existing.gold.len();
        gold = labels::merge(&existing.gold, gold, &path)?;
        eprintln!(
            "task {}: {} gold labels, {} added from {path}",
            args.name,
            gold.len(),
            gold.len() - before
        );
        let (teacher, output) = (
            existing.teacher.to_string(),
            existing.base_output.to_string(),
        );
        task::find_entry(
            &loc,
            &task::EntryQuery {
                corpus: None,
                teacher: Some(&teacher),
                output: Some(&output),
                kind: None,
            },
        )
        .await?
    } else {
        task::find_entry(&loc, &args.entry.query(None)).await?
    };
    if args.finetune {
        if let Some(c) = args.c.filter(|c| !(c.is_finite() && *c > 0.0)) {
            anyhow::bail!("--c {c}: must be a positive number");
        }
        let tune = Finetune {
            cache: &args.entry.cache,
            out: args.tuned_out.as_deref().expect("required by clap"),
            teacher: args.teacher.clone(),
            opts: finetune_options(
                args.finetune_objective,
                args.finetune_pairs,
                (
                    args.finetune_epochs,
                    args.finetune_lr,
                    args.finetune_head_lr,
                ),
                args.seed,
            )?,
            device: args.device.clone(),
            show: !args.json,
            text_field: args.text_field.clone(),
            id_field: args.corpus_id_field.clone(),
        };
        let cvo = CvOptions {
            c: args.c,
            folds: args.folds,
            repeats: args.cv_repeats,
            seed: args.seed,
        };
        return fit_finetuned(&loc, &args.name, &entry, &gold, &path, &tune, cvo).await;
    }
    match entry.spec.kind() {
        Some(OutputKind::Embeddings) => {
            if gold.is_empty() {
                anyhow::bail!(
                    "{} is cached as embeddings: give gold labels (--labels FILE) or label descriptions (--describe LABEL=TEXT)",
                    entry.manifest.corpus
                );
            }
            if let Some(c) = args.c.filter(|c| !(c.is_finite() && *c > 0.0)) {
                anyhow::bail!("--c {c}: must be a positive number");
            }
            let opts = CvOptions {
                c: args.c,
                folds: args.folds,
                repeats: args.cv_repeats,
                seed: args.seed,
            };
            Ok(task::fit_head(
                &loc,
                &args.name,
                &entry,
                &gold,
                &path,
                opts,
                args.min_per_class,
            )
            .await?)
        }
        Some(OutputKind::Logits) if entry.spec_is_prompted() && !gold.is_empty() => {
            Ok(task::fit_calibrated(
                &loc, &args.name, &entry, &gold, &path, args.folds, args.seed,
            )
            .await?)
        }
        Some(OutputKind::Logits) => {
            let info = distill_cache::catalog::read_teacher(&loc, &entry.manifest.teacher).await?;
            if !gold.is_empty() {
                task::gold_embeddings(&loc, &entry, &gold, &path).await?;
            }
            Ok(task::from_teacher(&loc, &args.name, &entry, &info, &gold, &path).await?)
        }
        _ => unreachable!("find_entry returns per-example entries only"),
    }
}

/// `distill task suggest`: the examples worth labeling next, as JSONL with an empty `label`.
async fn suggest(args: &SuggestArgs) -> anyhow::Result<()> {
    use distill_student_trainer::model::Predictor;
    let loc = store::open(&args.cache, false)?;
    let record = distill_cache::task::read_task(&loc, &args.task).await?;
    let student = match &args.student {
        Some(dir) => {
            let (dir, device, t) = (dir.clone(), args.device.clone(), record.clone());
            Some(
                tokio::task::spawn_blocking(move || Predictor::load_for_task(&dir, &device, &t))
                    .await??,
            )
        }
        None => None,
    };
    let found =
        distill_student_trainer::suggest::for_task(&loc, &record, args.n, student, None).await?;
    let lines = found
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s)?;
            v["label"] = "".into();
            Ok(serde_json::to_string(&v)?)
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    crate::eval_cmd::write_lines(&args.out, lines)?;
    eprintln!(
        "{} suggestions for task {}{}: fill in each \"label\" and add them with `distill task fit --cache {} --name {} --add --labels FILE`",
        found.len(),
        record.name,
        if args.out == "-" {
            String::new()
        } else {
            format!(" in {}", args.out)
        },
        args.cache,
        record.name
    );
    Ok(())
}

/// The fine-tuning options of the command line (`task fit`, the quickstart): the objective's defaults,
/// overridden where given; flags the objective does not read are refused.
pub(crate) fn finetune_options(
    objective: Objective,
    pairs: Option<usize>,
    (epochs, lr, head_lr): (Option<usize>, Option<f64>, Option<f64>),
    seed: u64,
) -> anyhow::Result<FinetuneOptions> {
    let d = FinetuneOptions::for_objective(objective);
    if head_lr.is_some() && objective.is_contrastive() {
        anyhow::bail!("--finetune-head-lr: the contrastive objective has no head (--finetune-objective classifier)");
    }
    // Part of the run id: a flag the objective does not read must not make another run.
    if pairs.is_some() && !objective.is_contrastive() {
        anyhow::bail!("--finetune-pairs: the classifier objective makes no pairs (--finetune-objective contrastive)");
    }
    for (flag, v) in [("--finetune-lr", lr), ("--finetune-head-lr", head_lr)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
            anyhow::bail!("{flag} {v}: must be a positive number");
        }
    }
    Ok(FinetuneOptions {
        pairs: pairs.unwrap_or(d.pairs),
        epochs: epochs.unwrap_or(d.epochs),
        lr: lr.unwrap_or(d.lr),
        head_lr: head_lr.or(d.head_lr),
        seed,
        ..d
    })
}

/// How `task fit --finetune` tunes the teacher.
pub struct Finetune<'a> {
    /// The cache store's URL (the tuned teacher's pass labels into it).
    pub cache: &'a str,
    /// A local directory or an object-store URL (built locally in the model cache, then uploaded).
    pub out: &'a str,
    /// The teacher to tune (default: where the cache says the entry's teacher was loaded from).
    pub teacher: Option<String>,
    pub opts: FinetuneOptions,
    pub device: DeviceSpec,
    pub show: bool,
    /// How the entry's corpus was read (its text and id fields).
    pub text_field: String,
    pub id_field: String,
}

/// `task fit --finetune`: tunes the entry's teacher on the gold labels, labels the entry's corpus once
/// with the tuned teacher (the normal labeling path: its own fingerprint, cache hits on a rerun) and
/// fits the cross-validated head on its embeddings.
pub async fn fit_finetuned(
    loc: &store::Location,
    name: &str,
    entry: &task::Entry,
    gold: &[labels::Gold],
    path: &str,
    tune: &Finetune<'_>,
    cvo: CvOptions,
) -> anyhow::Result<TaskRecord> {
    let Some(OutputKind::Embeddings) = entry.spec.kind() else {
        anyhow::bail!(
            "{} is cached as {}: --finetune tunes an embeddings teacher",
            entry.manifest.corpus,
            entry.spec.describe()
        );
    };
    distill_cache::task::check_name(name)?;
    // The tuned teacher labels the entry's corpus again: it must read as it was labeled.
    let corpus = distill_cache::corpus::CorpusSpec {
        url: entry.manifest.corpus.clone(),
        format: None,
        text_field: tune.text_field.clone(),
        id_field: tune.id_field.clone(),
    };
    task::check_corpus(entry, &corpus).await?;
    let remote = tune.out.contains("://") && !tune.out.starts_with("file://");
    let local = if remote {
        distill_cache::model_dir::local_dir_for(tune.out)
    } else {
        PathBuf::from(tune.out.strip_prefix("file://").unwrap_or(tune.out))
    };
    let bar = crate::train_cmd::TrainBar::new(tune.show, "fine-tune");
    let bar = std::sync::Arc::new(std::sync::Mutex::new(bar));
    let b2 = bar.clone();
    let tuned = finetune::tune_teacher(
        finetune::TuneRequest {
            loc,
            entry,
            gold,
            labels_path: path,
            teacher: tune.teacher.clone(),
            out: &local,
            opts: tune.opts.clone(),
            device: tune.device.clone(),
        },
        move |r| b2.lock().expect("not poisoned").step(r),
    )
    .await?;
    drop(bar);
    if tune.show {
        if tuned.reused {
            eprintln!(
                "tuned teacher {} (the same run, reused)",
                tuned.dir.display()
            );
        } else {
            eprintln!(
                "tuned teacher {} ({} objective): {} steps in {:.0} s",
                tuned.dir.display(),
                tune.opts.objective,
                tuned.steps,
                tuned.seconds
            );
        }
    }
    if remote {
        distill_cache::model_dir::upload_dir(&tuned.dir, tune.out).await?;
        if tune.show {
            eprintln!("uploaded to {}", tune.out);
        }
    }
    let teacher = if remote {
        tune.out.to_owned()
    } else {
        tuned.dir.display().to_string()
    };
    // The tuned teacher's pass over the entry's corpus, once.
    let dtype = match entry.spec {
        distill_cache::spec::OutputSpec::Embeddings { dtype } => dtype,
        _ => distill_cache::spec::Dtype::F32,
    };
    let label_args = crate::label::LabelArgs {
        corpus: crate::label::CorpusArgs {
            corpus: corpus.url.clone(),
            format: None,
            text_field: corpus.text_field.clone(),
            id_field: corpus.id_field.clone(),
        },
        teacher: crate::label::TeacherArgs {
            teacher,
            device: tune.device.clone(),
            max_batch_tokens: 4096,
            resident_weights: Default::default(),
            precision: "f32".into(),
        },
        store: Some(tune.cache.to_owned()),
        output: crate::label::OutputArgs::simple(OutputKind::Embeddings, dtype),
        shard_size: entry.manifest.shard_size as usize,
        strict: false,
        max_attempts: 0,
        json: false,
        remote: Default::default(),
    };
    let job = crate::label::label(&label_args, tune.show).await?;
    let tuned_entry = task::find_entry(
        loc,
        &task::EntryQuery {
            corpus: Some(&entry.manifest.corpus),
            teacher: Some(job.teacher_fingerprint.as_str()),
            output: Some(job.output_fingerprint.as_str()),
            kind: Some(OutputKind::Embeddings),
        },
    )
    .await?;
    let mut record = task::fit_head(loc, name, &tuned_entry, gold, path, cvo, 2).await?;
    // What defining this task cost on the teacher's device: the fine-tuning and the tuned pass.
    record.teacher_seconds = tuned.seconds + job.ledger.teacher_seconds;
    distill_cache::task::write_task(loc, &record).await?;
    if tune.show {
        eprintln!(
            "note: the cross-validated figures of a tuned teacher's head are optimistic (the encoder was tuned on the same gold labels); evaluate it on held-out labels"
        );
    }
    Ok(record)
}
