//! The BERT encoder, written for inference throughput on length-sorted batches.
//!
//! Same numerics as Hugging Face `BertModel` (and candle-transformers' port), organised for speed:
//! every linear layer runs on the flattened `[batch × tokens, hidden]` matrix (one large GEMM instead of
//! a batch of small ones), Q, K and V come from one fused projection, weights are stored transposed and
//! contiguous, and layer norm / softmax use candle's fused kernels. Dropout is absent (inference only).
//! Tensor names follow HF checkpoints, with or without the `bert.` prefix.

use crate::{Result, WorkerError};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
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

/// `y = x · Wᵀ + b` with `Wᵀ` stored contiguous.
#[derive(Clone, Debug)]
struct Dense {
    wt: Tensor,
    b: Tensor,
}

impl Dense {
    fn load(vb: &VarBuilder, inp: usize, out: usize) -> candle_core::Result<Self> {
        let w = vb.get((out, inp), "weight")?;
        let b = vb.get(out, "bias")?;
        Ok(Self {
            wt: w.t()?.contiguous()?,
            b,
        })
    }

    fn fused(parts: &[Dense]) -> candle_core::Result<Self> {
        let wt = Tensor::cat(&parts.iter().map(|p| &p.wt).collect::<Vec<_>>(), 1)?;
        let b = Tensor::cat(&parts.iter().map(|p| &p.b).collect::<Vec<_>>(), 0)?;
        Ok(Self { wt, b })
    }

    /// `x`: `[n, in]` → `[n, out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.wt)?.broadcast_add(&self.b)
    }
}

#[derive(Clone, Debug)]
struct Norm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: &VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: vb.get(size, "weight")?,
            beta: vb.get(size, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}

#[derive(Clone, Debug)]
struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    ff_in: Dense,
    ff_out: Dense,
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
    classifier: Option<(Dense, Dense)>,
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
        let model_err = |reason: String| WorkerError::Model {
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
        let emb_norm = Norm::load(&e.pp("LayerNorm"), h, config.layer_norm_eps).map_err(misfit)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let q = Dense::load(&a.pp("self.query"), h, h).map_err(misfit)?;
            let k = Dense::load(&a.pp("self.key"), h, h).map_err(misfit)?;
            let v = Dense::load(&a.pp("self.value"), h, h).map_err(misfit)?;
            layers.push(Layer {
                qkv: Dense::fused(&[q, k, v]).map_err(misfit)?,
                attn_out: Dense::load(&a.pp("output.dense"), h, h).map_err(misfit)?,
                attn_norm: Norm::load(&a.pp("output.LayerNorm"), h, config.layer_norm_eps)
                    .map_err(misfit)?,
                ff_in: Dense::load(&l.pp("intermediate.dense"), h, config.intermediate_size)
                    .map_err(misfit)?,
                ff_out: Dense::load(&l.pp("output.dense"), config.intermediate_size, h)
                    .map_err(misfit)?,
                ff_norm: Norm::load(&l.pp("output.LayerNorm"), h, config.layer_norm_eps)
                    .map_err(misfit)?,
            });
        }
        let classifier = match num_labels {
            None => None,
            Some(n) => Some((
                Dense::load(&vb.pp("pooler.dense"), h, h).map_err(misfit)?,
                Dense::load(&root.pp("classifier"), h, n).map_err(misfit)?,
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
        let x = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = self
            .position
            .narrow(0, 0, t)?
            .broadcast_add(&self.token_type0)?;
        let x = x.broadcast_add(&pos)?.reshape((n, h))?;
        let mut x = self.emb_norm.forward(&x)?;
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
            x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let inner = l.ff_in.forward(&x)?;
            let inner = match self.act {
                Act::GeluErf if inner.device().is_cpu() => inner.apply_op1_no_bwd(&CpuGeluErf)?,
                Act::GeluErf => inner.gelu_erf()?,
                Act::GeluTanh => inner.gelu()?,
                Act::Relu => inner.relu()?,
            };
            x = l.ff_norm.forward(&(l.ff_out.forward(&inner)? + &x)?)?;
        }
        x.reshape((b, t, h))
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

/// The f32 values of a contiguous CPU tensor, for the custom CPU ops below.
fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: expects a contiguous f32 tensor"),
    }
}

/// Multi-head self-attention on the CPU, straight from the fused `[b·t, 3·hidden]` QKV matrix to the
/// `[b·t, hidden]` context matrix.
///
/// candle's batched matmul runs one small multi-threaded GEMM per (row, head) — thousands of tiny
/// calls per layer, dominated by thread hand-offs — and needs two transposing copies around it. Here
/// rows run in parallel, each head in one pass over its own keys, and only each row's real tokens are
/// touched: padded keys are skipped (exactly what the additive mask does: their softmax weight is 0) and
/// padded queries are left at zero (no pooling or head reads them).
#[derive(Clone, Debug)]
struct CpuAttention {
    batch: usize,
    seq: usize,
    heads: usize,
    lengths: Vec<usize>,
    scale: f32,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums, so the compiler vectorises the loop.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl candle_core::CustomOp1 for CpuAttention {
    fn name(&self) -> &'static str {
        "distill-cpu-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (n, width) = layout.shape().dims2()?;
        let h = width / 3;
        let hd = h / self.heads;
        if n != self.batch * self.seq || width != 3 * h || self.lengths.len() != self.batch {
            candle_core::bail!(
                "attention: qkv shape {:?} does not fit batch {} × seq {}",
                layout.shape(),
                self.batch,
                self.seq
            );
        }
        let qkv = contiguous_f32(storage, layout, "attention")?;
        let t = self.seq;
        let mut out = vec![0f32; n * h];
        out.par_chunks_mut(t * h)
            .enumerate()
            .for_each(|(row, out_row)| {
                let len = self.lengths[row].min(t);
                let base = row * t * width;
                let mut probs = vec![0f32; len];
                // This head's keys and values, packed contiguously: rows of the QKV matrix are 3·hidden
                // apart, which would make every key a cache miss.
                let (mut keys, mut values) = (vec![0f32; len * hd], vec![0f32; len * hd]);
                for head in 0..self.heads {
                    let (qo, ko, vo) = (head * hd, h + head * hd, 2 * h + head * hd);
                    for j in 0..len {
                        keys[j * hd..(j + 1) * hd]
                            .copy_from_slice(&qkv[base + j * width + ko..][..hd]);
                        values[j * hd..(j + 1) * hd]
                            .copy_from_slice(&qkv[base + j * width + vo..][..hd]);
                    }
                    for i in 0..len {
                        let q = &qkv[base + i * width + qo..][..hd];
                        let mut max = f32::NEG_INFINITY;
                        for (p, k) in probs.iter_mut().zip(keys.chunks_exact(hd)) {
                            *p = dot(q, k) * self.scale;
                            max = max.max(*p);
                        }
                        let mut sum = 0f32;
                        for p in probs.iter_mut() {
                            *p = (*p - max).exp();
                            sum += *p;
                        }
                        let inv = 1.0 / sum;
                        let o = &mut out_row[i * h + qo..][..hd];
                        for (p, v) in probs.iter().zip(values.chunks_exact(hd)) {
                            let w = p * inv;
                            for (od, vd) in o.iter_mut().zip(v) {
                                *od += w * vd;
                            }
                        }
                    }
                }
            });
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((n, h)),
        ))
    }
}

/// Exact (erf) GELU on the CPU: `0.5·x·(1 + erf(x/√2))`, in parallel chunks, with a rational erf
/// approximation (max abs error about 1e-7 on f32, see the test) that the compiler vectorises.
/// candle's `gelu_erf` calls libm's scalar `erf` per element, which cost a quarter of a forward pass.
#[derive(Clone, Copy, Debug)]
struct CpuGeluErf;

/// erf(x) for f32: odd rational function on [-4, 4] (erf is ±1 to f32 precision beyond). Coefficients
/// of the rational approximation used by Eigen's `generic_fast_erf_float`.
#[inline]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_473_9e-2;
    x * p / q
}

impl candle_core::CustomOp1 for CpuGeluErf {
    fn name(&self) -> &'static str {
        "distill-cpu-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let input = contiguous_f32(storage, layout, "gelu")?;
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(1 << 14)
            .zip(input.par_chunks(1 << 14))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Pools token states `[b, t, h]` with `mask` `[b, t]` into `[b, h]`.
pub fn pool(
    states: &Tensor,
    mask: &Tensor,
    pooling: distill_cache::model_dir::Pooling,
) -> candle_core::Result<Tensor> {
    use distill_cache::model_dir::Pooling;
    match pooling {
        Pooling::Cls => states.i((.., 0))?.contiguous(),
        Pooling::Mean => {
            let m = mask.unsqueeze(2)?;
            let sum = states.broadcast_mul(&m)?.sum(1)?;
            sum.broadcast_div(&mask.sum_keepdim(1)?)
        }
        Pooling::Max => {
            let neg = ((mask.ones_like()? - mask)? * -1e9f64)?.unsqueeze(2)?;
            states.broadcast_add(&neg)?.max(1)
        }
    }
}

/// L2-normalises rows of `[b, h]`.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_matches_libm() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let exact = libm_erf(x as f64);
            worst = worst.max((erf_f32(x) as f64 - exact).abs());
        }
        assert!(worst < 5e-7, "max abs error {worst}");
    }

    /// erf by its Taylor series / continued fraction in f64: an independent reference.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            // Taylor series: 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 || n < 5.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
                if n > 200.0 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Continued fraction for erfc, accurate for |x| ≥ 3.
            let ax = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (ax + f);
            }
            let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn cpu_gelu_matches_candle_gelu_erf() {
        let x = Tensor::arange(-600i64, 600, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let x = (x * 0.01).unwrap();
        let ours: Vec<f32> = x.apply_op1_no_bwd(&CpuGeluErf).unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = x.gelu_erf().unwrap().to_vec1().unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
