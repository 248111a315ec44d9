//! Early stopping for the transformer student. A slice of the task's soft-labeled rows is held out
//! (`distill_tasks::data::Holdout`; never gold rows, never trained on); after each distillation epoch
//! the student is scored there by the mean KL divergence from the teacher's distribution (at
//! temperature 1, whatever the training temperature). The best epoch's weights are kept, training
//! stops after `patience` epochs without a lower score, and the best weights are what is exported.
//! The best epoch, its score and its weights travel in the phase's checkpoint (tensors named `best.*`),
//! so a resumed run stops where an uninterrupted one would and exports the same weights.

use crate::checkpoint::State;
use crate::kd::KdWeights;
use crate::transformer::{kd_loss, make_batch, tokenized, Batch, TransformerStudent};
use crate::Result;
use candle_core::{Device, Tensor};
use distill_tasks::data::Example;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The held-out rows, tokenized and batched once.
pub struct Validation {
    batches: Vec<(Batch, usize)>,
    rows: usize,
}

impl std::fmt::Debug for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validation")
            .field("rows", &self.rows)
            .finish()
    }
}

impl Validation {
    /// Batches of `batch` rows, sorted by length (little padding). `None` without rows.
    pub fn new(
        tok: &tokenizers::Tokenizer,
        examples: &[Example],
        classes: usize,
        batch: usize,
        device: &Device,
    ) -> Result<Option<Self>> {
        if examples.is_empty() {
            return Ok(None);
        }
        let rows = tokenized(tok, examples)?;
        let batches = rows
            .chunks(batch.max(1))
            .map(|c| Ok((make_batch(c, classes, device)?, c.len())))
            .collect::<Result<_>>()?;
        Ok(Some(Self {
            batches,
            rows: examples.len(),
        }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The student's mean KL divergence from the teacher over the held-out rows (nats).
    pub fn loss(&self, student: &TransformerStudent) -> Result<f64> {
        let kl = KdWeights {
            temperature: 1.0,
            soft: 1.0,
            alpha: 0.0,
        };
        let mut sum = 0f64;
        for (b, n) in &self.batches {
            let (_, logits) = student.forward(&b.ids, &b.mask)?;
            sum += kd_loss(&logits, b, kl)?.to_scalar::<f32>()? as f64 * *n as f64;
        }
        Ok(sum / self.rows as f64)
    }
}

/// The best epoch so far: epochs completed when it was scored, and its held-out loss.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Best {
    pub epoch: usize,
    pub loss: f64,
}

/// Prefix of the best weights' names in a checkpoint's tensors; the epoch and loss are
/// `best.epoch` (u32) and `best.loss` (f64), which no weight is named.
const BEST: &str = "best.";

/// The best epoch and its weights.
#[derive(Debug, Default)]
pub struct Tracker {
    pub best: Option<Best>,
    weights: HashMap<String, Tensor>,
}

impl Tracker {
    /// Records the score after `epoch` epochs; true when training should stop (`patience` epochs
    /// without a lower loss).
    pub fn observe(
        &mut self,
        student: &TransformerStudent,
        epoch: usize,
        loss: f64,
        patience: usize,
    ) -> Result<bool> {
        if self.best.is_none_or(|b| loss < b.loss) {
            self.best = Some(Best { epoch, loss });
            self.weights = student.snapshot()?;
        }
        let since = epoch - self.best.map(|b| b.epoch).unwrap_or(epoch);
        Ok(patience > 0 && since >= patience)
    }

    /// Scores the student after `epoch` epochs on `v` and records it: the held-out loss, whether it
    /// is the best so far, and whether training should stop.
    pub fn score(
        &mut self,
        v: &Validation,
        student: &TransformerStudent,
        epoch: usize,
        patience: usize,
    ) -> Result<(f64, bool, bool)> {
        let loss = v.loss(student)?;
        let stop = self.observe(student, epoch, loss, patience)?;
        let best = self.best.is_some_and(|b| b.epoch == epoch);
        tracing::info!(
            epoch,
            held_out_kl = loss,
            rows = v.rows,
            best,
            stop,
            "held-out score"
        );
        Ok((loss, best, stop))
    }

    /// Puts the best weights back into the student (nothing if none were recorded).
    pub fn restore(&self, student: &TransformerStudent) -> Result<()> {
        if !self.weights.is_empty() {
            student.load_snapshot(&self.weights)?;
        }
        Ok(())
    }

    /// Adds the best epoch, loss and weights to a checkpoint's tensors.
    pub fn save_into(&self, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
        let Some(best) = self.best else {
            return Ok(());
        };
        let cpu = &Device::Cpu;
        tensors.insert(
            format!("{BEST}epoch"),
            Tensor::new(&[best.epoch as u32], cpu)?,
        );
        tensors.insert(format!("{BEST}loss"), Tensor::new(&[best.loss], cpu)?);
        for (k, t) in &self.weights {
            tensors.insert(format!("{BEST}{k}"), t.clone());
        }
        Ok(())
    }

    /// The tracker a checkpoint holds (none if it holds no best epoch).
    pub fn load(state: &State, student: &TransformerStudent) -> Result<Self> {
        if state.find(&format!("{BEST}epoch")).is_none() {
            return Ok(Self::default());
        }
        let epoch = state.get(&format!("{BEST}epoch"), &[1])?.to_vec1::<u32>()?[0] as usize;
        let loss = state.get(&format!("{BEST}loss"), &[1])?.to_vec1::<f64>()?[0];
        let best = Best { epoch, loss };
        let mut weights = HashMap::new();
        for (k, t) in student.snapshot()? {
            let saved = state.get(&format!("{BEST}{k}"), t.dims())?;
            weights.insert(k, saved.clone());
        }
        Ok(Self {
            best: Some(best),
            weights,
        })
    }
}
