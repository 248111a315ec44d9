//! The hashed bag-of-n-grams student (fastText-like) for the smallest machines.
//!
//! Features of a text: lower-cased word unigrams and bigrams and the character trigrams of each word
//! (`<word>`), each hashed (FNV-1a) into one of `buckets` rows of an embedding table. The text's vector
//! is the mean of its rows; a linear layer maps it to class logits. Training uses the distillation
//! loss of [`crate::kd`] with hand-written gradients, AdamW (lazy for embedding rows), warm-up and
//! linear decay, and global-norm clipping.

use crate::checkpoint::{self, Position};
use crate::kd::{kd_loss, KdWeights};
use crate::optim::{clip, lr_at, AdamW, Moments, Step};
use crate::{Result, StudentError};
use candle_core::{Device, Tensor};
use distill_tasks::data::{Example, TrainData};
use distill_tasks::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Shape and featurisation of an n-gram student.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NgramConfig {
    pub buckets: usize,
    pub dim: usize,
    /// Word n-grams up to this length (1 = unigrams only).
    pub word_ngrams: usize,
    /// Character n-gram length inside words (0 = none).
    pub char_ngram: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        Self {
            buckets: 1 << 17,
            dim: 32,
            word_ngrams: 2,
            char_ngram: 3,
        }
    }
}

fn fnv(kind: u8, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ kind as u64;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h = (h ^ 0x1f).wrapping_mul(0x100_0000_01b3);
        }
        for b in p.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// Splits into lower-cased words: runs of letters, digits and apostrophes; other non-space
/// characters are words of their own.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '\'' {
            cur.extend(c.to_lowercase());
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl NgramConfig {
    /// The feature rows of a text (with repeats; never empty: an empty text gets one "empty" row).
    pub fn features(&self, text: &str) -> Vec<u32> {
        let w = words(text);
        let b = self.buckets as u64;
        let mut f = Vec::with_capacity(w.len() * 6);
        for n in 1..=self.word_ngrams.max(1) {
            for win in w.windows(n) {
                let parts: Vec<&str> = win.iter().map(String::as_str).collect();
                f.push((fnv(n as u8, &parts) % b) as u32);
            }
        }
        if self.char_ngram > 0 {
            for word in &w {
                let chars: Vec<char> = format!("<{word}>").chars().collect();
                for win in chars.windows(self.char_ngram) {
                    let s: String = win.iter().collect();
                    f.push((fnv(100, &[&s]) % b) as u32);
                }
            }
        }
        if f.is_empty() {
            f.push((fnv(200, &[]) % b) as u32);
        }
        f
    }
}

/// A trained (or training) n-gram student.
#[derive(Clone, Debug)]
pub struct NgramModel {
    pub config: NgramConfig,
    pub labels: Vec<String>,
    /// `buckets × dim`.
    pub embeddings: Vec<f32>,
    /// `classes × dim`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl NgramModel {
    pub fn new(config: NgramConfig, labels: Vec<String>, seed: u64) -> Self {
        let mut rng = Rng::derive(seed, "ngram-init", 0);
        let a = 1.0 / config.dim as f32;
        let embeddings = (0..config.buckets * config.dim)
            .map(|_| (rng.next_f32() * 2.0 - 1.0) * a)
            .collect();
        let c = labels.len();
        Self {
            weight: vec![0.0; c * config.dim],
            bias: vec![0.0; c],
            embeddings,
            labels,
            config,
        }
    }

    pub fn parameters(&self) -> usize {
        self.embeddings.len() + self.weight.len() + self.bias.len()
    }

    fn hidden(&self, feats: &[u32]) -> Vec<f32> {
        let d = self.config.dim;
        let mut h = vec![0f32; d];
        for &f in feats {
            let row = &self.embeddings[f as usize * d..(f as usize + 1) * d];
            h.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        let inv = 1.0 / feats.len() as f32;
        h.iter_mut().for_each(|v| *v *= inv);
        h
    }

    fn output(&self, h: &[f32]) -> Vec<f32> {
        let d = self.config.dim;
        (0..self.labels.len())
            .map(|c| {
                self.bias[c]
                    + self.weight[c * d..(c + 1) * d]
                        .iter()
                        .zip(h)
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
            })
            .collect()
    }

    /// Class logits of one text.
    pub fn logits(&self, text: &str) -> Vec<f32> {
        self.output(&self.hidden(&self.config.features(text)))
    }
}

/// Gradients of one batch: `(mean loss, [∂W | ∂b], ∂E by row)`.
pub type Gradients = (f32, Vec<f32>, HashMap<u32, Vec<f32>>);

impl NgramModel {
    /// Mean distillation loss of a batch and its gradients (hand-derived; checked against finite
    /// differences in the tests).
    pub fn gradients(&self, batch: &[Example], kd: KdWeights) -> Gradients {
        let d = self.config.dim;
        let classes = self.labels.len();
        let mut g_w = vec![0f32; self.weight.len() + classes];
        let mut g_emb: HashMap<u32, Vec<f32>> = HashMap::new();
        let mut loss = 0.0;
        let mut dz = vec![0f32; classes];
        let scale = 1.0 / batch.len() as f32;
        for ex in batch {
            let feats = self.config.features(&ex.text);
            let h = self.hidden(&feats);
            let z = self.output(&h);
            let teacher = (kd.soft > 0.0).then_some(ex.soft.as_slice());
            loss += kd_loss(&z, teacher, ex.gold, kd, &mut dz) * scale;
            let mut dh = vec![0f32; d];
            for c in 0..classes {
                let g = dz[c] * scale;
                let w = &self.weight[c * d..(c + 1) * d];
                for j in 0..d {
                    g_w[c * d + j] += g * h[j];
                    dh[j] += g * w[j];
                }
                g_w[classes * d + c] += g;
            }
            let inv = 1.0 / feats.len() as f32;
            for &f in &feats {
                let row = g_emb.entry(f).or_insert_with(|| vec![0.0; d]);
                row.iter_mut().zip(&dh).for_each(|(a, b)| *a += b * inv);
            }
        }
        (loss, g_w, g_emb)
    }
}

/// Training options.
#[derive(Clone, Debug)]
pub struct NgramTrainOptions {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub warmup: f64,
    pub clip: f32,
    pub adamw: AdamW,
    pub kd: KdWeights,
    pub seed: u64,
}

impl Default for NgramTrainOptions {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch: 32,
            lr: 0.01,
            warmup: 0.05,
            clip: 5.0,
            adamw: AdamW {
                weight_decay: 0.0,
                ..Default::default()
            },
            kd: KdWeights {
                temperature: 1.0,
                soft: 1.0,
                alpha: 0.5,
            },
            seed: 0,
        }
    }
}

/// What training reports after each batch, and (transformer students with a held-out slice) after
/// each epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepReport {
    pub step: u64,
    pub total: u64,
    pub epoch: usize,
    pub loss: f32,
    pub lr: f64,
    /// At an epoch's end: the held-out score, and whether it is the best so far (the report of no
    /// batch: `loss` and `lr` are the epoch's last).
    pub held_out: Option<(f64, bool)>,
}

const BLOCKS: [&str; 3] = ["embeddings", "weight", "bias"];

fn save_checkpoint(
    dir: &Path,
    model: &NgramModel,
    moments: [&Moments; 3],
    pos: &Position,
) -> Result<()> {
    let t = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu);
    let mut tensors = HashMap::new();
    let params = [&model.embeddings, &model.weight, &model.bias];
    for ((name, p), m) in BLOCKS.iter().zip(params).zip(moments) {
        tensors.insert(name.to_string(), t(p)?);
        tensors.insert(format!("m.{name}"), t(&m.m)?);
        tensors.insert(format!("v.{name}"), t(&m.v)?);
    }
    checkpoint::save(dir, &tensors, pos)
}

/// Restores a checkpoint of the same run into `model` and `moments`.
fn load_checkpoint(
    dir: &Path,
    run: &str,
    model: &mut NgramModel,
    moments: [&mut Moments; 3],
) -> Result<Option<Position>> {
    let Some((pos, state)) = checkpoint::load(dir, run, &Device::Cpu)? else {
        return Ok(None);
    };
    let params = [&mut model.embeddings, &mut model.weight, &mut model.bias];
    for ((name, p), m) in BLOCKS.iter().zip(params).zip(moments) {
        let n = [p.len()];
        *p = state.get(name, &n)?.to_vec1::<f32>()?;
        m.m = state.get(&format!("m.{name}"), &n)?.to_vec1::<f32>()?;
        m.v = state.get(&format!("v.{name}"), &n)?.to_vec1::<f32>()?;
    }
    Ok(Some(pos))
}

/// Trains an n-gram student on `data` (its epochs decide which examples take part). With a
/// `checkpoint` folder, saves after every epoch and resumes from a checkpoint of the same `run`.
pub fn train(
    data: &TrainData,
    config: NgramConfig,
    opts: &NgramTrainOptions,
    checkpoint: Option<(&Path, &str)>,
    mut on_step: impl FnMut(StepReport),
) -> Result<NgramModel> {
    let labels = data.labels.clone();
    let classes = labels.len();
    let mut model = NgramModel::new(config, labels, opts.seed);
    let d = model.config.dim;
    // The number of examples an epoch yields, for the schedule (one streaming pass).
    let n = data.count()?;
    if n == 0 {
        return Err(StudentError::Invalid(
            "no training examples (is every id excluded, or are there no gold labels?)".into(),
        ));
    }
    let steps_per_epoch = n.div_ceil(opts.batch) as u64;
    let total = steps_per_epoch * opts.epochs as u64;
    let warmup = (total as f64 * opts.warmup) as u64;
    let mut m_emb = Moments::new(model.embeddings.len());
    let mut m_w = Moments::new(model.weight.len());
    let mut m_b = Moments::new(classes);
    let mut step = 0u64;
    let mut start = 0;
    if let Some((dir, run)) = checkpoint {
        if let Some(pos) = load_checkpoint(dir, run, &mut model, [&mut m_emb, &mut m_w, &mut m_b])?
        {
            tracing::info!(epoch = pos.epoch, "resuming from checkpoint");
            start = pos.epoch;
            step = pos.step;
        }
    }
    for epoch in start..opts.epochs {
        let mut examples = data.epoch(epoch as u64).peekable();
        while examples.peek().is_some() {
            let batch: Vec<Example> = examples
                .by_ref()
                .take(opts.batch)
                .collect::<distill_tasks::Result<_>>()?;
            let (loss, mut g_w, g_emb) = model.gradients(&batch, opts.kd);
            let mut rows: Vec<(u32, Vec<f32>)> = g_emb.into_iter().collect();
            rows.sort_unstable_by_key(|(r, _)| *r);
            {
                let mut blocks: Vec<&mut [f32]> = vec![g_w.as_mut_slice()];
                blocks.extend(rows.iter_mut().map(|(_, g)| g.as_mut_slice()));
                clip(&mut blocks, opts.clip);
            }
            step += 1;
            let lr = lr_at(opts.lr, step - 1, warmup, total);
            let (w, b) = g_w.split_at(classes * d);
            let at = |decay| Step { lr, t: step, decay };
            opts.adamw
                .update(&mut model.weight, w, &mut m_w, 0, at(true));
            opts.adamw
                .update(&mut model.bias, b, &mut m_b, 0, at(false));
            for (r, g) in &rows {
                let offset = *r as usize * d;
                opts.adamw
                    .update(&mut model.embeddings, g, &mut m_emb, offset, at(false));
            }
            on_step(StepReport {
                step,
                total,
                epoch,
                loss,
                lr,
                held_out: None,
            });
        }
        if let Some((dir, run)) = checkpoint {
            let pos = Position {
                run: run.to_owned(),
                epoch: epoch + 1,
                batch: 0,
                step,
            };
            save_checkpoint(dir, &model, [&m_emb, &m_w, &m_b], &pos)?;
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_deterministic_and_bounded() {
        let c = NgramConfig {
            buckets: 1000,
            ..Default::default()
        };
        let a = c.features("A great film!");
        assert_eq!(a, c.features("a  GREAT film !"));
        assert!(a.iter().all(|&f| f < 1000));
        // 4 words → 4 unigrams + 3 bigrams + trigrams of <a>(1) <great>(5) <film>(4) <!>(1).
        assert_eq!(a.len(), 4 + 3 + 1 + 5 + 4 + 1);
        assert_eq!(c.features("").len(), 1);
        assert_eq!(words("don't stop-now"), ["don't", "stop", "-", "now"]);
    }

    fn example(text: &str, soft: [f32; 2], gold: Option<usize>) -> Example {
        Example {
            id: text.into(),
            text: text.into(),
            soft: soft.to_vec(),
            gold,
            embedding: None,
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let cfg = NgramConfig {
            buckets: 64,
            dim: 4,
            ..Default::default()
        };
        let mut m = NgramModel::new(cfg, vec!["a".into(), "b".into()], 3);
        let mut r = Rng::new(9);
        m.weight.iter_mut().for_each(|w| *w = r.normal() * 0.5);
        let batch = [
            example("good film", [1.0, -0.5], Some(0)),
            example("bad plot twist", [-0.3, 0.8], None),
        ];
        let kd = KdWeights {
            temperature: 2.0,
            soft: 1.0,
            alpha: 0.5,
        };
        let (_, g_w, g_emb) = m.gradients(&batch, kd);
        let loss = |m: &NgramModel| m.gradients(&batch, kd).0 as f64;
        let eps = 1e-2;
        for i in [0, 3, 5] {
            let (mut a, mut b) = (m.clone(), m.clone());
            a.weight[i] += eps;
            b.weight[i] -= eps;
            let num = (loss(&a) - loss(&b)) / (2.0 * eps as f64);
            assert!(
                (num - g_w[i] as f64).abs() < 1e-3,
                "W[{i}]: {num} vs {}",
                g_w[i]
            );
        }
        let (a_b, mut a, mut b) = (g_w[m.weight.len()], m.clone(), m.clone());
        a.bias[0] += eps;
        b.bias[0] -= eps;
        assert!(((loss(&a) - loss(&b)) / (2.0 * eps as f64) - a_b as f64).abs() < 1e-3);
        let (&row, g) = g_emb.iter().next().expect("some rows");
        let (mut a, mut b) = (m.clone(), m.clone());
        a.embeddings[row as usize * 4 + 1] += eps;
        b.embeddings[row as usize * 4 + 1] -= eps;
        let num = (loss(&a) - loss(&b)) / (2.0 * eps as f64);
        assert!(
            (num - g[1] as f64).abs() < 1e-3,
            "E[{row}][1]: {num} vs {}",
            g[1]
        );
    }
}
