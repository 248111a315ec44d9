//! Evaluating a model on labeled examples, and finding the examples worth labeling next.

use crate::data::Example;
use crate::metrics::{accuracy, argmax, ece, macro_f1, probabilities, quantile};
use crate::model::Predictor;
use crate::Result;
use serde::Serialize;
use std::time::Instant;

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
    data: &crate::data::TrainData,
    k: usize,
) -> Result<(Vec<BlindSpot>, Vec<BlindSpot>)> {
    let labels = model.labels().to_vec();
    let (mut unsure, mut apart): (Vec<BlindSpot>, Vec<BlindSpot>) = (Vec::new(), Vec::new());
    data.for_each_shard(|examples| {
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
