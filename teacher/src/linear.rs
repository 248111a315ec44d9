//! Linear layers of the teachers: `y = x · Wᵀ + b` with `Wᵀ` stored contiguous, one matrix product on
//! the flattened `[batch × tokens, in]` matrix. On the CPU the product goes through the BLAS loaded at
//! run time (`distill-blas`: OpenBLAS where installed) with the bias written into the output first and
//! accumulated into (β = 1); without one, or on other devices, through candle's matmul.

use crate::cpu::{contiguous_f32, gelu_erf_in_place, silu_mul_row, CpuGeluErf, CpuSiluMul};
use crate::norm::Norm;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use distill_blas::uninit::write_rows;
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
        self.forward_with(x, None, Epilogue::None)
    }

    /// `residual + x · Wᵀ + b`, the residual accumulated into by the product itself on the BLAS path.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(x, Some(residual), Epilogue::None)
    }

    /// `[n, in]` → `epilogue(residual + x · Wᵀ + b)`. On the BLAS path each thread applies the
    /// epilogue to its own block of output rows right after its product, while they are in cache;
    /// elsewhere it runs as separate ops. With [`Epilogue::AlsoNormed`] the result is `[2n, out]`:
    /// the sum, then its normalised copy (see [`Linear::forward_add_normed`]).
    pub fn forward_with(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        epilogue: Epilogue,
    ) -> candle_core::Result<Tensor> {
        let host_norm = match epilogue {
            Epilogue::Norm(n) | Epilogue::AlsoNormed(n) => n.on_host(),
            _ => true,
        };
        if x.device().is_cpu() && x.dtype() == DType::F32 && host_norm {
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
                        epilogue,
                    },
                );
            }
        }
        let y = x.matmul(&self.wt)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        match epilogue {
            Epilogue::None => Ok(y),
            Epilogue::GeluErf if y.device().is_cpu() => y.apply_op1_no_bwd(&CpuGeluErf),
            Epilogue::GeluErf => y.gelu_erf(),
            Epilogue::SiluMul if y.device().is_cpu() => y.apply_op1_no_bwd(&CpuSiluMul),
            Epilogue::SiluMul => {
                let f = y.dim(1)? / 2;
                candle_nn::ops::silu(&y.narrow(1, 0, f)?)? * y.narrow(1, f, f)?
            }
            Epilogue::Norm(n) => n.forward(&y),
            Epilogue::AlsoNormed(n) => Tensor::cat(&[&y, &n.forward(&y)?], 0),
        }
    }

    /// `y = residual + x · Wᵀ + b` and its normalised copy `norm(y)`, as a pair (a pre-norm block's
    /// residual stream and the next block's input).
    pub fn forward_add_normed(
        &self,
        x: &Tensor,
        residual: &Tensor,
        norm: &Norm,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let both = self.forward_with(x, Some(residual), Epilogue::AlsoNormed(norm))?;
        let n = both.dim(0)? / 2;
        Ok((both.narrow(0, 0, n)?, both.narrow(0, n, n)?))
    }
}

/// What a linear layer does to its output rows after the product (and the bias and residual).
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    None,
    /// Exact (erf) GELU.
    GeluErf,
    /// `silu(y[:, :f]) · y[:, f:]` (a fused gate/up product; the output is half as wide).
    SiluMul,
    /// `norm(y)` (a post-norm block: BERT).
    Norm(&'a Norm),
    /// `y` and `norm(y)`, stacked (a pre-norm block: llama).
    AlsoNormed(&'a Norm),
}

/// `epilogue(residual + x · Wᵀ + b)` through the loaded BLAS.
struct BlasLinear<'a> {
    blas: &'static distill_blas::Blas,
    bias: Option<&'a [f32]>,
    /// `[n, out]`, added to the product.
    residual: Option<&'a [f32]>,
    epilogue: Epilogue<'a>,
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
        if matches!(self.residual, Some(r) if r.len() != n * m) {
            candle_core::bail!("linear: residual does not fit {n}×{m}");
        }
        let x = contiguous_f32(xs, xl, "linear")?;
        let w = contiguous_f32(ws, wl, "linear")?;
        let (width, copies) = match self.epilogue {
            Epilogue::SiluMul if m % 2 == 0 => (m / 2, 1),
            Epilogue::SiluMul => candle_core::bail!("linear: silu-mul of an odd width {m}"),
            Epilogue::AlsoNormed(_) => (m, 2),
            _ => (m, 1),
        };
        // Rows split over rayon's threads, one single-threaded BLAS call each, then the epilogue on
        // the same rows.
        let parts = rayon::current_num_threads().min(n.div_ceil(32)).max(1);
        let rows = n.div_ceil(parts).max(1);
        if copies == 1 && !matches!(self.epilogue, Epilogue::SiluMul) {
            // The output's rows are written once — residual + bias, or zeros — straight into the
            // new buffer (no zeroing pass before), then accumulated into by the product.
            let zero_row = vec![0f32; m];
            let out = distill_blas::uninit::collect_chunks(n * m, rows * m, |part, dst| {
                let r0 = part * rows;
                let count = dst.len() / m;
                let y = match (self.residual, self.bias) {
                    (Some(r), bias) => write_rows(dst, m, |i| &r[(r0 + i) * m..][..m], bias),
                    (None, Some(b)) => write_rows(dst, m, |_| b, None),
                    (None, None) => write_rows(dst, m, |_| &zero_row, None),
                };
                if k > 0 {
                    self.blas
                        .sgemm((count, m, k), &x[r0 * k..(r0 + count) * k], w, 1.0, y);
                }
                match self.epilogue {
                    Epilogue::GeluErf => gelu_erf_in_place(y),
                    Epilogue::Norm(norm) => y.chunks_mut(m).for_each(|r| norm.apply(r)),
                    _ => {}
                }
                y
            });
            return Ok((CpuStorage::F32(out), Shape::from((n, m))));
        }
        let mut out = crate::cpu::zeros(copies * n * width);
        let (first, second) = out.split_at_mut(n * width);
        let mut seconds: Vec<&mut [f32]> = if copies == 2 {
            second.chunks_mut(rows * width).collect()
        } else {
            Vec::new()
        };
        seconds.resize_with(n.div_ceil(rows), Default::default);
        first
            .par_chunks_mut(rows * width)
            .zip(seconds.into_par_iter())
            .enumerate()
            .for_each(|(part, (dst, normed))| {
                let r0 = part * rows;
                let count = dst.len() / width;
                let xr = &x[r0 * k..(r0 + count) * k];
                let product = |y: &mut [f32]| {
                    // residual + bias in one pass over the rows.
                    match (self.residual, self.bias) {
                        (Some(r), Some(b)) => {
                            for (row, r) in y.chunks_mut(m).zip(r[r0 * m..].chunks(m)) {
                                for ((o, r), b) in row.iter_mut().zip(r).zip(b) {
                                    *o = r + b;
                                }
                            }
                        }
                        (Some(r), None) => y.copy_from_slice(&r[r0 * m..(r0 + count) * m]),
                        (None, Some(b)) => y.chunks_mut(m).for_each(|row| row.copy_from_slice(b)),
                        (None, None) => {}
                    }
                    let beta = if self.bias.is_some() || self.residual.is_some() {
                        1.0
                    } else {
                        0.0
                    };
                    if k > 0 {
                        self.blas.sgemm((count, m, k), xr, w, beta, y);
                    }
                };
                match self.epilogue {
                    Epilogue::SiluMul => {
                        let mut y = vec![0f32; count * m];
                        product(&mut y);
                        for (o, row) in dst.chunks_mut(width).zip(y.chunks(m)) {
                            silu_mul_row(row, o);
                        }
                    }
                    Epilogue::None | Epilogue::GeluErf | Epilogue::Norm(_) => {
                        unreachable!("one-copy epilogues are written in place above")
                    }
                    Epilogue::AlsoNormed(norm) => {
                        product(dst);
                        for (o, r) in normed.chunks_mut(m).zip(dst.chunks(m)) {
                            norm.apply_to(r, o);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((copies * n, width))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn epilogues_equal_the_ops_they_replace() {
        use crate::norm::{Norm, NormKind};
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (70, 24), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.3, (18, 24), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 18, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (70, 18), &dev).unwrap();
        let g = Tensor::randn(1f32, 0.2, 18, &dev).unwrap();
        let l = Linear::new(&w, Some(b.clone())).unwrap();
        let y = ((x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b)).unwrap() + &r).unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a.len(), b.len(), "{what}");
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() < 1e-4, "{what}: {a} vs {b}");
            }
        };
        let ln = Norm::new(NormKind::Layer, g.clone(), Some(b.clone()), 1e-12).unwrap();
        let got = l.forward_with(&x, Some(&r), Epilogue::Norm(&ln)).unwrap();
        close(
            &got,
            &candle_nn::ops::layer_norm(&y, &g, &b, 1e-12).unwrap(),
            "layer norm",
        );
        let rms = Norm::new(NormKind::Rms, g.clone(), None, 1e-6).unwrap();
        let (sum, normed) = l.forward_add_normed(&x, &r, &rms).unwrap();
        close(&sum, &y, "residual sum");
        close(
            &normed,
            &candle_nn::ops::rms_norm(&y, &g, 1e-6).unwrap(),
            "rms norm",
        );
        let y0 = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let got = l.forward_with(&x, None, Epilogue::GeluErf).unwrap();
        close(&got, &y0.gelu_erf().unwrap(), "gelu");
        let got = l.forward_with(&x, None, Epilogue::SiluMul).unwrap();
        let want = (candle_nn::ops::silu(&y0.narrow(1, 0, 9).unwrap()).unwrap()
            * y0.narrow(1, 9, 9).unwrap())
        .unwrap();
        close(&got, &want, "silu-mul");
    }

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
