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
use distill_student_trainer::labels::{self, Fields, Gold};
use distill_student_trainer::logreg::LogRegOptions;
use distill_student_trainer::model::{dir_bytes, Predictor};
use distill_student_trainer::protocol::{
    draw, relabel, review_or_plot, sentiment, split_by_group, summarize, targets, Check, Mapping,
    Row, Summary, LLM_NGRAM_ROW, LLM_TEACHER_ROW, UNSEEN_ROW,
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
    /// Rows of the training movies the LLM labels for distillation, besides the test rows and the
    /// gold labels of every draw (the LLM labels a subset: a 135M decoder costs ~10× MiniLM per row).
    #[arg(long, env = "DISTILL_LLM_ROWS", default_value_t = 3000)]
    pub llm_rows: usize,
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
    let teacher = {
        let d = teacher_dir.clone();
        std::sync::Arc::new(
            tokio::task::spawn_blocking(move || Teacher::load(&d, &DeviceSpec::Cpu)).await??,
        )
    };
    let teacher_params = crate::eval_cmd::safetensors_parameters(&teacher_dir.dir);
    let teacher_bytes: u64 = teacher_dir
        .weights
        .iter()
        .filter_map(|w| std::fs::metadata(w).ok())
        .map(|m| m.len())
        .sum();

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
        write_jsonl(&gold_path, &picked)?;
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
        let record = tasks::fit_head(
            &loc,
            &name,
            &entry,
            &picked,
            &gold_path.display().to_string(),
            LogRegOptions::default(),
            2,
        )
        .await?;
        task_seconds.push((name.clone(), record.teacher_seconds));
        let examples = labeled_examples(
            &loc,
            &record,
            &test_path,
            &Fields::default(),
            &record.labels,
        )
        .await?;

        // Teacher + head: the teacher run live (for its latency), its head on top.
        let head = record.head.clone().expect("a fitted task has a head");
        let th = Predictor::TeacherHead(teacher.clone(), head, record.labels.clone());
        let report = {
            let ex = examples.clone();
            let samples = args.latency_samples;
            tokio::task::spawn_blocking(move || {
                eval::evaluate(
                    "teacher + head",
                    &th,
                    &ex,
                    samples,
                    teacher_params,
                    teacher_bytes,
                )
            })
            .await??
        };
        rows.push(Row {
            task: task_kind.to_string(),
            draw: *d,
            model: "teacher + head".into(),
            distilled: false,
            unseen: true,
            report,
        });

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
            let mut targs = TrainArgs::new(&args.store, &name, kind, &dir);
            targs.gold_only = gold_only;
            targs.seed = args.seed + *d as u64;
            targs.layers = Some(args.layers);
            targs.max_seq = args.max_seq;
            targs.epochs = (kind == StudentKind::Transformer).then_some(args.transformer_epochs);
            targs.mimic_epochs = args.mimic_epochs;
            targs.teacher = Some(args.teacher.clone());
            targs.checkpoint = None;
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
            let dir = out.join("models").join(format!("{llm_name}-ngram"));
            let mut targs = TrainArgs::new(&args.store, &llm_name, StudentKind::Ngram, &dir);
            targs.seed = args.seed + *d as u64;
            targs.checkpoint = None;
            eprintln!("    training {LLM_NGRAM_ROW}");
            train_cmd::train(&loc, &record, &targs, exclude.clone(), None, true).await?;
            let model = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || Predictor::load(&dir, &DeviceSpec::Cpu))
                    .await??
            };
            let (params, bytes) = (parameters(&model, &dir), dir_bytes(&dir));
            let samples = args.latency_samples;
            let mut report = tokio::task::spawn_blocking(move || {
                eval::evaluate(LLM_NGRAM_ROW, &model, &examples, samples, params, bytes)
            })
            .await??;
            report.model = LLM_NGRAM_ROW.to_owned();
            eprintln!("      {:.1}% accuracy", 100.0 * report.accuracy);
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

    // 5. Report.
    let summary = summarize(&rows);
    let checks = targets(&summary, args.draws);
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

fn plot(summary: &[Summary]) -> String {
    let (w, h, m) = (640.0, 400.0, 60.0);
    let pts: Vec<&Summary> = summary
        .iter()
        .filter(|s| s.mean.latency_p50_ms > 0.0)
        .collect();
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
    let px = |v: f64| m + (lx(v) - x0) / (x1 - x0) * (w - 2.0 * m);
    let py = |v: f64| h - m - (v - y0) / (y1 - y0) * (h - 2.0 * m);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!("<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n", h - m, w - m, h - m, h - m);
    let mut e = x0;
    while e <= x1 + 1e-9 {
        let x = m + (e - x0) / (x1 - x0) * (w - 2.0 * m);
        s += &format!(
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{} ms</text>\n",
            h - m + 16.0,
            10f64.powf(e)
        );
        e += 1.0;
    }
    let mut a = y0;
    while a <= y1 + 1e-9 {
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}%</text>\n",
            m - 6.0,
            py(a) + 4.0,
            100.0 * a
        );
        a += 0.05;
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">CPU latency, batch 1 (p50, log scale)</text>\n", w / 2.0, h - 16.0);
    s += &format!("<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">test accuracy</text>\n", h / 2.0, h / 2.0);
    for p in pts {
        let color = if p.task == "sentiment" {
            "#1f77b4"
        } else {
            "#d62728"
        };
        let (x, y) = (px(p.mean.latency_p50_ms), py(p.mean.accuracy));
        s += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{} ({})</text>\n", x + 8.0, y - 6.0, p.model, p.task);
    }
    s + "</svg>\n"
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

fn markdown(
    args: &QuickstartArgs,
    summary: &[Summary],
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
        s += "\n";
    }
    s += "## Targets\n\n";
    for c in checks {
        s += &format!("- {} {}\n", if c.met { "✅" } else { "❌" }, c.what);
    }
    s += "\n![accuracy against latency](accuracy-latency.svg)\n";
    s
}
