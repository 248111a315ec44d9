//! Normalisation layers of the teachers: LayerNorm (BERT) and RMSNorm (llama), each with its weights
//! on the device (candle's ops, other devices) and on the host (the CPU kernel below, which the linear
//! layers also run in place on their own output rows while those are still in cache).

use crate::cpu::lane_sum;
use candle_core::{DType, Tensor};

/// Which normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x − mean) / √(var + ε) · γ + β`.
    Layer,
    /// `x / √(mean(x²) + ε) · γ`.
    Rms,
}

/// A normalisation layer over the last dimension.
#[derive(Clone, Debug)]
pub struct Norm {
    pub kind: NormKind,
    pub gamma: Tensor,
    /// LayerNorm's shift (absent for RMSNorm).
    pub beta: Option<Tensor>,
    pub eps: f32,
    /// γ and β on the host, for the CPU kernel (empty on other devices).
    gamma_host: Vec<f32>,
    beta_host: Vec<f32>,
}

impl Norm {
    pub fn new(
        kind: NormKind,
        gamma: Tensor,
        beta: Option<Tensor>,
        eps: f64,
    ) -> candle_core::Result<Self> {
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            if t.device().is_cpu() {
                t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
            } else {
                Ok(Vec::new())
            }
        };
        let gamma_host = host(&gamma)?;
        let beta_host = match &beta {
            Some(b) => host(b)?,
            None => Vec::new(),
        };
        Ok(Self {
            kind,
            gamma,
            beta,
            eps: eps as f32,
            gamma_host,
            beta_host,
        })
    }

    /// `[.., features]` → normalised, with candle's ops on any device (or the host kernel on the CPU).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && !self.gamma_host.is_empty() {
            let dims = x.dims().to_vec();
            let width = *dims.last().unwrap_or(&0);
            let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            use rayon::prelude::*;
            v.par_chunks_mut(width.max(1) * 64)
                .for_each(|rows| rows.chunks_mut(width.max(1)).for_each(|r| self.apply(r)));
            return Tensor::from_vec(v, dims, x.device());
        }
        match (&self.kind, &self.beta) {
            (NormKind::Layer, Some(beta)) => {
                candle_nn::ops::layer_norm(x, &self.gamma, beta, self.eps)
            }
            (NormKind::Layer, None) => candle_core::bail!("layer norm without β"),
            (NormKind::Rms, _) => candle_nn::ops::rms_norm(x, &self.gamma, self.eps),
        }
    }

    /// Normalises one row in place on the host. Sums in f32 over eight lanes (rows are a few hundred
    /// to a few thousand wide).
    #[inline]
    pub fn apply(&self, row: &mut [f32]) {
        let n = row.len() as f32;
        match self.kind {
            NormKind::Layer => {
                let mean = lane_sum(row, |x| x) / n;
                let var = lane_sum(row, |x| (x - mean) * (x - mean)) / n;
                let inv = 1.0 / (var + self.eps).sqrt();
                for ((x, g), b) in row.iter_mut().zip(&self.gamma_host).zip(&self.beta_host) {
                    *x = (*x - mean) * inv * g + b;
                }
            }
            NormKind::Rms => {
                let inv = 1.0 / (lane_sum(row, |x| x * x) / n + self.eps).sqrt();
                for (x, g) in row.iter_mut().zip(&self.gamma_host) {
                    *x *= inv * g;
                }
            }
        }
    }

    /// Writes the normalised `row` into `out` (same length).
    #[inline]
    pub fn apply_to(&self, row: &[f32], out: &mut [f32]) {
        out.copy_from_slice(row);
        self.apply(out);
    }

    /// Whether the host kernel can run (weights on the CPU).
    pub fn on_host(&self) -> bool {
        !self.gamma_host.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn host_kernels_match_candles_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0.5f32, 2.0, (7, 45), &dev).unwrap();
        let g = Tensor::randn(1f32, 0.3, 45, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 45, &dev).unwrap();
        for (norm, want) in [
            (
                Norm::new(NormKind::Layer, g.clone(), Some(b.clone()), 1e-12).unwrap(),
                candle_nn::ops::layer_norm(&x, &g, &b, 1e-12).unwrap(),
            ),
            (
                Norm::new(NormKind::Rms, g.clone(), None, 1e-5).unwrap(),
                candle_nn::ops::rms_norm(&x, &g, 1e-5).unwrap(),
            ),
        ] {
            let got: Vec<f32> = norm
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{:?}: {a} vs {b}", norm.kind);
            }
        }
    }
}
