//! The seam every teacher architecture implements: token ids in, final hidden states out, plus the
//! heads the architecture has. The labeling pass, the benchmark and the trainer call only this trait,
//! so a new architecture is one model file behind it (and an output kind where it needs a new one).

use crate::Result;
use candle_core::Tensor;

/// Sizes of a loaded model, for throughput figures and memory estimates.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub hidden: usize,
    pub layers: usize,
    pub vocab: usize,
    /// Every parameter, embeddings and heads included.
    pub parameters: u64,
    /// Matrix-product FLOPs per token of the layers (2 × their weights), without attention.
    pub body_flops_per_token: f64,
    /// Attention FLOPs per token per token of context it attends to (QKᵀ and PV over all heads).
    pub attention_flops_per_context_token: f64,
    /// Whether tokens attend only to earlier tokens (decoders): a row of `l` tokens then costs
    /// `l(l+1)/2` token pairs of attention instead of `l²`.
    pub causal: bool,
    /// FLOPs per position of the output head that maps states to the vocabulary (0 without one).
    pub lm_head_flops_per_token: f64,
}

impl ModelShape {
    /// Useful FLOPs of a forward pass over rows of these lengths (padding not counted), with the
    /// output head applied at `head_positions` positions.
    pub fn forward_flops(&self, lengths: &[usize], head_positions: u64) -> f64 {
        lengths
            .iter()
            .map(|&l| {
                let l = l as f64;
                let pairs = if self.causal {
                    l * (l + 1.0) / 2.0
                } else {
                    l * l
                };
                l * self.body_flops_per_token + pairs * self.attention_flops_per_context_token
            })
            .sum::<f64>()
            + head_positions as f64 * self.lm_head_flops_per_token
    }
}

/// A teacher architecture in candle.
pub trait Model: Send + Sync + std::fmt::Debug {
    fn shape(&self) -> ModelShape;

    /// Final hidden states `[b, t, hidden]` of a right-padded batch: `ids` is `[b, t]` (u32),
    /// `lengths[i]` the real tokens of row `i`. States at padded positions are unspecified. Decoders
    /// return states after their final norm (what the output head reads).
    fn hidden_states(&self, ids: &Tensor, lengths: &[usize]) -> Result<Tensor>;

    /// Class logits `[b, labels]` from hidden states (sequence classifiers only).
    fn class_logits(&self, _states: &Tensor) -> Result<Tensor> {
        Err(crate::TeacherError::Config(
            "this model has no classification head".into(),
        ))
    }

    /// Next-token logits `[n, vocab]` from `n` hidden states `[n, hidden]` (causal LMs only). Callers
    /// pass a chunk of positions at a time, so `batch × positions × vocabulary` never exists at once.
    fn token_logits(&self, _states: &Tensor) -> Result<Tensor> {
        Err(crate::TeacherError::Config(
            "this model has no language-model head".into(),
        ))
    }

    /// The next-token logits of `n` states handed to `each` one slice of the vocabulary at a time:
    /// `(first id, width, [n, width] row-major)`. The default hands out [`Model::token_logits`] whole.
    fn token_logits_sliced(
        &self,
        states: &Tensor,
        each: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let logits = self.token_logits(states)?;
        let width = logits.dim(1)?;
        each(0, width, &logits.flatten_all()?.to_vec1()?);
        Ok(())
    }

    /// Whether [`Model::token_logits_sliced`] hands out slices (never a position's whole logits at
    /// once), so that callers may pass many more positions at a time.
    fn sliced_head(&self) -> bool {
        false
    }

    /// Causal LMs: final states of right-padded rows placed after a shared `past` (a prompt prefix's
    /// keys and values, one per layer), and with `keep_kv` each row's own keys and values per layer, to
    /// continue from. What lets a prompt's shared prefix be computed once.
    fn states_after(
        &self,
        _ids: &Tensor,
        _lengths: &[usize],
        _past: Option<&[crate::cpu::LayerKv]>,
        _keep_kv: bool,
    ) -> Result<(Tensor, Option<Vec<Vec<crate::cpu::LayerKv>>>)> {
        Err(crate::TeacherError::Config(
            "this model cannot continue from a prompt prefix (causal LMs only)".into(),
        ))
    }
}
