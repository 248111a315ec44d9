//! `distill quickstart`: the whole product on Rotten Tomatoes, end to end.
//!
//! 1. label the corpus once with the teacher (a rerun is all cache hits);
//! 2. split the gold labels **by movie** (no movie on both sides) into a train pool and a test set;
//!    test labels are never trained on; test texts take part in distillation as unlabeled text (the
//!    reference setup) unless `--exclude-test-texts`, and one extra n-gram row never sees them;
//! 3. per draw of `--gold` labels from the pool: fit the sentiment task (fresh vs rotten) from the
//!    cache, train the students (n-gram on gold alone, n-gram and transformer distilled), evaluate each
//!    and the teacher + head on the test set;
//! 4. fit a second task on the same cache (critic review vs plot summary): zero teacher-seconds;
//! 5. print the tables, check the targets, write `report.json`, `report.md` and a plot of accuracy
//!    against latency.

use crate::eval_cmd::{labeled_examples, parameters, print_table};
use crate::label::{CorpusArgs, LabelArgs, TeacherArgs};
use crate::train_cmd::{self, StudentKind, TrainArgs};
use anyhow::Context;
use clap::Args;
use distill_cache::spec::{Dtype, OutputKind};
use distill_cache::store;
use distill_student_trainer::data::TrainData;
use distill_student_trainer::eval::{self, EvalReport};
use distill_student_trainer::finetune::Objective;
use distill_student_trainer::labels::{self, Fields, Gold};
use distill_student_trainer::logreg::CvOptions;
use distill_student_trainer::model::{dir_bytes, Predictor};
use distill_student_trainer::protocol::{
    draw, loop_gap, relabel, review_or_plot, sentiment, split_by_group, summarize, targets,
    tuned_ngram_row, tuned_row, Check, LoopGap, Mapping, Row, Summary, FIXED_C_ROW, LLM_NGRAM_ROW,
    LLM_TEACHER_ROW, MORE_RANDOM_ROW, MORE_SUGGESTED_ROW, UNSEEN_ROW,
};
use distill_student_trainer::rng::Rng;
use distill_student_trainer::task as tasks;
use distill_student_trainer::transformer::TransformerOptions;
use distill_teacher::{DeviceSpec, Teacher};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// The unlabeled corpus (JSONL with id and text).
    #[arg(
        long,
        env = "DISTILL_CORPUS",
        default_value = "assets/corpora/rotten-tomatoes/corpus.jsonl"
    )]
    pub corpus: String,
    /// Gold labels with a label (fresh / rotten / plot) and a group (movie) per id.
    #[arg(
        long,
        env = "DISTILL_GOLD",
        default_value = "assets/corpora/rotten-tomatoes/gold.jsonl"
    )]
    pub gold: PathBuf,
    #[arg(
        long,
        env = "DISTILL_TEACHER",
        default_value = "assets/models/all-MiniLM-L6-v2"
    )]
    pub teacher: String,
    /// Cache store.
    #[arg(long, env = "DISTILL_STORE", default_value = ".work/cache")]
    pub store: String,
    /// Where models, splits and reports go.
    #[arg(long, env = "DISTILL_OUT", default_value = ".work/quickstart")]
    pub out: PathBuf,
    /// Draws of gold labels (the targets are means over 5).
    #[arg(long, env = "DISTILL_DRAWS", default_value_t = 1)]
    pub draws: usize,
    /// Gold labels per draw.
    #[arg(long = "gold-count", env = "DISTILL_GOLD_COUNT", default_value_t = 100)]
    pub gold_count: usize,
    /// Share of movies held out for testing.
    #[arg(long, env = "DISTILL_TEST_SHARE", default_value_t = 0.2)]
    pub test_share: f64,
    #[arg(long, env = "DISTILL_GROUP_FIELD", default_value = "movie")]
    pub group_field: String,
    #[arg(long, env = "DISTILL_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Epochs of transformer distillation per draw (0 skips the transformer student).
    #[arg(long, env = "DISTILL_TRANSFORMER_EPOCHS", default_value_t = 1)]
    pub transformer_epochs: usize,
    /// Epochs of task-agnostic embedding mimicry (once, shared by every draw and task).
    #[arg(long, env = "DISTILL_MIMIC_EPOCHS", default_value_t = 1)]
    pub mimic_epochs: usize,
    #[arg(long, env = "DISTILL_LAYERS", default_value_t = 2)]
    pub layers: usize,
    #[arg(long, env = "DISTILL_MAX_SEQ", default_value_t = 128)]
    pub max_seq: usize,
    /// Keep the test movies' texts out of distillation too (by default students learn from the
    /// teacher's soft labels over the whole unlabeled corpus, as in the reference setup; test labels
    /// are never used). Either way an extra n-gram row shows students on texts they never saw.
    #[arg(long, env = "DISTILL_EXCLUDE_TEST_TEXTS")]
    pub exclude_test_texts: bool,
    /// Also train a transformer student for the second task.
    #[arg(long)]
    pub second_task_transformer: bool,
    /// Texts timed one by one for latency.
    #[arg(long, env = "DISTILL_LATENCY_SAMPLES", default_value_t = 200)]
    pub latency_samples: usize,
    /// Token budget of teacher batches.
    #[arg(long, env = "DISTILL_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// A decoder LM prompted as a second sentiment teacher, calibrated on the same gold labels (empty:
    /// skip it).
    #[arg(
        long,
        env = "DISTILL_LLM_TEACHER",
        default_value = "assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    pub llm_teacher: String,
    /// More gold labels per draw, at random or suggested by `task suggest`, to compare the two
    /// (0: skip).
    #[arg(long, env = "DISTILL_SUGGEST", default_value_t = 50)]
    pub suggest: usize,
    /// Draws of the labeling loop (`--suggest`): the first `--draws` of them are the student draws;
    /// the rest fit a head on a fresh draw and distill the n-gram student the suggestions read, nothing
    /// else. The loop's gap is a few tenths of a point where draws spread over several points: it
    /// needs more draws than the students.
    #[arg(long, env = "DISTILL_LOOP_DRAWS", default_value_t = 20)]
    pub loop_draws: usize,
    /// Fine-tune the teacher on each draw's gold labels (`task fit --finetune`) with these objectives
    /// (comma-separated: contrastive, classifier), one tuned teacher each; `none`: skip the
    /// tuned-teacher rows.
    #[arg(
        long,
        env = "DISTILL_FINETUNE_OBJECTIVES",
        value_delimiter = ',',
        default_value = "classifier",
        value_parser = objective_or_none
    )]
    pub finetune_objectives: Vec<Option<Objective>>,
    /// Contrastive fine-tuning: pair iterations per gold label.
    #[arg(long, env = "DISTILL_FINETUNE_PAIRS", default_value_t = 5)]
    pub finetune_pairs: usize,
    /// Fine-tuning epochs (default: each objective's own).
    #[arg(long, env = "DISTILL_FINETUNE_EPOCHS")]
    pub finetune_epochs: Option<usize>,
    /// Rows of the training movies the LLM labels for distillation, besides the test rows and the
    /// gold labels of every draw (the LLM labels a subset: a 135M decoder costs ~10× MiniLM per row).
    #[arg(long, env = "DISTILL_LLM_ROWS", default_value_t = 3000)]
    pub llm_rows: usize,
}

/// `--finetune-objectives`: an objective, or `none` (or nothing) for none.
fn objective_or_none(s: &str) -> Result<Option<Objective>, String> {
    match s.trim() {
        "" | "none" => Ok(None),
        other => other.parse().map(Some),
    }
}

/// The prompt that makes the LLM a sentiment teacher: chat-formatted, with an answer prefix, the
/// class logits the log-probabilities of " positive" and " negative".
fn sentiment_prompt() -> distill_cache::spec::PromptSpec {
    use distill_cache::spec::{Choice, PromptSpec};
    PromptSpec {
        template: "Is this movie review positive or negative? Review: {text}".into(),
        choices: vec![
            Choice {
                label: "fresh".into(),
                continuation: " positive".into(),
            },
            Choice {
                label: "rotten".into(),
                continuation: " negative".into(),
            },
        ],
        chat: true,
        system: None,
        answer_prefix: "The review is".into(),
        length_normalize: false,
    }
}

fn write_jsonl(path: &Path, rows: &[Gold]) -> anyhow::Result<()> {
    let mut s = String::new();
    for g in rows {
        s.push_str(&serde_json::to_string(
            &serde_json::json!({"id": g.id, "label": g.label}),
        )?);
        s.push('\n');
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Writes a draw's gold labels to `path` and fits the task's head on their cached embeddings (at
/// least 2 per class), printing what cross-validation chose when it chose.
async fn fit_draw_head(
    loc: &distill_cache::store::Location,
    entry: &tasks::Entry,
    name: &str,
    gold: &[Gold],
    path: &Path,
    cvo: CvOptions,
) -> anyhow::Result<distill_cache::task::TaskRecord> {
    write_jsonl(path, gold)?;
    let record =
        tasks::fit_head(loc, name, entry, gold, &path.display().to_string(), cvo, 2).await?;
    if let (Some(cv), None) = (&record.cross_validation, cvo.c) {
        eprintln!(
            "    C = {}, temperature {:.2} by {}-fold CV over {} splits: {:.1}% cross-validated accuracy, macro-F1 {:.3}",
            cv["c"],
            cv["temperature"].as_f64().unwrap_or(1.0),
            cv["folds"],
            cv["repeats"],
            100.0 * cv["accuracy"].as_f64().unwrap_or(0.0),
            cv["macro_f1"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(record)
}

pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    if !(args.test_share > 0.0 && args.test_share < 1.0) {
        anyhow::bail!(
            "--test-share must be between 0 and 1, not {}",
            args.test_share
        );
    }
    if args.draws == 0 || args.gold_count < 4 {
        anyhow::bail!("--draws must be at least 1 and --gold-count at least 4");
    }
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = args.out.clone();

    // 1. The teacher pass, once.
    eprintln!(
        "1/5 labeling {} with {} (cached shards are skipped)",
        args.corpus, args.teacher
    );
    let label_args = LabelArgs {
        corpus: CorpusArgs {
            corpus: args.corpus.clone(),
            format: None,
            text_field: "text".into(),
            id_field: "id".into(),
        },
        teacher: TeacherArgs {
            teacher: args.teacher.clone(),
            device: DeviceSpec::Cpu,
            max_batch_tokens: args.max_batch_tokens,
            resident_weights: Default::default(),
            precision: "f32".into(),
        },
        store: Some(args.store.clone()),
        output: crate::label::OutputArgs::simple(OutputKind::Embeddings, Dtype::F32),
        shard_size: 1000,
        strict: false,
        max_attempts: 0,
        json: false,
        remote: Default::default(),
    };
    let job = crate::label::label(&label_args, true).await?;
    eprintln!(
        "    {} rows, {} shards ({} cache hits): {:.1} teacher-seconds spent, {:.1} saved",
        job.ledger.rows,
        job.ledger.shards,
        job.ledger.cache_hits,
        job.ledger.teacher_seconds,
        job.ledger.teacher_seconds_saved
    );
    let loc = store::open(&args.store, false)?;
    let entry = tasks::find_entry(
        &loc,
        &tasks::EntryQuery {
            corpus: Some(&args.corpus),
            teacher: Some(job.teacher_fingerprint.as_str()),
            output: Some(job.output_fingerprint.as_str()),
            kind: Some(OutputKind::Embeddings),
        },
    )
    .await?;

    // 2. Split by movie.
    let fields = Fields {
        group: Some(args.group_field.clone()),
        ..Default::default()
    };
    let cached = tasks::cached_ids(&loc, &entry).await?;
    let all_gold = labels::read(&args.gold, &fields)?;
    // Rows the teacher pass rejected (duplicates, empty texts) have no cached labels.
    let gold: Vec<Gold> = all_gold
        .iter()
        .filter(|g| cached.contains(&g.id))
        .cloned()
        .collect();
    if gold.len() < all_gold.len() {
        eprintln!(
            "    {} gold rows skipped: their corpus rows were rejected by the teacher pass",
            all_gold.len() - gold.len()
        );
    }
    let (test_all, train_all) = split_by_group(&gold, args.test_share, args.seed);
    let test_ids: HashSet<String> = test_all.iter().map(|g| g.id.clone()).collect();
    // What distillation may not see: nothing labeled is ever used, but by default the unlabeled
    // corpus (test texts included) is the distillation set, as in the reference setup.
    let exclude: HashSet<String> = if args.exclude_test_texts {
        test_ids.clone()
    } else {
        HashSet::new()
    };
    let split_dir = out.join("split");
    std::fs::create_dir_all(&split_dir)?;
    std::fs::write(
        split_dir.join("test-ids.txt"),
        test_all
            .iter()
            .map(|g| format!("{}\n", g.id))
            .collect::<String>(),
    )?;
    let movies = |rows: &[Gold]| {
        rows.iter()
            .filter_map(|g| g.group.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    eprintln!(
        "2/5 split by {}: {} train rows ({} groups), {} test rows ({} groups), no group on both sides",
        args.group_field,
        train_all.len(),
        movies(&train_all),
        test_all.len(),
        movies(&test_all)
    );

    let teacher_dir = distill_cache::model_dir::ModelDir::resolve(&args.teacher).await?;
    // Test rows are ids of the cached corpus: no teacher is loaded for them.
    let source = eval::TeacherSource {
        model: Some(args.teacher.clone()),
        device: DeviceSpec::Cpu,
    };
    let teacher = {
        let d = teacher_dir.clone();
        std::sync::Arc::new(
            tokio::task::spawn_blocking(move || Teacher::load(&d, &DeviceSpec::Cpu)).await??,
        )
    };
    let teacher_row = TeacherRow {
        teacher: teacher.clone(),
        params: crate::eval_cmd::safetensors_parameters(&teacher_dir.dir),
        bytes: teacher_dir
            .weights
            .iter()
            .filter_map(|w| std::fs::metadata(w).ok())
            .map(|m| m.len())
            .sum(),
        samples: args.latency_samples,
        source: source.clone(),
    };

    // The LLM teacher: the test rows, every draw's gold rows and a sample of the training rows,
    // labeled once from the prompt.
    let llm = if args.llm_teacher.is_empty() {
        None
    } else {
        let pool = relabel(&train_all, sentiment);
        let mut ids: HashSet<String> = relabel(&test_all, sentiment)
            .into_iter()
            .map(|g| g.id)
            .collect();
        for d in 0..args.draws {
            ids.extend(
                draw(&pool, args.gold_count, args.seed, d, false)
                    .into_iter()
                    .map(|g| g.id),
            );
        }
        let mut rest: Vec<&Gold> = train_all.iter().filter(|g| !ids.contains(&g.id)).collect();
        Rng::derive(args.seed, "llm-rows", 0).shuffle(&mut rest);
        ids.extend(rest.iter().take(args.llm_rows).map(|g| g.id.clone()));
        let subset = out.join("llm-corpus.jsonl");
        let mut body = String::new();
        for line in std::fs::read_to_string(&args.corpus)
            .with_context(|| format!("reading {}", args.corpus))?
            .lines()
        {
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["id"].as_str().is_some_and(|id| ids.contains(id)) {
                body.push_str(line);
                body.push('\n');
            }
        }
        std::fs::write(&subset, body).with_context(|| format!("writing {}", subset.display()))?;
        eprintln!(
            "    LLM teacher {}: labeling {} rows (test rows, gold rows, {} training rows) from a prompt",
            args.llm_teacher,
            ids.len(),
            args.llm_rows
        );
        let mut output = crate::label::OutputArgs::simple(OutputKind::Logits, Dtype::F32);
        let p = sentiment_prompt();
        output.prompt = Some(p.template.clone());
        output.choices = p
            .choices
            .iter()
            .map(|c| format!("{}={}", c.label, c.continuation))
            .collect();
        output.chat = p.chat;
        output.answer_prefix = p.answer_prefix.clone();
        let llm_args = LabelArgs {
            corpus: CorpusArgs {
                corpus: subset.display().to_string(),
                format: None,
                text_field: "text".into(),
                id_field: "id".into(),
            },
            teacher: TeacherArgs {
                teacher: args.llm_teacher.clone(),
                device: DeviceSpec::Cpu,
                max_batch_tokens: args.max_batch_tokens,
                resident_weights: Default::default(),
                precision: "f32".into(),
            },
            store: Some(args.store.clone()),
            output,
            shard_size: 1000,
            strict: false,
            max_attempts: 0,
            json: false,
            remote: Default::default(),
        };
        let job = crate::label::label(&llm_args, true).await?;
        eprintln!(
            "    {} rows, {} shards ({} cache hits): {:.1} teacher-seconds spent, {:.1} saved",
            job.ledger.rows,
            job.ledger.shards,
            job.ledger.cache_hits,
            job.ledger.teacher_seconds,
            job.ledger.teacher_seconds_saved
        );
        let entry = tasks::find_entry(
            &loc,
            &tasks::EntryQuery {
                output: Some(job.output_fingerprint.as_str()),
                teacher: Some(job.teacher_fingerprint.as_str()),
                ..Default::default()
            },
        )
        .await?;
        let md = distill_cache::model_dir::ModelDir::resolve(&args.llm_teacher).await?;
        let bytes: u64 = md
            .weights
            .iter()
            .filter_map(|w| std::fs::metadata(w).ok())
            .map(|m| m.len())
            .sum();
        let t = {
            let md = md.clone();
            std::sync::Arc::new(
                tokio::task::spawn_blocking(move || Teacher::load(&md, &DeviceSpec::Cpu)).await??,
            )
        };
        Some((job, entry, t, bytes))
    };

    let mut rows: Vec<Row> = Vec::new();
    let mut mimicked = None;
    let mut task_seconds: Vec<(String, f64)> = Vec::new();
    let mut specs: Vec<(&str, Mapping, usize)> = (0..args.draws)
        .map(|d| ("sentiment", sentiment as Mapping, d))
        .collect();
    specs.push(("review-vs-plot", review_or_plot, 0));
    let labeling_loop = LabelingLoop {
        args: &args,
        loc: &loc,
        entry: &entry,
        out: &out,
        split_dir: &split_dir,
        teacher_row: &teacher_row,
    };
    // 3. The sentiment draws, 4. the second task: each a head, its teacher rows and its students.
    for (task_kind, mapping, d) in &specs {
        let second = *task_kind != "sentiment";
        let pool = relabel(&train_all, *mapping);
        let test = relabel(&test_all, *mapping);
        // Sentiment: a random draw, as in the reference setup. Review vs plot: plot summaries are 8%
        // of the corpus, so a random 100 holds a handful; the practitioner labels each class equally.
        let picked = draw(
            &pool,
            args.gold_count,
            args.seed + if second { 1000 } else { 0 },
            *d,
            second,
        );
        let name = if second {
            "quickstart-review-vs-plot".to_owned()
        } else {
            format!("quickstart-sentiment-d{d}")
        };
        let gold_path = split_dir.join(format!("{name}.gold.jsonl"));
        let test_path = split_dir.join(format!("{}.test.jsonl", task_kind));
        write_jsonl(&test_path, &test)?;
        let step = if second { "4/5" } else { "3/5" };
        eprintln!(
            "{step} task {name}: head fitted on {} gold labels{} from the cache",
            picked.len(),
            if second {
                " (an equal number per class)"
            } else {
                ""
            }
        );
        let cvo = draw_cv(args.seed + *d as u64);
        let record = fit_draw_head(&loc, &entry, &name, &picked, &gold_path, cvo).await?;
        task_seconds.push((name.clone(), record.teacher_seconds));
        let examples = labeled_examples(
            &loc,
            &record,
            &test_path,
            &Fields::default(),
            &record.labels,
            &source,
        )
        .await?;
        // The head of earlier releases (C fixed at 1, no temperature), for comparison: its teacher
        // row only (students distill from the cross-validated head).
        let fixed = tasks::fit_head(
            &loc,
            &format!("{name}-c1"),
            &entry,
            &picked,
            &gold_path.display().to_string(),
            CvOptions {
                c: Some(1.0),
                ..cvo
            },
            2,
        )
        .await?;

        // Teacher + head: the teacher run live (for its latency), its head on top.
        for (row, record) in [(FIXED_C_ROW, &fixed), ("teacher + head", &record)] {
            let report = teacher_row
                .evaluate(&loc, record, &test_path, row, Scoring::Live)
                .await?;
            rows.push(Row {
                task: task_kind.to_string(),
                draw: *d,
                model: row.into(),
                distilled: false,
                unseen: true,
                report,
            });
        }

        // (row, student, gold only, test texts unseen)
        let mut students: Vec<(&str, StudentKind, bool, bool)> = vec![
            ("n-gram, gold only", StudentKind::Ngram, true, true),
            (
                "n-gram, distilled",
                StudentKind::Ngram,
                false,
                args.exclude_test_texts,
            ),
        ];
        if !args.exclude_test_texts {
            students.push((UNSEEN_ROW, StudentKind::Ngram, false, true));
        }
        if args.transformer_epochs > 0 && (!second || args.second_task_transformer) {
            students.push((
                "transformer, distilled",
                StudentKind::Transformer,
                false,
                args.exclude_test_texts,
            ));
        }
        for (label, kind, gold_only, unseen) in students {
            let exclude = if unseen {
                test_ids.clone()
            } else {
                exclude.clone()
            };
            let dir = out.join("models").join(format!(
                "{name}-{}",
                label.replace(", ", "-").replace(' ', "-")
            ));
            let mut targs = draw_student_args(&args, &name, kind, &dir, args.seed + *d as u64);
            targs.gold_only = gold_only;
            if kind == StudentKind::Transformer && args.mimic_epochs > 0 && mimicked.is_none() {
                eprintln!(
                    "    mimicking the teacher's embeddings ({} epoch(s), once for every task)",
                    args.mimic_epochs
                );
                mimicked = Some(mimic_once(&loc, &record, &targs, &exclude, &teacher_dir).await?);
            }
            eprintln!("    training {label}");
            let t0 = std::time::Instant::now();
            train_cmd::train(
                &loc,
                &record,
                &targs,
                exclude.clone(),
                mimicked.as_ref().map(|(m, id)| (m, id.as_str())),
                true,
            )
            .await?;
            let train_seconds = t0.elapsed().as_secs_f64();
            let model = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || Predictor::load(&dir, &DeviceSpec::Cpu))
                    .await??
            };
            let params = parameters(&model, &dir);
            let bytes = dir_bytes(&dir);
            let ex = examples.clone();
            let samples = args.latency_samples;
            let mut report = tokio::task::spawn_blocking(move || {
                eval::evaluate(label, &model, &ex, samples, params, bytes)
            })
            .await??;
            report.model = label.to_owned();
            eprintln!(
                "      {:.1}% accuracy, trained in {train_seconds:.0} s",
                100.0 * report.accuracy
            );
            rows.push(Row {
                task: task_kind.to_string(),
                draw: *d,
                model: label.into(),
                distilled: !gold_only,
                unseen,
                report,
            });
        }
        // The n-gram students distilled from this draw's other teachers (tuned, LLM).
        let ngram = NgramRow {
            args: &args,
            out: &out,
            exclude: &exclude,
            seed: args.seed + *d as u64,
        };
        if !second && args.suggest > 0 && *d < args.loop_draws {
            rows.extend(
                labeling_loop
                    .run(*d, &name, &pool, &picked, &record, &test_path, cvo)
                    .await?,
            );
        }
        for &objective in args
            .finetune_objectives
            .iter()
            .flatten()
            .filter(|_| !second)
        {
            // The teacher fine-tuned on the same gold labels, its head, and a student from it.
            let tuned_name = match objective {
                Objective::Contrastive => format!("{name}-tuned"),
                other => format!("{name}-tuned-{other}"),
            };
            let (row_name, ngram_row_name) = (tuned_row(objective), tuned_ngram_row(objective));
            let tuned_out = out.join("models").join(format!("{tuned_name}-teacher"));
            eprintln!(
                "    fine-tuning the teacher on the {} gold labels ({objective} objective), then its pass over the corpus",
                picked.len(),
            );
            let tuned_url = tuned_out.display().to_string();
            let tune = crate::task_cmd::Finetune {
                cache: &args.store,
                out: &tuned_url,
                teacher: Some(args.teacher.clone()),
                opts: crate::task_cmd::finetune_options(
                    objective,
                    objective.is_contrastive().then_some(args.finetune_pairs),
                    (args.finetune_epochs, None, None),
                    args.seed + *d as u64,
                )?,
                device: DeviceSpec::Cpu,
                show: true,
                text_field: "text".into(),
                id_field: "id".into(),
            };
            let tuned_record = crate::task_cmd::fit_finetuned(
                &loc,
                &tuned_name,
                &entry,
                &picked,
                &gold_path.display().to_string(),
                &tune,
                cvo,
            )
            .await?;
            task_seconds.push((tuned_name.clone(), tuned_record.teacher_seconds));
            let tuned_teacher = {
                let md = distill_cache::model_dir::ModelDir::inspect(
                    &tuned_out.display().to_string(),
                    &tuned_out,
                )?;
                std::sync::Arc::new(
                    tokio::task::spawn_blocking(move || Teacher::load(&md, &DeviceSpec::Cpu))
                        .await??,
                )
            };
            let tuned_row = TeacherRow {
                teacher: tuned_teacher,
                source: eval::TeacherSource {
                    model: Some(tuned_out.display().to_string()),
                    device: DeviceSpec::Cpu,
                },
                ..teacher_row.clone()
            };
            let report = tuned_row
                .evaluate(&loc, &tuned_record, &test_path, &row_name, Scoring::Live)
                .await?;
            rows.push(Row {
                task: task_kind.to_string(),
                draw: *d,
                model: row_name.clone(),
                distilled: false,
                unseen: true,
                report,
            });
            let examples = labeled_examples(
                &loc,
                &tuned_record,
                &test_path,
                &Fields::default(),
                &tuned_record.labels,
                &source,
            )
            .await?;
            let report = ngram
                .distill(&loc, &tuned_record, examples, &ngram_row_name)
                .await?;
            rows.push(Row {
                task: task_kind.to_string(),
                draw: *d,
                model: ngram_row_name.clone(),
                distilled: true,
                unseen: args.exclude_test_texts,
                report,
            });
        }
        if let (false, Some((_, llm_entry, llm_teacher, llm_bytes))) = (second, &llm) {
            // The LLM teacher, calibrated on the same gold labels, and a student distilled from it.
            let llm_name = format!("quickstart-sentiment-llm-d{d}");
            let record = tasks::fit_calibrated(
                &loc,
                &llm_name,
                llm_entry,
                &picked,
                &gold_path.display().to_string(),
                5,
                args.seed + *d as u64,
            )
            .await?;
            if let Some(cv) = &record.cross_validation {
                eprintln!("    LLM calibration chosen by 5-fold CV on the gold labels: {cv}");
            }
            let examples = labeled_examples(
                &loc,
                &record,
                &test_path,
                &Fields::default(),
                &record.labels,
                &source,
            )
            .await?;
            let head = record.head.clone().expect("a calibrated task has a head");
            let model = Predictor::Prompted(
                llm_teacher.clone(),
                Box::new(sentiment_prompt()),
                head,
                record.labels.clone(),
            );
            let params = llm_teacher.shape().parameters;
            let (ex, samples, bytes) =
                (examples.clone(), args.latency_samples.min(100), *llm_bytes);
            let report = tokio::task::spawn_blocking(move || {
                eval::evaluate_cached(LLM_TEACHER_ROW, &model, &ex, samples, params, bytes)
            })
            .await??;
            eprintln!(
                "      LLM + calibration: {:.1}% accuracy",
                100.0 * report.accuracy
            );
            rows.push(Row {
                task: task_kind.to_string(),
                draw: *d,
                model: LLM_TEACHER_ROW.into(),
                distilled: false,
                unseen: true,
                report,
            });
            let report = ngram
                .distill(&loc, &record, examples, LLM_NGRAM_ROW)
                .await?;
            rows.push(Row {
                task: task_kind.to_string(),
                draw: *d,
                model: LLM_NGRAM_ROW.into(),
                distilled: true,
                unseen: args.exclude_test_texts,
                report,
            });
        }
    }

    // 5. The labeling loop's further draws: a fresh draw of gold labels each, its head and the n-gram
    // student the suggestions read, then the loop; nothing else. The loop's gap is a few tenths of a
    // point where the draws spread over several points: it needs more draws than the students.
    if args.suggest > 0 && args.loop_draws > args.draws {
        let pool = relabel(&train_all, sentiment);
        let test_path = split_dir.join("sentiment.test.jsonl");
        for d in args.draws..args.loop_draws {
            let picked = draw(&pool, args.gold_count, args.seed, d, false);
            let name = format!("quickstart-sentiment-d{d}");
            let gold_path = split_dir.join(format!("{name}.gold.jsonl"));
            eprintln!(
                "5/5 labeling loop, draw {}/{}: task {name} from {} gold labels and its n-gram student",
                d + 1,
                args.loop_draws,
                picked.len()
            );
            let cvo = draw_cv(args.seed + d as u64);
            let record = fit_draw_head(&loc, &entry, &name, &picked, &gold_path, cvo).await?;
            task_seconds.push((name.clone(), record.teacher_seconds));
            // Distilled as the student draws distill it.
            let dir = out.join("models").join(format!("{name}-n-gram-distilled"));
            let targs =
                draw_student_args(&args, &name, StudentKind::Ngram, &dir, args.seed + d as u64);
            train_cmd::train(&loc, &record, &targs, exclude.clone(), None, true).await?;
            rows.extend(
                labeling_loop
                    .run(d, &name, &pool, &picked, &record, &test_path, cvo)
                    .await?,
            );
        }
    }

    // The report.
    let summary = summarize(&rows);
    let checks = targets(&summary, args.draws);
    let gap = loop_gap(&rows);
    println!();
    for task in ["sentiment", "review-vs-plot"] {
        let t: Vec<EvalReport> = summary
            .iter()
            .filter(|s| s.task == task)
            .map(|s| s.mean.clone())
            .collect();
        let draws = summary
            .iter()
            .find(|s| s.task == task)
            .map(|s| s.draws)
            .unwrap_or(0);
        println!(
            "{} (test set split by {}; {} gold labels{}):",
            if task == "sentiment" {
                "Task 1: fresh vs rotten"
            } else {
                "Task 2: critic review vs plot summary (same cache, 0 teacher-seconds)"
            },
            args.group_field,
            args.gold_count,
            if draws > 1 {
                format!(", mean of {draws} draws")
            } else {
                String::new()
            }
        );
        print_table(&t);
        if let (true, Some(g)) = (task == "sentiment", &gap) {
            println!("{}", loop_line(&args, g));
        }
        println!();
    }
    println!("{}\n", setup_note(&args));
    println!("Teacher: {:.1} s spent labeling this run, {:.1} s saved by cache hits; tasks fitted with {} teacher-seconds.",
        job.ledger.teacher_seconds, job.ledger.teacher_seconds_saved,
        task_seconds.iter().map(|t| t.1).sum::<f64>());
    if let Some((llm_job, ..)) = &llm {
        println!(
            "LLM teacher: {} rows labeled from the prompt, {:.1} s spent this run, {:.1} s saved by cache hits.",
            llm_job.ledger.rows, llm_job.ledger.teacher_seconds, llm_job.ledger.teacher_seconds_saved
        );
    }
    for c in &checks {
        println!("{} {}", if c.met { "MET " } else { "MISS" }, c.what);
    }
    let report = serde_json::json!({
        "corpus": args.corpus,
        "teacher": args.teacher,
        "teacher_fingerprint": job.teacher_fingerprint,
        "draws": args.draws,
        "loop_draws": args.loop_draws,
        "labeling_loop": gap,
        "gold_per_draw": args.gold_count,
        "split": {"by": args.group_field, "train_rows": train_all.len(), "test_rows": test_all.len()},
        "students_saw_test_texts": !args.exclude_test_texts,
        "setup": setup_note(&args),
        "label_job": job,
        "llm_label_job": llm.as_ref().map(|l| &l.0),
        "task_teacher_seconds": task_seconds,
        "rows": rows,
        "summary": summary,
        "targets": checks,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("accuracy-latency.svg"), plot(&summary))?;
    std::fs::write(
        out.join("report.md"),
        markdown(
            &args,
            &summary,
            gap.as_ref(),
            &checks,
            &job,
            started.elapsed().as_secs_f64(),
        ),
    )?;
    println!(
        "\nwrote {}/report.json, report.md and accuracy-latency.svg",
        out.display()
    );
    Ok(())
}

/// How a draw's heads are cross-validated: C and temperature chosen over 5 repeated 5-fold splits.
fn draw_cv(seed: u64) -> CvOptions {
    CvOptions {
        c: None,
        folds: 5,
        repeats: distill_student_trainer::logreg::CV_REPEATS,
        seed,
    }
}

/// The labeling loop of a draw, with the gold labels held back: the same budget of more labels, at
/// random or suggested by `task suggest` (with the draw's distilled n-gram student), each added to the
/// draw's gold labels and a head fitted on them; the two heads scored on the test set from the cache.
struct LabelingLoop<'a> {
    args: &'a QuickstartArgs,
    loc: &'a distill_cache::store::Location,
    entry: &'a tasks::Entry,
    out: &'a Path,
    split_dir: &'a Path,
    teacher_row: &'a TeacherRow,
}

impl LabelingLoop<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        d: usize,
        name: &str,
        pool: &[Gold],
        picked: &[Gold],
        record: &distill_cache::task::TaskRecord,
        test_path: &Path,
        cvo: CvOptions,
    ) -> anyhow::Result<Vec<Row>> {
        let args = self.args;
        let taken: HashSet<&str> = picked.iter().map(|g| g.id.as_str()).collect();
        let mut rest: Vec<&Gold> = pool
            .iter()
            .filter(|g| !taken.contains(g.id.as_str()))
            .collect();
        rest.sort_by(|a, b| a.id.cmp(&b.id));
        Rng::derive(args.seed, "more-random", d as u64).shuffle(&mut rest);
        let random: Vec<Gold> = rest
            .iter()
            .take(args.suggest)
            .map(|g| (*g).clone())
            .collect();
        let student_dir = self
            .out
            .join("models")
            .join(format!("{name}-n-gram-distilled"));
        let student =
            tokio::task::spawn_blocking(move || Predictor::load(&student_dir, &DeviceSpec::Cpu))
                .await??;
        let candidates: HashSet<String> = rest.iter().map(|g| g.id.clone()).collect();
        eprintln!(
            "    suggesting {} more labels (teacher uncertainty, disagreement with the n-gram student, spread)",
            args.suggest
        );
        let suggested = distill_student_trainer::suggest::for_task(
            self.loc,
            record,
            args.suggest,
            Some(student),
            Some(candidates),
        )
        .await?;
        let by_id: std::collections::HashMap<&str, &Gold> =
            rest.iter().map(|g| (g.id.as_str(), *g)).collect();
        let revealed: Vec<Gold> = suggested
            .iter()
            .map(|s| (*by_id[s.id.as_str()]).clone())
            .collect();
        let mut rows = Vec::new();
        for (row, more, suffix) in [
            (MORE_RANDOM_ROW, random, "more-random"),
            (MORE_SUGGESTED_ROW, revealed, "more-suggested"),
        ] {
            let mut gold = picked.to_vec();
            gold.extend(more);
            let task_name = format!("{name}-{suffix}");
            let path = self.split_dir.join(format!("{task_name}.gold.jsonl"));
            let r = fit_draw_head(self.loc, self.entry, &task_name, &gold, &path, cvo).await?;
            let report = self
                .teacher_row
                .evaluate(self.loc, &r, test_path, row, Scoring::FromCache)
                .await?;
            rows.push(Row {
                task: "sentiment".into(),
                draw: d,
                model: row.into(),
                distilled: false,
                unseen: true,
                report,
            });
        }
        Ok(rows)
    }
}

/// How a draw's students are trained (into `dir`, no checkpoint): the command line's settings.
fn draw_student_args(
    args: &QuickstartArgs,
    task: &str,
    kind: StudentKind,
    dir: &Path,
    seed: u64,
) -> TrainArgs {
    let mut targs = TrainArgs::new(&args.store, task, kind, dir);
    targs.seed = seed;
    targs.layers = Some(args.layers);
    targs.max_seq = args.max_seq;
    targs.epochs = (kind == StudentKind::Transformer).then_some(args.transformer_epochs);
    targs.mimic_epochs = args.mimic_epochs;
    targs.teacher = Some(args.teacher.clone());
    targs.checkpoint = None;
    targs
}

/// An n-gram student distilled from a task (into `<out>/models/<task>-ngram`) and evaluated on the
/// test examples.
struct NgramRow<'a> {
    args: &'a QuickstartArgs,
    out: &'a Path,
    exclude: &'a HashSet<String>,
    seed: u64,
}

impl NgramRow<'_> {
    async fn distill(
        &self,
        loc: &distill_cache::store::Location,
        record: &distill_cache::task::TaskRecord,
        examples: Vec<distill_student_trainer::data::Example>,
        row: &str,
    ) -> anyhow::Result<EvalReport> {
        let dir = self
            .out
            .join("models")
            .join(format!("{}-ngram", record.name));
        let mut targs = TrainArgs::new(&self.args.store, &record.name, StudentKind::Ngram, &dir);
        targs.seed = self.seed;
        targs.checkpoint = None;
        eprintln!("    training {row}");
        train_cmd::train(loc, record, &targs, self.exclude.clone(), None, true).await?;
        let model = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || Predictor::load(&dir, &DeviceSpec::Cpu)).await??
        };
        let (params, bytes) = (parameters(&model, &dir), dir_bytes(&dir));
        let (samples, name) = (self.args.latency_samples, row.to_owned());
        let mut report = tokio::task::spawn_blocking(move || {
            eval::evaluate(&name, &model, &examples, samples, params, bytes)
        })
        .await??;
        report.model = row.to_owned();
        eprintln!("      {:.1}% accuracy", 100.0 * report.accuracy);
        Ok(report)
    }
}

/// A "teacher + head" row: the teacher run live (for its latency), a task's head on top.
#[derive(Clone)]
struct TeacherRow {
    teacher: std::sync::Arc<Teacher>,
    params: u64,
    bytes: u64,
    samples: usize,
    source: eval::TeacherSource,
}

/// How a "teacher + head" row gets its classes.
#[derive(Clone, Copy, PartialEq)]
enum Scoring {
    /// The teacher run live over every test text.
    Live,
    /// The task's cached logits of the test rows (the head over the cached embeddings: what the live
    /// teacher gives, to float rounding), the teacher run live on a few texts for latency only: the
    /// labeling loop scores many heads.
    FromCache,
}

impl TeacherRow {
    async fn evaluate(
        &self,
        loc: &distill_cache::store::Location,
        record: &distill_cache::task::TaskRecord,
        test_path: &Path,
        row: &str,
        scoring: Scoring,
    ) -> anyhow::Result<EvalReport> {
        let examples = labeled_examples(
            loc,
            record,
            test_path,
            &Fields::default(),
            &record.labels,
            &self.source,
        )
        .await?;
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

/// Texts the labeling loop's heads are timed on (their latency is the teacher's, timed in full on
/// the draw's `teacher + head` row).
const LOOP_TIMING_SAMPLES: usize = 50;

async fn mimic_once(
    loc: &distill_cache::store::Location,
    record: &distill_cache::task::TaskRecord,
    targs: &TrainArgs,
    exclude: &HashSet<String>,
    dir: &distill_cache::model_dir::ModelDir,
) -> anyhow::Result<(
    distill_student_trainer::transformer::TransformerStudent,
    String,
)> {
    let data = TrainData::open(loc, record, exclude.clone(), targs.seed)
        .await?
        .with_embeddings(record)?;
    let opts = TransformerOptions {
        layers: targs.layers(),
        max_seq: targs.max_seq,
        batch: targs.batch(),
        mimic_epochs: targs.mimic_epochs,
        seed: targs.seed,
        ..Default::default()
    };
    let dir = dir.clone();
    let ckpt = PathBuf::from(format!("{}.mimic-checkpoint", targs.out.display()));
    let run_id = format!(
        "quickstart-mimic-{}-{}",
        record.base_output,
        serde_json::to_string(&opts)?
    );
    let mut ids: Vec<&String> = exclude.iter().collect();
    ids.sort();
    let run_id = distill_cache::fingerprint::Hasher::new("distill.quickstart-mimic")
        .str(&run_id)
        .str(&serde_json::to_string(&ids)?)
        .clone()
        .finish()
        .to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let s = distill_student_trainer::recipe::mimic(
            &dir,
            &data,
            &distill_student_trainer::recipe::Phases {
                opts: &opts,
                run_id: &run_id,
                checkpoint: Some(&ckpt),
                device: &candle_core::Device::Cpu,
                progress: &train_cmd::bars(true),
            },
        )?;
        // Removed only on success: after a failure a rerun resumes from it.
        let _ = std::fs::remove_dir_all(&ckpt);
        Ok((s, run_id))
    })
    .await?
}

/// Rows shown in the plot: one point per model (the variants of the teacher's head are in the tables).
fn plotted(s: &Summary) -> bool {
    s.mean.latency_p50_ms > 0.0
        && ![FIXED_C_ROW, MORE_RANDOM_ROW, MORE_SUGGESTED_ROW].contains(&s.model.as_str())
}

/// Accuracy against CPU latency (log scale), one colour per task with a legend; each point's label
/// placed where it overlaps no other label or point and stays inside the picture.
fn plot(summary: &[Summary]) -> String {
    let (w, h) = (760.0, 460.0);
    let (left, right, top, bottom) = (64.0, 24.0, 56.0, 56.0);
    let pts: Vec<&Summary> = summary.iter().filter(|s| plotted(s)).collect();
    let lx = |v: f64| v.max(1e-3).log10();
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), s| {
        (
            a.min(lx(s.mean.latency_p50_ms)),
            b.max(lx(s.mean.latency_p50_ms)),
        )
    });
    let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), s| {
        (a.min(s.mean.accuracy), b.max(s.mean.accuracy))
    });
    let (x0, x1) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
    let (y0, y1) = (
        (y0 * 20.0).floor() / 20.0,
        ((y1 * 20.0).ceil() / 20.0).max(y0 + 0.05),
    );
    let px = |v: f64| left + (lx(v) - x0) / (x1 - x0) * (w - left - right);
    let py = |v: f64| h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!("<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n", h - bottom, w - right, h - bottom, h - bottom);
    let mut e = x0;
    while e <= x1 + 1e-9 {
        let x = left + (e - x0) / (x1 - x0) * (w - left - right);
        s += &format!(
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{} ms</text>\n",
            h - bottom + 16.0,
            10f64.powf(e)
        );
        e += 1.0;
    }
    let mut a = y0;
    while a <= y1 + 1e-9 {
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}%</text>\n",
            left - 6.0,
            py(a) + 4.0,
            100.0 * a
        );
        a += 0.05;
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">CPU latency, batch 1 (p50, log scale)</text>\n", (left + w - right) / 2.0, h - 16.0);
    s += &format!("<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">test accuracy</text>\n", h / 2.0, h / 2.0);
    // The legend, above the plot area.
    let tasks = [
        ("sentiment", "#1f77b4", "Task 1: fresh vs rotten"),
        (
            "review-vs-plot",
            "#d62728",
            "Task 2: critic review vs plot summary",
        ),
    ];
    let mut lx0 = left;
    for (_, color, name) in tasks {
        s += &format!("<circle cx=\"{:.1}\" cy=\"22\" r=\"5\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"26\">{name}</text>\n", lx0 + 5.0, lx0 + 14.0);
        lx0 += 24.0 + text_width(name);
    }
    let points: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| (px(p.mean.latency_p50_ms), py(p.mean.accuracy)))
        .collect();
    let boxes = place_labels(
        &points,
        &pts.iter().map(|p| p.model.as_str()).collect::<Vec<_>>(),
        (0.0, top - 12.0, w, h - bottom + 2.0),
    );
    for ((p, (x, y)), b) in pts.iter().zip(&points).zip(&boxes) {
        let color = tasks
            .iter()
            .find(|t| t.0 == p.task)
            .map(|t| t.1)
            .unwrap_or("#555555");
        s += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>\n", b.0, b.1 + LABEL_H - 3.0, p.model);
    }
    s + "</svg>\n"
}

const LABEL_H: f64 = 12.0;

/// Width of a label at font size 11 (a sans-serif character is ~6 px wide on average).
fn text_width(t: &str) -> f64 {
    6.2 * t.chars().count() as f64
}

/// Places each label (its top-left corner) beside its point: the first of several spots around the
/// point that stays inside `frame` (x0, y0, x1, y1) and overlaps neither a placed label nor a point;
/// if none is free, the spot that overlaps least.
fn place_labels(
    points: &[(f64, f64)],
    labels: &[&str],
    frame: (f64, f64, f64, f64),
) -> Vec<(f64, f64)> {
    let overlap = |a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)| {
        let dx = (a.2.min(b.2) - a.0.max(b.0)).max(0.0);
        let dy = (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
        dx * dy
    };
    let dots: Vec<(f64, f64, f64, f64)> = points
        .iter()
        .map(|&(x, y)| (x - 5.0, y - 5.0, x + 5.0, y + 5.0))
        .collect();
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    // Lower points first: their labels go where the upper ones are not.
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[b].1.total_cmp(&points[a].1));
    let mut out = vec![(0.0, 0.0); points.len()];
    for i in order {
        let (x, y) = points[i];
        let tw = text_width(labels[i]);
        let mut best: Option<(f64, (f64, f64, f64, f64))> = None;
        for k in 0..24 {
            let step = (k / 4) as f64 * LABEL_H;
            let (bx, by) = match k % 4 {
                0 => (x + 8.0, y - LABEL_H - 2.0 - step),
                1 => (x + 8.0, y + 2.0 + step),
                2 => (x - 8.0 - tw, y - LABEL_H - 2.0 - step),
                _ => (x - 8.0 - tw, y + 2.0 + step),
            };
            let r = (bx, by, bx + tw, by + LABEL_H);
            let outside = (frame.0 - r.0).max(0.0)
                + (r.2 - frame.2).max(0.0)
                + (frame.1 - r.1).max(0.0)
                + (r.3 - frame.3).max(0.0);
            let cost = 1e6 * outside
                + placed
                    .iter()
                    .chain(&dots)
                    .map(|b| overlap(r, *b))
                    .sum::<f64>()
                + k as f64 * 1e-3;
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, r));
            }
            if cost < 1.0 {
                break;
            }
        }
        let r = best.expect("candidates").1;
        placed.push(r);
        out[i] = (r.0, r.1);
    }
    out
}

/// What the distilled students were allowed to see.
fn setup_note(args: &QuickstartArgs) -> String {
    if args.exclude_test_texts {
        "Distillation excluded the test movies' texts entirely: every student is evaluated on text it never saw.".into()
    } else {
        format!(
            "Students distill from the teacher's soft labels over the whole unlabeled corpus, as in the reference setup \
             (test texts included as unlabeled text; test labels are never used). The row `{UNSEEN_ROW}` is an n-gram \
             student distilled without the test texts: how students do on text they never saw \
             (`--exclude-test-texts` runs every student that way)."
        )
    }
}

/// The labeling loop's gap, a line under the sentiment table.
fn loop_line(args: &QuickstartArgs, g: &LoopGap) -> String {
    format!(
        "Labeling loop ({} + {} labels, the two `+` rows): mean of {} draws; suggested − random = {:+.2} points (standard error {:.2}), suggested ahead in {} of {} draws.",
        args.gold_count, args.suggest, g.draws, 100.0 * g.mean, 100.0 * g.standard_error, g.suggested_ahead, g.draws
    )
}

fn markdown(
    args: &QuickstartArgs,
    summary: &[Summary],
    gap: Option<&LoopGap>,
    checks: &[Check],
    job: &distill_coordinator::JobSummary,
    wall: f64,
) -> String {
    let mut s = String::from("# distill quickstart report\n\n");
    s += &format!(
        "Corpus `{}` ({} rows) labeled once by `{}`: {:.1} teacher-seconds spent in this run, {:.1} saved by cache hits. \
         Gold labels split by `{}` (no {} on both sides); {} gold labels per draw, {} draw(s). Wall time {:.0} s.\n\n{}\n\n",
        args.corpus, job.ledger.rows, args.teacher, job.ledger.teacher_seconds, job.ledger.teacher_seconds_saved, args.group_field, args.group_field, args.gold_count, args.draws, wall,
        setup_note(args)
    );
    for task in ["sentiment", "review-vs-plot"] {
        s += &format!(
            "## {}\n\n",
            if task == "sentiment" {
                "Task 1: fresh vs rotten"
            } else {
                "Task 2: critic review vs plot summary (0 teacher-seconds)"
            }
        );
        s += "| model | accuracy (min–max) | macro-F1 | agreement | ECE | p50 ms | p99 ms | texts/s | parameters | size |\n|---|---|---|---|---|---|---|---|---|---|\n";
        for r in summary.iter().filter(|r| r.task == task) {
            let m = &r.mean;
            s += &format!(
                "| {} | {:.1}% ({:.1}–{:.1}) | {:.3} | {:.1}% | {:.3} | {:.2} | {:.2} | {:.0} | {} | {} |\n",
                r.model, 100.0 * m.accuracy, 100.0 * r.accuracy_min, 100.0 * r.accuracy_max, m.macro_f1, 100.0 * m.agreement, m.ece,
                m.latency_p50_ms, m.latency_p99_ms, m.throughput, crate::report::count(m.parameters), crate::report::bytes(m.bytes)
            );
        }
        if let (true, Some(g)) = (task == "sentiment", gap) {
            s += &format!("\n{}\n", loop_line(args, g));
        }
        s += "\n";
    }
    s += "## Targets\n\n";
    for c in checks {
        s += &format!("- {} {}\n", if c.met { "✅" } else { "❌" }, c.what);
    }
    s += "\n![accuracy against latency](accuracy-latency.svg)\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--finetune-objectives`: a list, `none` (or nothing) skips the tuned teachers, a wrong name is
    /// refused by clap with the objectives it knows.
    #[test]
    fn finetune_objectives_parse_as_a_list_or_none() {
        use clap::Parser;
        let parse = |v: &[&str]| {
            let mut argv = vec!["distill", "quickstart"];
            argv.extend(v);
            match crate::cli::Cli::try_parse_from(argv) {
                Ok(crate::cli::Cli {
                    command: crate::cli::Command::Quickstart(a),
                    ..
                }) => Ok(a
                    .finetune_objectives
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(parse(&[]), Ok(vec![Objective::Classifier]));
        assert_eq!(
            parse(&["--finetune-objectives", "contrastive,classifier"]),
            Ok(vec![Objective::Contrastive, Objective::Classifier])
        );
        assert_eq!(parse(&["--finetune-objectives", "none"]), Ok(vec![]));
        assert_eq!(parse(&["--finetune-objectives", ""]), Ok(vec![]));
        let e = parse(&["--finetune-objectives", "setfit"]).unwrap_err();
        assert!(e.contains("contrastive or classifier"), "{e}");
    }

    #[test]
    fn labels_stay_inside_and_apart_even_for_crowded_points() {
        // Five points in a cluster near the right edge (the teacher rows of the two tasks, say).
        let points = [
            (700.0, 100.0),
            (702.0, 104.0),
            (698.0, 98.0),
            (600.0, 300.0),
            (705.0, 110.0),
        ];
        let labels = [
            "teacher + head",
            "transformer, distilled",
            "LLM (SmolLM2, prompted) + calibration",
            "n-gram",
            "n-gram, distilled, test texts unseen",
        ];
        let frame = (0.0, 40.0, 760.0, 420.0);
        let boxes = place_labels(&points, &labels, frame);
        let rects: Vec<(f64, f64, f64, f64)> = boxes
            .iter()
            .zip(labels)
            .map(|(&(x, y), l)| (x, y, x + text_width(l), y + LABEL_H))
            .collect();
        for (i, a) in rects.iter().enumerate() {
            assert!(
                a.0 >= frame.0 && a.2 <= frame.2 && a.1 >= frame.1 && a.3 <= frame.3,
                "{} outside: {a:?}",
                labels[i]
            );
            for b in &rects[i + 1..] {
                let apart = a.2 <= b.0 || b.2 <= a.0 || a.3 <= b.1 || b.3 <= a.1;
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
    }
}
