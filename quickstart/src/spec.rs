//! What the quickstart runs: the corpus, teachers, draws and students (serde-able, with defaults).

use distill_student_trainer::finetune::Objective;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The quickstart's settings. `Default` is the README's run on the fetched assets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuickstartSpec {
    /// The unlabeled corpus (JSONL with id and text).
    pub corpus: String,
    /// Gold labels with a label (fresh / rotten / plot) and a group (movie) per id.
    pub gold: PathBuf,
    /// The encoder teacher.
    pub teacher: String,
    /// The cache store.
    pub store: String,
    /// Where models, splits and reports go.
    pub out: PathBuf,
    /// Draws of gold labels (the targets are means over 5).
    pub draws: usize,
    /// Gold labels per draw.
    pub gold_count: usize,
    /// Share of groups (movies) held out for testing.
    pub test_share: f64,
    pub group_field: String,
    pub seed: u64,
    /// Epochs of transformer distillation per draw (0 skips the transformer student).
    pub transformer_epochs: usize,
    /// Epochs of task-agnostic embedding mimicry (once, shared by every draw and task).
    pub mimic_epochs: usize,
    pub layers: usize,
    pub max_seq: usize,
    /// Keep the test movies' texts out of distillation too.
    pub exclude_test_texts: bool,
    /// Also train a transformer student for the second task.
    pub second_task_transformer: bool,
    /// Texts timed one by one for latency.
    pub latency_samples: usize,
    /// Token budget of teacher batches.
    pub max_batch_tokens: usize,
    /// A decoder LM prompted as a second sentiment teacher (empty: skip it).
    pub llm_teacher: String,
    /// More gold labels per draw, at random or suggested, to compare the two (0: skip).
    pub suggest: usize,
    /// Draws of the labeling loop; the first `draws` of them are the student draws.
    pub loop_draws: usize,
    /// Fine-tune the teacher on each draw's gold labels with these objectives (empty: skip).
    pub finetune_objectives: Vec<Objective>,
    /// Contrastive fine-tuning: pair iterations per gold label.
    pub finetune_pairs: usize,
    /// Fine-tuning epochs (default: each objective's own).
    pub finetune_epochs: Option<usize>,
    /// Rows of the training movies the LLM labels for distillation, besides the test and gold rows.
    pub llm_rows: usize,
    /// Encoder students of the LLM's task: a pretrained BERT-family encoder with this many of its
    /// layers (evenly spaced) each, distilled without the test texts (empty: none).
    pub llm_encoder_layers: Vec<usize>,
    /// The pretrained encoder those students start from (with its own tokenizer).
    pub encoder_init: String,
    /// Progress bars and a line per step on stderr.
    pub progress: bool,
}

impl Default for QuickstartSpec {
    fn default() -> Self {
        Self {
            corpus: "assets/corpora/rotten-tomatoes/corpus.jsonl".into(),
            gold: "assets/corpora/rotten-tomatoes/gold.jsonl".into(),
            teacher: "assets/models/all-MiniLM-L6-v2".into(),
            store: ".work/cache".into(),
            out: ".work/quickstart".into(),
            draws: 1,
            gold_count: 100,
            test_share: 0.2,
            group_field: "movie".into(),
            seed: 0,
            transformer_epochs: 1,
            mimic_epochs: 1,
            layers: 2,
            max_seq: 128,
            exclude_test_texts: false,
            second_task_transformer: false,
            latency_samples: 200,
            max_batch_tokens: 4096,
            llm_teacher: "assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            suggest: 50,
            loop_draws: 20,
            finetune_objectives: vec![Objective::Classifier],
            finetune_pairs: 5,
            finetune_epochs: None,
            llm_rows: 3000,
            llm_encoder_layers: vec![6, 3],
            encoder_init: "assets/models/all-MiniLM-L6-v2".into(),
            progress: true,
        }
    }
}

impl QuickstartSpec {
    /// Rejects settings that cannot run, naming the flag.
    pub fn validate(&self) -> crate::Result<()> {
        if !(self.test_share > 0.0 && self.test_share < 1.0) {
            return Err(crate::QuickstartError::Invalid(format!(
                "--test-share must be between 0 and 1, not {}",
                self.test_share
            )));
        }
        if self.draws == 0 || self.gold_count < 4 {
            return Err(crate::QuickstartError::Invalid(
                "--draws must be at least 1 and --gold-count at least 4".into(),
            ));
        }
        Ok(())
    }
}
