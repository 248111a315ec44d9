//! The BERT encoder, written for inference throughput on length-sorted batches.
//!
//! Same numerics as Hugging Face `BertModel` (and candle-transformers' port), organised for speed:
//! every linear layer runs on the flattened `[batch × tokens, hidden]` matrix (one large GEMM instead of
//! a batch of small ones), Q, K and V come from one fused projection, weights are stored transposed and
//! contiguous, and layer norm / softmax use candle's fused kernels. Dropout is absent (inference only).
//! Tensor names follow HF checkpoints, with or without the `bert.` prefix.

use crate::cpu::{with_host, zeros, CpuAttention};
use crate::linear::{Epilogue, Linear};
use crate::model::{Model, ModelShape};
use crate::norm::{Norm, NormKind};
use crate::{Result, TeacherError};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::Deserialize;

/// The fields of `config.json` the encoder needs.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

#[derive(Clone, Copy, Debug)]
enum Act {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Config {
    fn act(&self) -> std::result::Result<Act, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Act::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Act::GeluTanh),
            "relu" => Ok(Act::Relu),
            other => Err(format!(
                "config.json hidden_act {other:?} is not supported (gelu, gelu_new, relu)"
            )),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "config.json hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "config.json position_embedding_type {:?} is not supported (absolute)",
                self.position_embedding_type
            ));
        }
        self.act().map(|_| ())
    }
}

/// A linear layer of a checkpoint: `weight` `[out, in]` and `bias`.
fn dense(vb: &VarBuilder, inp: usize, out: usize) -> candle_core::Result<Linear> {
    Linear::new(&vb.get((out, inp), "weight")?, Some(vb.get(out, "bias")?))
}

/// A LayerNorm of a checkpoint: `weight` (γ) and `bias` (β).
fn layer_norm(vb: &VarBuilder, size: usize, eps: f64) -> candle_core::Result<Norm> {
    Norm::new(
        NormKind::Layer,
        vb.get(size, "weight")?,
        Some(vb.get(size, "bias")?),
        eps,
    )
}

#[derive(Clone, Debug)]
struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    ff_in: Linear,
    ff_out: Linear,
    ff_norm: Norm,
}

/// A BERT encoder with its weights loaded.
#[derive(Clone, Debug)]
pub struct Bert {
    word: Tensor,
    position: Tensor,
    token_type0: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    act: Act,
    pub config: Config,
    /// Weights of the sequence-classification head, when loaded with one.
    classifier: Option<(Linear, Linear)>,
}

/// Loads every tensor of the given safetensors files.
pub fn load_tensors(
    files: &[std::path::PathBuf],
    device: &Device,
) -> candle_core::Result<std::collections::HashMap<String, Tensor>> {
    let mut all = std::collections::HashMap::new();
    for f in files {
        all.extend(candle_core::safetensors::load(f, device)?);
    }
    Ok(all)
}

impl Bert {
    /// Loads the encoder (and with `num_labels`, the pooler and classifier) from named tensors.
    pub fn load(
        location: &str,
        config: Config,
        tensors: std::collections::HashMap<String, Tensor>,
        num_labels: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let model_err = |reason: String| TeacherError::Model {
            location: location.to_owned(),
            reason,
        };
        config.validate().map_err(model_err)?;
        let root = VarBuilder::from_tensors(tensors, DType::F32, device);
        let vb = if root.contains_tensor("bert.embeddings.word_embeddings.weight") {
            root.pp("bert")
        } else if root.contains_tensor("embeddings.word_embeddings.weight") {
            root.clone()
        } else {
            return Err(model_err("weights have no embeddings.word_embeddings.weight (with or without a bert. prefix): not a BERT checkpoint".into()));
        };
        let misfit = |e: candle_core::Error| {
            model_err(format!(
                "weights do not fit config.json: {}",
                crate::error::without_backtrace(e)
            ))
        };
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        let word = e
            .get((config.vocab_size, h), "word_embeddings.weight")
            .map_err(misfit)?;
        let position = e
            .get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )
            .map_err(misfit)?;
        let token_type = e
            .get((config.type_vocab_size, h), "token_type_embeddings.weight")
            .map_err(misfit)?;
        let emb_norm = layer_norm(&e.pp("LayerNorm"), h, config.layer_norm_eps).map_err(misfit)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let q = dense(&a.pp("self.query"), h, h).map_err(misfit)?;
            let k = dense(&a.pp("self.key"), h, h).map_err(misfit)?;
            let v = dense(&a.pp("self.value"), h, h).map_err(misfit)?;
            layers.push(Layer {
                qkv: Linear::fused(&[q, k, v]).map_err(misfit)?,
                attn_out: dense(&a.pp("output.dense"), h, h).map_err(misfit)?,
                attn_norm: layer_norm(&a.pp("output.LayerNorm"), h, config.layer_norm_eps)
                    .map_err(misfit)?,
                ff_in: dense(&l.pp("intermediate.dense"), h, config.intermediate_size)
                    .map_err(misfit)?,
                ff_out: dense(&l.pp("output.dense"), config.intermediate_size, h)
                    .map_err(misfit)?,
                ff_norm: layer_norm(&l.pp("output.LayerNorm"), h, config.layer_norm_eps)
                    .map_err(misfit)?,
            });
        }
        let classifier = match num_labels {
            None => None,
            Some(n) => Some((
                dense(&vb.pp("pooler.dense"), h, h).map_err(misfit)?,
                dense(&root.pp("classifier"), h, n).map_err(misfit)?,
            )),
        };
        Ok(Self {
            word,
            position,
            token_type0: token_type.i(0).map_err(misfit)?,
            emb_norm,
            layers,
            heads: config.num_attention_heads,
            act: config.act().map_err(model_err)?,
            config,
            classifier,
        })
    }

    /// Encodes a padded batch. `ids`: `[b, t]` u32; `mask`: `[b, t]` f32 (1 real, 0 padding);
    /// `lengths`: the real length of each row (the ones of `mask`, as counts).
    /// Returns token states `[b, t, hidden]`; states at padded positions are unspecified.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        lengths: &[usize],
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.config.hidden_size;
        let hd = h / self.heads;
        let n = b * t;
        let mut x = match self.embed_host(ids)? {
            Some(x) => x,
            None => {
                let x = self
                    .word
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, t, h))?;
                let pos = self
                    .position
                    .narrow(0, 0, t)?
                    .broadcast_add(&self.token_type0)?;
                self.emb_norm
                    .forward(&x.broadcast_add(&pos)?.reshape((n, h))?)?
            }
        };
        // Other devices mask padding with an additive bias (0 real, large negative padding); the CPU
        // kernel skips padded keys instead and needs none.
        let bias = if ids.device().is_cpu() {
            None
        } else {
            Some(((mask.ones_like()? - mask)? * -1e9f64)?.reshape((b, 1, 1, t))?)
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let cpu_attention = CpuAttention {
            batch: b,
            seq: t,
            heads: self.heads,
            lengths: lengths.to_vec(),
            scale: scale as f32,
        };
        for l in &self.layers {
            let qkv = l.qkv.forward(&x)?;
            let ctx = if let Some(bias) = &bias {
                let qkv = qkv
                    .reshape((b, t, 3, self.heads, hd))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()?;
                let q = (qkv.i(0)? * scale)?;
                let scores = q.matmul(&qkv.i(1)?.t()?)?.broadcast_add(bias)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                probs
                    .matmul(&qkv.i(2)?)?
                    .permute((0, 2, 1, 3))?
                    .contiguous()?
                    .reshape((n, h))?
            } else {
                qkv.apply_op1_no_bwd(&cpu_attention)?
            };
            x = l
                .attn_out
                .forward_with(&ctx, Some(&x), Epilogue::Norm(&l.attn_norm))?;
            let inner = match self.act {
                Act::GeluErf => l.ff_in.forward_with(&x, None, Epilogue::GeluErf)?,
                Act::GeluTanh => l.ff_in.forward(&x)?.gelu()?,
                Act::Relu => l.ff_in.forward(&x)?.relu()?,
            };
            x = l
                .ff_out
                .forward_with(&inner, Some(&x), Epilogue::Norm(&l.ff_norm))?;
        }
        x.reshape((b, t, h))
    }

    /// The embedding layer on the CPU, `[b·t, hidden]`: word + (position + token type 0) of each
    /// token, layer-normalised, tokens in parallel on the host (candle's `index_select` runs on one
    /// thread while the other cores wait). `None` off the CPU.
    fn embed_host(&self, ids: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !ids.device().is_cpu() || !self.emb_norm.on_host() {
            return Ok(None);
        }
        let (b, t) = ids.dims2()?;
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary ({vocab} ids)");
        }
        if t > self.config.max_position_embeddings {
            candle_core::bail!(
                "{t} tokens but {} positions",
                self.config.max_position_embeddings
            );
        }
        let x = with_host(&self.word, |word| {
            with_host(&self.position, |pos| {
                with_host(&self.token_type0, |type0| {
                    let mut x = zeros(b * t * h);
                    x.par_chunks_mut(h)
                        .with_min_len(64)
                        .enumerate()
                        .for_each(|(i, row)| {
                            let w = &word[ids[i] as usize * h..][..h];
                            let p = &pos[(i % t) * h..][..h];
                            for (((o, w), p), c) in row.iter_mut().zip(w).zip(p).zip(type0) {
                                *o = w + (p + c);
                            }
                            self.emb_norm.apply(row);
                        });
                    x
                })
            })
        });
        match x.flatten().flatten() {
            Some(x) => Ok(Some(Tensor::from_vec(x, (b * t, h), self.word.device())?)),
            None => Ok(None),
        }
    }

    /// Class logits from token states (`[b, t, hidden]` → `[b, labels]`): pooler (tanh) on the first
    /// token, then the classifier.
    pub fn classify(&self, states: &Tensor) -> candle_core::Result<Tensor> {
        let (pooler, classifier) = self
            .classifier
            .as_ref()
            .expect("loaded with a classification head");
        let cls = states.i((.., 0))?.contiguous()?;
        classifier.forward(&pooler.forward(&cls)?.tanh()?)
    }
}

impl Model for Bert {
    fn shape(&self) -> ModelShape {
        let c = &self.config;
        let (h, i, l) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers);
        let per_layer = 4 * h * h + 2 * h * i;
        let mut parameters = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h
            + l * (per_layer + 9 * h + i);
        if let Some((p, cl)) = &self.classifier {
            parameters += p.parameters() + cl.parameters();
        }
        ModelShape {
            hidden: h,
            layers: l,
            vocab: c.vocab_size,
            parameters: parameters as u64,
            body_flops_per_token: 2.0 * (l * per_layer) as f64,
            attention_flops_per_context_token: 4.0 * (l * h) as f64,
            causal: false,
            lm_head_flops_per_token: 0.0,
        }
    }

    fn hidden_states(&self, ids: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let mask = crate::outputs::padding_mask(ids.dims2()?, lengths, ids.device())?;
        Ok(self.forward(ids, &mask, lengths)?)
    }

    fn class_logits(&self, states: &Tensor) -> Result<Tensor> {
        if self.classifier.is_none() {
            return Err(TeacherError::Config(
                "this BERT model was loaded without its classification head".into(),
            ));
        }
        Ok(self.classify(states)?)
    }
}
