//! Evaluating a model on labeled examples, and finding the examples worth labeling next.

use crate::model::Predictor;
use crate::{Result, StudentError};
use distill_cache::model_dir::{Head, ModelDir};
use distill_cache::spec::OutputSpec;
use distill_cache::store::Location;
use distill_cache::task::{TaskKind, TaskRecord};
use distill_tasks::data::{Example, Selection, TrainData};
use distill_tasks::labels::Gold;
use distill_tasks::metrics::{accuracy, argmax, ece, macro_f1, probabilities, quantile};
use distill_teacher::{DeviceSpec, Teacher};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Where the task's teacher comes from when labeled rows are not in the cache.
#[derive(Clone, Debug)]
pub struct TeacherSource {
    /// The teacher's model directory or file (`None`: where the cache says it was loaded from).
    pub model: Option<String>,
    pub device: DeviceSpec,
}

/// The task's teacher as a classifier of new texts — the model that labeled the task's entry, with
/// the task's head, calibration or prompt on top — checked against the task's teacher fingerprint.
pub async fn task_teacher(
    loc: &Location,
    task: &TaskRecord,
    source: &TeacherSource,
) -> Result<Predictor> {
    let model = match &source.model {
        Some(m) => m.clone(),
        None => {
            distill_cache::catalog::read_teacher(loc, &task.teacher)
                .await?
                .source
        }
    };
    let spec = distill_cache::catalog::read_output(loc, &task.teacher, &task.base_output)
        .await?
        .ok_or_else(|| {
            StudentError::Invalid(format!(
                "task {}: its entry {} has no output description in the cache",
                task.name,
                task.base_output.short()
            ))
        })?;
    let md = ModelDir::resolve(&model).await?;
    let device = source.device.clone();
    let teacher = tokio::task::spawn_blocking(move || Teacher::load(&md, &device))
        .await
        .map_err(|e| StudentError::Invalid(format!("loading the teacher panicked: {e}")))??;
    if teacher.info().fingerprint != task.teacher {
        return Err(StudentError::Model {
            path: model,
            reason: format!(
                "fingerprint {}, but task {} was labeled by teacher {}: give that teacher with --teacher",
                teacher.info().fingerprint,
                task.name,
                task.teacher
            ),
        });
    }
    let labels = task.labels.clone();
    let prompt = match &spec {
        OutputSpec::Logits {
            prompt: Some(p), ..
        } => Some(p.clone()),
        _ => None,
    };
    Ok(match (&task.head, prompt, task.kind) {
        (Some(head), Some(p), _) => Predictor::Prompted(Arc::new(teacher), p, head.clone(), labels),
        (Some(head), None, _) => Predictor::TeacherHead(Arc::new(teacher), head.clone(), labels),
        (None, Some(p), _) => {
            // The raw prompted scores.
            let identity =
                distill_tasks::calibrate::identity(labels.len(), vec![0.0; labels.len()]);
            Predictor::Prompted(Arc::new(teacher), p, identity, labels)
        }
        (None, None, TaskKind::Teacher)
            if matches!(teacher.info().head, Head::Classifier { .. }) =>
        {
            Predictor::Bert(Box::new(teacher), labels)
        }
        _ => {
            return Err(StudentError::Invalid(format!(
                "task {} ({}) has no head to apply to its teacher's outputs",
                task.name,
                task.kind.name()
            )))
        }
    })
}

/// The labeled examples of a gold-label file ([`labeled_examples`] over what [`distill_tasks::labels::read`]
/// reads from `path`).
pub async fn labeled_examples_file(
    loc: &Location,
    task: &TaskRecord,
    path: &std::path::Path,
    fields: &distill_tasks::labels::Fields,
    labels: &[String],
    teacher: &TeacherSource,
) -> Result<Vec<Example>> {
    let gold = distill_tasks::labels::read(path, fields)?;
    labeled_examples(
        loc,
        task,
        &gold,
        &path.display().to_string(),
        labels,
        teacher,
    )
    .await
}

/// A model's parameters: the n-gram's own count, else what its `model.safetensors` holds.
pub fn parameters(model: &Predictor, dir: &std::path::Path) -> u64 {
    match model {
        Predictor::Ngram(m) => m.parameters() as u64,
        _ => safetensors_parameters(dir),
    }
}

/// Parameters stored in a directory's `model.safetensors` (0 without one).
pub fn safetensors_parameters(dir: &std::path::Path) -> u64 {
    candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
        .map(|t| t.values().map(|v| v.elem_count() as u64).sum())
        .unwrap_or(0)
}

/// The examples of a labels file, with gold classes in `labels` order and the teacher's task logits:
/// from the cache for ids of the task's corpus, and from the task's teacher ([`task_teacher`], loaded
/// only when needed) for rows that carry their own text and are not in the cache.
pub async fn labeled_examples(
    loc: &Location,
    task: &TaskRecord,
    gold: &[Gold],
    path: &str,
    labels: &[String],
    teacher: &TeacherSource,
) -> Result<Vec<Example>> {
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    for g in gold {
        if !index.contains_key(g.label.as_str()) {
            return Err(StudentError::Line {
                path: path.to_owned(),
                line: g.line,
                reason: format!(
                    "label {:?} is not one the model knows ({})",
                    g.label,
                    labels.join(", ")
                ),
            });
        }
    }
    let ids: HashSet<String> = gold.iter().map(|g| g.id.clone()).collect();
    let data = TrainData::open(loc, task, Default::default(), 0)
        .await?
        .select(Selection::Ids(ids));
    let mut cached: HashMap<String, Example> = tokio::task::spawn_blocking(move || data.collect())
        .await
        .map_err(|e| StudentError::Invalid(format!("reading the cache panicked: {e}")))??
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    // Rows not in the cache must bring their text; the teacher labels them.
    let mut new: Vec<&Gold> = Vec::new();
    for g in gold {
        // A row that brings a text other than the cached one is a new text with a clashing id.
        if let (Some(t), Some(c)) = (&g.text, cached.get(&g.id)) {
            if &c.text != t {
                cached.remove(&g.id);
            }
        }
        if !cached.contains_key(&g.id) {
            if g.text.is_none() {
                return Err(StudentError::Line {
                    path: path.to_owned(),
                    line: g.line,
                    reason: format!(
                        "id {:?} is not in task {}'s corpus ({}): give the row its text in a \"text\" field to evaluate on it",
                        g.id, task.name, task.corpus
                    ),
                });
            }
            new.push(g);
        }
    }
    let mut fresh: HashMap<String, Vec<f32>> = HashMap::new();
    if !new.is_empty() {
        let predictor = task_teacher(loc, task, teacher).await?;
        let texts: Vec<String> = new
            .iter()
            .map(|g| g.text.clone().expect("checked"))
            .collect();
        let logits = tokio::task::spawn_blocking(move || {
            let t: Vec<&str> = texts.iter().map(String::as_str).collect();
            predictor.logits(&t)
        })
        .await
        .map_err(|e| StudentError::Invalid(format!("the teacher panicked: {e}")))??;
        for (g, z) in new.iter().zip(logits) {
            fresh.insert(g.id.clone(), z);
        }
    }
    Ok(gold
        .iter()
        .map(|g| {
            let gold_class = Some(index[g.label.as_str()]);
            match cached.remove(&g.id) {
                Some(e) => Example {
                    gold: gold_class,
                    ..e
                },
                None => Example {
                    id: g.id.clone(),
                    text: g.text.clone().expect("checked"),
                    soft: fresh.remove(&g.id).expect("labeled above"),
                    gold: gold_class,
                    embedding: None,
                },
            }
        })
        .collect())
}

/// What `distill eval` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Share of examples where the model's class is the teacher's (task logits) class.
    pub agreement: f64,
    pub ece: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Texts per second, batched.
    pub throughput: f64,
    pub parameters: u64,
    pub bytes: u64,
}

/// Logits of `texts` and the seconds it took (batched).
pub fn timed_logits(model: &Predictor, texts: &[&str]) -> Result<(Vec<Vec<f32>>, f64)> {
    let start = Instant::now();
    let out = model.logits(texts)?;
    Ok((out, start.elapsed().as_secs_f64()))
}

/// Per-text latency at batch 1 over `texts` (after one warm-up call), in milliseconds.
pub fn latencies(model: &Predictor, texts: &[&str]) -> Result<Vec<f64>> {
    if let Some(t) = texts.first() {
        model.logits(&[t])?;
    }
    let mut out = Vec::with_capacity(texts.len());
    for t in texts {
        let s = Instant::now();
        model.logits(&[t])?;
        out.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Evaluates on examples with gold labels (`gold` must be set on each one used).
pub fn evaluate(
    name: &str,
    model: &Predictor,
    examples: &[Example],
    latency_samples: usize,
    parameters: u64,
    bytes: u64,
) -> Result<EvalReport> {
    let labeled: Vec<&Example> = examples.iter().filter(|e| e.gold.is_some()).collect();
    let texts: Vec<&str> = labeled.iter().map(|e| e.text.as_str()).collect();
    let (logits, secs) = timed_logits(model, &texts)?;
    let pred: Vec<usize> = logits.iter().map(|z| argmax(z)).collect();
    let gold: Vec<usize> = labeled.iter().map(|e| e.gold.expect("filtered")).collect();
    let teacher: Vec<usize> = labeled.iter().map(|e| argmax(&e.soft)).collect();
    let lat = latencies(model, &texts[..texts.len().min(latency_samples)])?;
    Ok(EvalReport {
        model: name.to_owned(),
        examples: labeled.len(),
        accuracy: accuracy(&pred, &gold),
        macro_f1: macro_f1(&pred, &gold, model.labels().len()),
        agreement: accuracy(&pred, &teacher),
        ece: ece(&probabilities(&logits), &gold, 15),
        latency_p50_ms: quantile(&lat, 0.5),
        latency_p99_ms: quantile(&lat, 0.99),
        throughput: if secs > 0.0 {
            texts.len() as f64 / secs
        } else {
            0.0
        },
        parameters,
        bytes,
    })
}

/// Evaluates a teacher whose outputs on the examples are already cached (each example's `soft` is
/// what the model predicts: a prompted LLM's calibrated task logits): accuracy, F1 and calibration from
/// the cache, latency and throughput from a live run on the first `timing_samples` texts.
pub fn evaluate_cached(
    name: &str,
    model: &Predictor,
    examples: &[Example],
    timing_samples: usize,
    parameters: u64,
    bytes: u64,
) -> Result<EvalReport> {
    let labeled: Vec<&Example> = examples.iter().filter(|e| e.gold.is_some()).collect();
    let logits: Vec<Vec<f32>> = labeled.iter().map(|e| e.soft.clone()).collect();
    let pred: Vec<usize> = logits.iter().map(|z| argmax(z)).collect();
    let gold: Vec<usize> = labeled.iter().map(|e| e.gold.expect("filtered")).collect();
    let sample: Vec<&str> = labeled
        .iter()
        .take(timing_samples)
        .map(|e| e.text.as_str())
        .collect();
    let (_, secs) = timed_logits(model, &sample)?;
    let lat = latencies(model, &sample)?;
    Ok(EvalReport {
        model: name.to_owned(),
        examples: labeled.len(),
        accuracy: accuracy(&pred, &gold),
        macro_f1: macro_f1(&pred, &gold, model.labels().len()),
        agreement: 1.0,
        ece: ece(&probabilities(&logits), &gold, 15),
        latency_p50_ms: quantile(&lat, 0.5),
        latency_p99_ms: quantile(&lat, 0.99),
        throughput: if secs > 0.0 {
            sample.len() as f64 / secs
        } else {
            0.0
        },
        parameters,
        bytes,
    })
}

/// One example worth labeling next.
#[derive(Clone, Debug, Serialize)]
pub struct BlindSpot {
    pub id: String,
    pub text: String,
    pub teacher: String,
    pub teacher_confidence: f32,
    pub student: String,
    /// Total-variation distance between teacher and student probabilities.
    pub disagreement: f32,
}

/// The `k` examples where the teacher is least confident and the `k` where teacher and model
/// disagree most, over every row of `data`, streamed shard by shard (memory: one shard and 2·k spots).
pub fn blind_spots(
    model: &Predictor,
    data: &distill_tasks::data::TrainData,
    k: usize,
) -> Result<(Vec<BlindSpot>, Vec<BlindSpot>)> {
    let labels = model.labels().to_vec();
    let (mut unsure, mut apart): (Vec<BlindSpot>, Vec<BlindSpot>) = (Vec::new(), Vec::new());
    data.for_each_shard::<crate::StudentError>(|examples| {
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let student = probabilities(&model.logits(&texts)?);
        for (e, s) in examples.iter().zip(&student) {
            let t = probabilities(std::slice::from_ref(&e.soft)).remove(0);
            let (ks, kt) = (argmax(s), argmax(&t));
            let spot = BlindSpot {
                id: e.id.clone(),
                text: e.text.clone(),
                teacher: labels[kt].clone(),
                teacher_confidence: t[kt],
                student: labels[ks].clone(),
                disagreement: 0.5 * s.iter().zip(&t).map(|(a, b)| (a - b).abs()).sum::<f32>(),
            };
            unsure.push(spot.clone());
            apart.push(spot);
        }
        unsure.sort_by(|a, b| a.teacher_confidence.total_cmp(&b.teacher_confidence));
        unsure.truncate(k);
        apart.sort_by(|a, b| b.disagreement.total_cmp(&a.disagreement));
        apart.truncate(k);
        Ok(())
    })?;
    Ok((unsure, apart))
}

/// `distill eval` of a classifier: which model, on which task's labeled examples.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// A distill student, a BertForSequenceClassification checkpoint, or the task's embedding
    /// teacher (evaluated with the task's head).
    pub model: std::path::PathBuf,
    pub task: String,
    /// Labeled examples: ids of the task's corpus, or rows with their own text.
    pub labels: std::path::PathBuf,
    pub fields: distill_tasks::labels::Fields,
    /// The task's teacher, for rows whose texts are not in the cache (default: the cache's).
    pub teacher: Option<String>,
    pub device: DeviceSpec,
    /// Texts timed one at a time for the latency quantiles.
    pub latency_samples: usize,
    /// Corpus examples worth labeling next, listed two ways (0: none; reads the whole task).
    pub blind_spots: usize,
}

/// What `distill eval` reports: the figures, and the blind spots asked for (the teacher's least
/// confident rows, the rows where teacher and model are furthest apart).
#[derive(Debug, Serialize)]
pub struct EvalOutcome {
    pub report: EvalReport,
    pub blind_spots: Option<(Vec<BlindSpot>, Vec<BlindSpot>)>,
}

/// Evaluates the spec's model on its task's labeled examples.
pub async fn evaluate_model(loc: &Location, spec: &EvalSpec) -> Result<EvalOutcome> {
    let task = distill_cache::task::read_task(loc, &spec.task).await?;
    let model = Predictor::load_for_task_async(&spec.model, &spec.device, &task).await?;
    if model.labels() != task.labels.as_slice() {
        return Err(StudentError::Invalid(format!(
            "model {} predicts [{}] but task {} has labels [{}]: evaluate it on its own task",
            spec.model.display(),
            model.labels().join(", "),
            task.name,
            task.labels.join(", ")
        )));
    }
    let source = TeacherSource {
        model: spec.teacher.clone(),
        device: spec.device.clone(),
    };
    let fields = &spec.fields;
    let examples =
        labeled_examples_file(loc, &task, &spec.labels, fields, &task.labels, &source).await?;
    let params = parameters(&model, &spec.model);
    let bytes = crate::model::dir_bytes(&spec.model);
    let (name, samples, k) = (
        spec.model.display().to_string(),
        spec.latency_samples,
        spec.blind_spots,
    );
    let all = match k {
        0 => None,
        _ => Some(TrainData::open(loc, &task, Default::default(), 0).await?),
    };
    tokio::task::spawn_blocking(move || -> Result<EvalOutcome> {
        let report = evaluate(&name, &model, &examples, samples, params, bytes)?;
        let blind_spots = match all {
            Some(data) => Some(blind_spots(&model, &data, k)?),
            None => None,
        };
        Ok(EvalOutcome {
            report,
            blind_spots,
        })
    })
    .await
    .map_err(|e| StudentError::Invalid(format!("evaluating: {e}")))?
}
