//! `distill eval` and `distill predict`: measure a model on labeled examples; label new texts.

use anyhow::Context;
use clap::Args;
use distill_cache::store;
use distill_student_trainer::data::{Example, TrainData};
use distill_student_trainer::eval::{self, EvalReport};
use distill_student_trainer::labels::{self, Fields};
use distill_student_trainer::metrics::argmax;
use distill_student_trainer::model::{dir_bytes, Predictor};
use distill_teacher::DeviceSpec;
use std::io::{BufRead, Write};
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

/// The labeled examples of `path` ([`eval::labeled_examples`]: cached ids from the cache, rows with
/// their own text through the task's teacher).
pub async fn labeled_examples(
    loc: &distill_cache::store::Location,
    task: &distill_cache::task::TaskRecord,
    path: &Path,
    fields: &Fields,
    labels: &[String],
    teacher: &eval::TeacherSource,
) -> anyhow::Result<Vec<Example>> {
    let gold = labels::read(path, fields)?;
    Ok(eval::labeled_examples(
        loc,
        task,
        &gold,
        &path.display().to_string(),
        labels,
        teacher,
    )
    .await?)
}

pub fn parameters(model: &Predictor, dir: &Path) -> u64 {
    match model {
        Predictor::Ngram(m) => m.parameters() as u64,
        _ => safetensors_parameters(dir),
    }
}

/// Parameters stored in a directory's `model.safetensors` (from its header).
pub fn safetensors_parameters(dir: &Path) -> u64 {
    candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
        .map(|t| t.values().map(|v| v.elem_count() as u64).sum())
        .unwrap_or(0)
}

pub async fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let loc = store::open(&args.cache, false)?;
    if let Some(held_out) = &args.held_out {
        return run_eval_lm(&loc, &args, held_out).await;
    }
    let (Some(task_name), Some(labels_path)) = (&args.task, &args.labels) else {
        anyhow::bail!("give --task and --labels (classifiers), or --held-out (causal LMs)");
    };
    let task = distill_cache::task::read_task(&loc, task_name).await?;
    let model = {
        let (dir, device, t) = (args.model.clone(), args.device.clone(), task.clone());
        tokio::task::spawn_blocking(move || Predictor::load_for_task(&dir, &device, &t)).await??
    };
    if model.labels() != task.labels.as_slice() {
        anyhow::bail!(
            "model {} predicts [{}] but task {} has labels [{}]: evaluate it on its own task",
            args.model.display(),
            model.labels().join(", "),
            task.name,
            task.labels.join(", ")
        );
    }
    let fields = Fields {
        id: args.id_field.clone(),
        label: args.label_field.clone(),
        text_rows: true,
        ..Default::default()
    };
    let source = eval::TeacherSource {
        model: args.teacher.clone(),
        device: args.device.clone(),
    };
    let examples =
        labeled_examples(&loc, &task, labels_path, &fields, &task.labels, &source).await?;
    let params = parameters(&model, &args.model);
    let bytes = dir_bytes(&args.model);
    let name = args.model.display().to_string();
    let samples = args.latency_samples;
    let k = args.blind_spots;
    let all = if k > 0 {
        Some(TrainData::open(&loc, &task, Default::default(), 0).await?)
    } else {
        None
    };
    let (report, spots) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let r = eval::evaluate(&name, &model, &examples, samples, params, bytes)?;
        let spots = match all {
            Some(data) => Some(eval::blind_spots(&model, &data, k)?),
            None => None,
        };
        Ok((r, spots))
    })
    .await??;
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
    let q = distill_student_trainer::task::EntryQuery {
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

/// `distill predict` with a causal LM: each text's log-likelihood and perplexity (and continuation).
async fn predict_lm(
    args: &PredictArgs,
    md: distill_cache::model_dir::ModelDir,
) -> anyhow::Result<()> {
    let inputs = read_inputs(args)?;
    let (device, generate) = (args.device.clone(), args.generate);
    let lines = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let t = distill_teacher::Teacher::load(&md, &device)?;
        let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
        let scored = distill_student_trainer::lm::score_texts(&t, &texts, generate)?;
        inputs
            .iter()
            .zip(scored)
            .map(|(i, s)| {
                let mut v = serde_json::to_value(&s)?;
                v["id"] = i.id.clone().into();
                Ok(serde_json::to_string(&v)?)
            })
            .collect()
    })
    .await??;
    write_lines(&args.output, lines)
}

/// Writes JSONL to a file (aside, then renamed) or standard output.
pub fn write_lines(output: &str, lines: Vec<String>) -> anyhow::Result<()> {
    let mut body = lines.join("\n");
    body.push('\n');
    if output == "-" {
        std::io::stdout().write_all(body.as_bytes())?;
    } else {
        // Written aside and renamed: a reader never sees half the predictions.
        let tmp = format!("{output}.partial-{}", std::process::id());
        std::fs::write(&tmp, body).with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, output).with_context(|| format!("writing {output}"))?;
    }
    Ok(())
}

fn input_name(input: &str) -> String {
    if input == "-" {
        "<stdin>".to_owned()
    } else {
        input.to_owned()
    }
}

struct Input {
    id: String,
    text: String,
    label: Option<String>,
    line: u64,
}

fn read_inputs(args: &PredictArgs) -> anyhow::Result<Vec<Input>> {
    let reader: Box<dyn BufRead> = if args.input == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input))?,
        ))
    };
    let name = if args.input == "-" {
        "<stdin>".to_owned()
    } else {
        args.input.clone()
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.with_context(|| format!("{name}, line {n}"))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{name}, line {n}: not JSON"))?;
            let text = v
                .get(&args.text_field)
                .and_then(|t| t.as_str())
                .with_context(|| {
                    format!(
                        "{name}, line {n}: no string field {:?} (use --text-field)",
                        args.text_field
                    )
                })?;
            let id = match v.get(&args.id_field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(x)) => x.to_string(),
                _ => format!("line-{n}"),
            };
            out.push(Input {
                id,
                text: text.to_owned(),
                label: match v.get(&args.label_field) {
                    Some(serde_json::Value::String(l)) => Some(l.clone()),
                    Some(serde_json::Value::Number(l)) => Some(l.to_string()),
                    _ => None,
                },
                line: n,
            });
        } else {
            out.push(Input {
                id: format!("line-{n}"),
                text: line,
                label: None,
                line: n,
            });
        }
    }
    Ok(out)
}

pub async fn run_predict(args: PredictArgs) -> anyhow::Result<()> {
    let name = args.model.display().to_string();
    if let Ok(md) = distill_cache::model_dir::ModelDir::inspect(&name, &args.model) {
        if md.family == distill_cache::model_dir::Family::Llama {
            return predict_lm(&args, md).await;
        }
    }
    let model = {
        let (dir, device) = (args.model.clone(), args.device.clone());
        tokio::task::spawn_blocking(move || Predictor::load(&dir, &device)).await??
    };
    let inputs = read_inputs(&args)?;
    let labels = model.labels().to_vec();
    for inp in &inputs {
        if let Some(l) = &inp.label {
            if !labels.contains(l) {
                anyhow::bail!(
                    "{}, line {}: label {l:?} is not one the model knows ({}); drop the field or use --label-field",
                    input_name(&args.input),
                    inp.line,
                    labels.join(", ")
                );
            }
        }
    }
    let batch = args.batch.max(1);
    let lines = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<String>, usize, usize)> {
        let mut lines = Vec::with_capacity(inputs.len());
        let (mut right, mut judged) = (0, 0);
        for chunk in inputs.chunks(batch) {
            let texts: Vec<&str> = chunk.iter().map(|i| i.text.as_str()).collect();
            let probs = distill_student_trainer::metrics::probabilities(&model.logits(&texts)?);
            for (inp, p) in chunk.iter().zip(probs) {
                let k = argmax(&p);
                if let Some(l) = &inp.label {
                    judged += 1;
                    right += (l == &labels[k]) as usize;
                }
                let probabilities: serde_json::Map<String, serde_json::Value> =
                    labels.iter().zip(&p).map(|(l, v)| (l.clone(), serde_json::json!(v))).collect();
                lines.push(serde_json::to_string(&serde_json::json!({
                    "id": inp.id, "label": labels[k], "probability": p[k], "probabilities": probabilities,
                }))?);
            }
        }
        Ok((lines, right, judged))
    })
    .await??;
    let (lines, right, judged) = lines;
    write_lines(&args.output, lines)?;
    if judged > 0 {
        eprintln!(
            "accuracy on the {judged} labeled inputs: {:.1}%",
            100.0 * right as f64 / judged as f64
        );
    }
    Ok(())
}
