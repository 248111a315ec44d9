//! Linear layers of the teachers: `y = x · Wᵀ + b` with `Wᵀ` stored contiguous, one matrix product on
//! the flattened `[batch × tokens, in]` matrix. On the CPU the product goes through the BLAS loaded at
//! run time (`distill-blas`: OpenBLAS where installed) with the bias written into the output first and
//! accumulated into (β = 1); without one, or on other devices, through candle's matmul.

use crate::cpu::contiguous_f32;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// A linear layer with its weights transposed and contiguous.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `Wᵀ`: `[in, out]`.
    pub wt: Tensor,
    pub b: Option<Tensor>,
    /// The bias on the host, for the BLAS path.
    b_host: Option<Vec<f32>>,
}

impl Linear {
    /// From `W` as checkpoints store it (`[out, in]`) and an optional bias.
    pub fn new(w: &Tensor, b: Option<Tensor>) -> candle_core::Result<Self> {
        Self::from_transposed(w.t()?.contiguous()?, b)
    }

    /// From `Wᵀ` (`[in, out]`, contiguous).
    pub fn from_transposed(wt: Tensor, b: Option<Tensor>) -> candle_core::Result<Self> {
        let b_host = match &b {
            Some(b) if wt.device().is_cpu() => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            _ => None,
        };
        Ok(Self { wt, b, b_host })
    }

    /// One layer computing the parts side by side (their outputs concatenated): one matrix product
    /// instead of several. A part without a bias gets zeros when another has one.
    pub fn fused(parts: &[Linear]) -> candle_core::Result<Self> {
        let wt = Tensor::cat(&parts.iter().map(|p| &p.wt).collect::<Vec<_>>(), 1)?;
        let b = if parts.iter().any(|p| p.b.is_some()) {
            let bs = parts
                .iter()
                .map(|p| match &p.b {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(p.wt.dim(1)?, DType::F32, p.wt.device()),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        Self::from_transposed(wt, b)
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.wt.dims()[1]
    }

    /// `x`: `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_impl(x, None)
    }

    /// `residual + x · Wᵀ + b`, the residual accumulated into by the product itself on the BLAS path.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_impl(x, Some(residual))
    }

    fn forward_impl(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            if let Some(blas) = distill_blas::get() {
                let residual = match residual {
                    Some(r) => Some(r.contiguous()?),
                    None => None,
                };
                let guard;
                let residual = match &residual {
                    Some(r) => {
                        guard = r.storage_and_layout();
                        match (&*guard.0, guard.1.contiguous_offsets()) {
                            (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => {
                                Some(&v[a..b])
                            }
                            _ => candle_core::bail!("linear: the residual is not a CPU f32 tensor"),
                        }
                    }
                    None => None,
                };
                return x.contiguous()?.apply_op2_no_bwd(
                    &self.wt,
                    &BlasLinear {
                        blas,
                        bias: self.b_host.as_deref(),
                        residual,
                    },
                );
            }
        }
        let y = x.matmul(&self.wt)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }
}

/// `residual + x · Wᵀ + b` through the loaded BLAS.
struct BlasLinear<'a> {
    blas: &'static distill_blas::Blas,
    bias: Option<&'a [f32]>,
    /// `[n, out]`, added to the product.
    residual: Option<&'a [f32]>,
}

impl CustomOp2 for BlasLinear<'_> {
    fn name(&self) -> &'static str {
        "distill-blas-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (k2, m) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: x is {n}×{k} but Wᵀ is {k2}×{m}");
        }
        let x = contiguous_f32(xs, xl, "linear")?;
        let w = contiguous_f32(ws, wl, "linear")?;
        let mut out = match self.residual {
            Some(r) if r.len() == n * m => r.to_vec(),
            Some(r) => candle_core::bail!("linear: residual of {} values for {n}×{m}", r.len()),
            None => vec![0f32; n * m],
        };
        if let Some(b) = self.bias {
            out.par_chunks_mut(m).for_each(|row| {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            });
        }
        let beta = if self.bias.is_some() || self.residual.is_some() {
            1.0
        } else {
            0.0
        };
        if k == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n, m))));
        }
        // Rows split over rayon's threads, one single-threaded BLAS call each.
        let parts = rayon::current_num_threads().min(n.div_ceil(32)).max(1);
        let rows = n.div_ceil(parts);
        out.par_chunks_mut(rows * m)
            .zip(x.par_chunks(rows * k))
            .for_each(|(o, xr)| self.blas.sgemm((xr.len() / k, m, k), xr, w, beta, o));
        Ok((CpuStorage::F32(out), Shape::from((n, m))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_blas_path_and_candles_matmul_agree() {
        let x = Tensor::randn(0f32, 1.0, (37, 19), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (11, 19), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 11, &Device::Cpu).unwrap();
        let l = Linear::new(&w, Some(b.clone())).unwrap();
        let got: Vec<f32> = l
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Fused parts compute the parts side by side.
        let w2 = Tensor::randn(0f32, 1.0, (5, 19), &Device::Cpu).unwrap();
        let fused = Linear::fused(&[l, Linear::new(&w2, None).unwrap()]).unwrap();
        let y = fused.forward(&x).unwrap();
        assert_eq!(y.dims(), &[37, 16]);
        let tail: Vec<f32> = y
            .narrow(1, 11, 5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want2: Vec<f32> = x
            .matmul(&w2.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in tail.iter().zip(&want2) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}
