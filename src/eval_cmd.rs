//! `distill eval` and `distill predict`: measure a model on labeled examples; label new texts.

use anyhow::Context;
use clap::Args;
use distill_cache::store;
use distill_student_trainer::eval::{self, EvalReport};
use distill_student_trainer::predict::{self, PredictSpec};
use distill_tasks::labels::{self, Fields};
use distill_teacher::DeviceSpec;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model directory: a distill student, a BertForSequenceClassification checkpoint, or the
    /// task's embedding teacher (evaluated as teacher + the task's head); or a causal LM (an lm
    /// student, or any decoder teacher) evaluated on --held-out rows of a token-topk entry.
    #[arg(long, env = "DISTILL_MODEL")]
    pub model: PathBuf,
    /// Cache store holding the task (texts and teacher logits of the labeled ids come from there).
    #[arg(long, env = "DISTILL_CACHE")]
    pub cache: String,
    /// The task (classifier models).
    #[arg(long, env = "DISTILL_TASK", required_unless_present = "held_out")]
    pub task: Option<String>,
    /// Labeled evaluation examples: JSONL with a label and an id of the task's corpus, or a label
    /// and the row's own text (field `text`; the task's teacher labels rows that are not in the
    /// cache, so new texts are compared with the teacher too).
    #[arg(long, env = "DISTILL_LABELS", required_unless_present = "held_out")]
    pub labels: Option<PathBuf>,
    /// The task's teacher, for labeled rows whose texts are not in the cache (default: where the
    /// cache says it was loaded from).
    #[arg(long, env = "DISTILL_TEACHER")]
    pub teacher: Option<String>,
    /// Causal LMs: ids of held-out rows of the token-topk entry (JSONL with an `id` field or one id per
    /// line): perplexity, KL to the teacher and top-1 agreement there, from the cache.
    #[arg(long, env = "DISTILL_HELD_OUT", conflicts_with_all = ["task", "labels"])]
    pub held_out: Option<PathBuf>,
    /// Causal LMs: which cached corpus (a part of its path or URL).
    #[arg(long, env = "DISTILL_TASK_CORPUS")]
    pub corpus: Option<String>,
    /// Causal LMs: which teacher (a prefix of its fingerprint).
    #[arg(long, env = "DISTILL_TEACHER_FINGERPRINT")]
    pub teacher_fingerprint: Option<String>,
    /// Causal LMs: which token-topk entry (as `cache ls` shows it, or a prefix of its fingerprint).
    #[arg(long = "output", env = "DISTILL_TASK_OUTPUT")]
    pub output: Option<String>,
    #[arg(long, env = "DISTILL_ID_FIELD", default_value = "id")]
    pub id_field: String,
    #[arg(long, env = "DISTILL_LABEL_FIELD", default_value = "label")]
    pub label_field: String,
    /// Texts timed one at a time for the latency quantiles.
    #[arg(long, env = "DISTILL_LATENCY_SAMPLES", default_value_t = 200)]
    pub latency_samples: usize,
    /// List this many corpus examples worth labeling next (teacher least sure; teacher and model
    /// furthest apart). Reads the whole task.
    #[arg(long, env = "DISTILL_BLIND_SPOTS", default_value_t = 0)]
    pub blind_spots: usize,
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let loc = store::open(&args.cache, false)?;
    if let Some(held_out) = &args.held_out {
        return run_eval_lm(&loc, &args, held_out).await;
    }
    let (Some(task_name), Some(labels_path)) = (&args.task, &args.labels) else {
        anyhow::bail!("give --task and --labels (classifiers), or --held-out (causal LMs)");
    };
    let spec = eval::EvalSpec {
        model: args.model.clone(),
        task: task_name.clone(),
        labels: labels_path.clone(),
        fields: Fields {
            id: args.id_field.clone(),
            label: args.label_field.clone(),
            text_rows: true,
            ..Default::default()
        },
        teacher: args.teacher.clone(),
        device: args.device.clone(),
        latency_samples: args.latency_samples,
        blind_spots: args.blind_spots,
    };
    let eval::EvalOutcome {
        report,
        blind_spots: spots,
    } = eval::evaluate_model(&loc, &spec).await?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some((unsure, apart)) = &spots {
            v["blind_spots"] =
                serde_json::json!({"teacher_least_confident": unsure, "most_disagreement": apart});
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(&[report]);
        if let Some((unsure, apart)) = spots {
            println!("\nteacher least confident (label these next):");
            for s in unsure {
                println!(
                    "  {:<12} {:.2} {:<10} {}",
                    s.id,
                    s.teacher_confidence,
                    s.teacher,
                    clip(&s.text, 90)
                );
            }
            println!("\nteacher and model disagree most:");
            for s in apart {
                println!(
                    "  {:<12} {:.2} teacher {:<8} model {:<8} {}",
                    s.id,
                    s.disagreement,
                    s.teacher,
                    s.student,
                    clip(&s.text, 70)
                );
            }
        }
    }
    Ok(())
}

/// `distill eval --held-out`: a causal LM against the cached teacher.
async fn run_eval_lm(
    loc: &distill_cache::store::Location,
    args: &EvalArgs,
    held_out: &Path,
) -> anyhow::Result<()> {
    use distill_student_trainer::lm;
    let ids = labels::read_ids(held_out)?;
    let q = distill_tasks::task::EntryQuery {
        corpus: args.corpus.as_deref(),
        teacher: args.teacher_fingerprint.as_deref(),
        output: args.output.as_deref(),
        kind: None,
    };
    let r = lm::evaluate_model(loc, &args.model, &q, &ids, &args.device).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_lm_table(std::slice::from_ref(&r));
    }
    Ok(())
}

pub fn print_lm_table(rows: &[distill_student_trainer::lm::LmEvalReport]) {
    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>10} {:>12} {:>11} {:>9}",
        "model",
        "perplexity",
        "KL (nats)",
        "top-1",
        "tok/s b=1",
        "tok/s b=16",
        "parameters",
        "size"
    );
    for r in rows {
        println!(
            "{:<34} {:>10.2} {:>10.3} {:>7.1}% {:>10.0} {:>12.0} {:>11} {:>9}",
            clip(&r.model, 34),
            r.report.perplexity,
            r.report.kl_to_teacher,
            100.0 * r.report.top1_agreement,
            r.tokens_per_second_batch1,
            r.tokens_per_second_batched,
            crate::report::count(r.parameters),
            crate::report::bytes(r.bytes)
        );
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

pub fn print_table(rows: &[EvalReport]) {
    // As wide as the longest model name: rows that differ only at the end stay apart.
    let w = rows
        .iter()
        .map(|r| r.model.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<w$} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>10} {:>11} {:>9}",
        "model",
        "accuracy",
        "macro-F1",
        "agree",
        "ECE",
        "p50 ms",
        "p99 ms",
        "texts/s",
        "parameters",
        "size"
    );
    for r in rows {
        println!(
            "{:<w$} {:>7.1}% {:>8.3} {:>7.1}% {:>6.3} {:>9.2} {:>9.2} {:>10.0} {:>11} {:>9}",
            r.model,
            100.0 * r.accuracy,
            r.macro_f1,
            100.0 * r.agreement,
            r.ece,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.throughput,
            crate::report::count(r.parameters),
            crate::report::bytes(r.bytes)
        );
    }
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model directory.
    #[arg(long, env = "DISTILL_MODEL")]
    pub model: PathBuf,
    /// Input: JSONL (objects with a text field) or plain text lines; `-` for standard input.
    #[arg(long, env = "DISTILL_INPUT", default_value = "-")]
    pub input: String,
    /// Output JSONL; `-` for standard output.
    #[arg(long, env = "DISTILL_PREDICTIONS", default_value = "-")]
    pub output: String,
    #[arg(long, env = "DISTILL_TEXT_FIELD", default_value = "text")]
    pub text_field: String,
    #[arg(long, env = "DISTILL_ID_FIELD", default_value = "id")]
    pub id_field: String,
    /// If the input has this field, it must be a label the model knows; accuracy is reported.
    #[arg(long, env = "DISTILL_LABEL_FIELD", default_value = "label")]
    pub label_field: String,
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Texts per model call.
    #[arg(long, env = "DISTILL_PREDICT_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// Causal LMs: also continue each text greedily by this many tokens.
    #[arg(long, env = "DISTILL_GENERATE", default_value_t = 0)]
    pub generate: usize,
}

impl PredictArgs {
    fn spec(&self) -> PredictSpec {
        PredictSpec {
            model: self.model.clone(),
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
            label_field: self.label_field.clone(),
            device: self.device.clone(),
            batch: self.batch,
            generate: self.generate,
        }
    }
}

pub async fn run_predict(args: PredictArgs) -> anyhow::Result<()> {
    let spec = args.spec();
    let name = match args.input.as_str() {
        "-" => "<stdin>".to_owned(),
        other => other.to_owned(),
    };
    let inputs = if args.input == "-" {
        predict::read_inputs(std::io::stdin().lock(), &name, &spec)?
    } else {
        let file = std::fs::File::open(&args.input).with_context(|| format!("opening {name}"))?;
        predict::read_inputs(std::io::BufReader::new(file), &name, &spec)?
    };
    let p = tokio::task::spawn_blocking(move || predict::predict(&spec, &inputs, &name)).await??;
    let lines = p
        .lines
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    predict::write_lines(&args.output, &lines)?;
    if p.judged > 0 {
        eprintln!(
            "accuracy on the {} labeled inputs: {:.1}%",
            p.judged,
            100.0 * p.right as f64 / p.judged as f64
        );
    }
    Ok(())
}
