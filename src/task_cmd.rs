//! `distill task fit|ls`: define tasks over a cached corpus without running the teacher over it.

use anyhow::Context;
use clap::{Args, Subcommand};
use distill_cache::store;
use distill_cache::task::TaskRecord;
use distill_student_trainer::finetune::Objective;
use distill_student_trainer::tuned::{self, TuneSpec};
use distill_tasks::fit::FitSpec;
use distill_tasks::labels::Fields;
use distill_tasks::logreg::{CvOptions, HeadReport};
use distill_teacher::DeviceSpec;
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
    #[arg(long = "cv-repeats", env = "DISTILL_CV_REPEATS", default_value_t = distill_tasks::logreg::CV_REPEATS)]
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

impl FitArgs {
    /// The library's spec of these flags.
    pub fn spec(&self) -> anyhow::Result<FitSpec> {
        let describe = self
            .describe
            .iter()
            .map(|d| {
                d.split_once('=')
                    .filter(|(l, t)| !l.is_empty() && !t.trim().is_empty())
                    .map(|(l, t)| (l.to_owned(), t.trim().to_owned()))
                    .with_context(|| format!("--describe {d:?}: expected LABEL=description"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(FitSpec {
            name: self.name.clone(),
            corpus: self.entry.corpus.clone(),
            teacher_fingerprint: self.entry.teacher_fingerprint.clone(),
            output: self.entry.output.clone(),
            labels: self.labels.clone(),
            fields: Fields {
                id: self.id_field.clone(),
                label: self.label_field.clone(),
                ..Default::default()
            },
            add: self.add,
            describe,
            teacher: self.teacher.clone(),
            temperature: self.temperature,
            cv: CvOptions {
                c: self.c,
                folds: self.folds,
                repeats: self.cv_repeats,
                seed: self.seed,
            },
            min_per_class: self.min_per_class,
        })
    }

    /// How `--finetune` tunes the teacher.
    fn tune(&self) -> anyhow::Result<TuneSpec> {
        Ok(TuneSpec {
            cache: self.entry.cache.clone(),
            out: self.tuned_out.clone().expect("required by clap"),
            teacher: self.teacher.clone(),
            opts: tuned::options(
                self.finetune_objective,
                self.finetune_pairs,
                (
                    self.finetune_epochs,
                    self.finetune_lr,
                    self.finetune_head_lr,
                ),
                self.seed,
            )?,
            device: self.device.clone(),
            show: !self.json,
            text_field: self.text_field.clone(),
            id_field: self.corpus_id_field.clone(),
        })
    }
}

/// `task fit`: the library's fit (a tuned teacher's with `--finetune`).
pub async fn fit(args: &FitArgs) -> anyhow::Result<TaskRecord> {
    let loc = store::open(&args.entry.cache, false)?;
    let spec = args.spec()?;
    if args.finetune {
        spec.check_c()?;
        let p = distill_tasks::fit::prepare(&loc, &spec).await?;
        let tune = args.tune()?;
        let record = tuned::fit(&loc, &args.name, &p.entry, &p.gold, &p.path, &tune, spec.cv);
        return Ok(record.await?);
    }
    let before = match args.add {
        true => distill_cache::task::read_task(&loc, &args.name)
            .await?
            .gold
            .len(),
        false => 0,
    };
    let record = distill_tasks::fit::fit(&loc, &spec).await?;
    if args.add {
        eprintln!(
            "task {}: {} gold labels, {} added from {}",
            args.name,
            record.gold.len(),
            record.gold.len() - before,
            args.labels
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(record)
}

/// `distill task suggest`: the examples worth labeling next, as JSONL with an empty `label`.
async fn suggest(args: &SuggestArgs) -> anyhow::Result<()> {
    use distill_student_trainer::model::Predictor;
    let loc = store::open(&args.cache, false)?;
    let record = distill_cache::task::read_task(&loc, &args.task).await?;
    let student = match &args.student {
        Some(dir) => Some(Predictor::load_for_task_async(dir, &args.device, &record).await?),
        None => None,
    };
    let student = student.map(|s| Box::new(s) as Box<dyn distill_tasks::suggest::Classifier>);
    let found = distill_tasks::suggest::for_task(&loc, &record, args.n, student, None).await?;
    let lines = distill_tasks::suggest::to_jsonl(&found);
    distill_student_trainer::predict::write_lines(&args.out, &lines)?;
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
