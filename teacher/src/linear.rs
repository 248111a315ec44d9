//! Linear layers of the teachers: `y = x · Wᵀ + b`, one matrix product on the flattened
//! `[batch × tokens, in]` matrix. The weights are either dense (`Wᵀ` stored contiguous, f32) or packed:
//! kept in their file's encoding ([`crate::packed`]) and dequantized into one scratch buffer per model
//! right before each product — a large plain product (the vocabulary head) slice of rows by slice, so
//! no f32 copy of it ever exists whole. On the CPU the product goes through the BLAS loaded at run time
//! (`distill-blas`: OpenBLAS where installed) with the bias written into the output first and
//! accumulated into (β = 1); without one, or on other devices, through candle's matmul.

use crate::cpu::{
    contiguous_f32, gelu_erf_in_place, silu_mul_row, with_host, CpuGeluErf, CpuSiluMul,
};
use crate::norm::Norm;
use crate::packed::Packed;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use distill_blas::uninit::write_rows;
use rayon::prelude::*;
use std::sync::{Arc, Mutex, MutexGuard};

/// A linear layer: `y = x · Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    weights: Weights,
    pub b: Option<Tensor>,
    /// The bias on the host, for the BLAS path.
    b_host: Option<Vec<f32>>,
}

#[derive(Clone, Debug)]
enum Weights {
    /// `Wᵀ`: `[in, out]`, contiguous, on the model's device.
    Dense(Tensor),
    /// `W` in parts stacked by rows (`[out_i, in]` each) in their file's encoding, dequantized into the
    /// model's scratch right before each product (CPU only).
    Packed {
        parts: Vec<Arc<Packed>>,
        scratch: Scratch,
    },
}

/// The one buffer a model's packed layers dequantize into, one matrix (or slice of rows) at a time;
/// it grows to the largest and is reused by every product after.
#[derive(Clone, Default)]
pub struct Scratch(Arc<Mutex<Vec<f32>>>);

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

impl Scratch {
    /// The buffer, at least `n` values long.
    fn lend(&self, n: usize) -> MutexGuard<'_, Vec<f32>> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() < n {
            g.resize(n, 0.0);
        }
        g
    }
}

/// Above this many weights a packed matrix with a plain output (the vocabulary head) is dequantized
/// and multiplied in slices of rows of about this size (32 MB of f32), never whole.
pub const SLICE_VALUES: usize = 1 << 23;

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
        Ok(Self {
            weights: Weights::Dense(wt),
            b,
            b_host,
        })
    }

    /// From `W` kept in its file's encoding (`[out, in]`), dequantized into `scratch` at each product.
    pub fn packed(
        w: Arc<Packed>,
        b: Option<Tensor>,
        scratch: &Scratch,
    ) -> candle_core::Result<Self> {
        let b_host = match &b {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Self {
            weights: Weights::Packed {
                parts: vec![w],
                scratch: scratch.clone(),
            },
            b,
            b_host,
        })
    }

    /// One layer computing the parts side by side (their outputs concatenated): one matrix product
    /// instead of several. A part without a bias gets zeros when another has one. Packed parts stay
    /// packed; a mix of packed and dense parts is made dense.
    pub fn fused(parts: &[Linear]) -> candle_core::Result<Self> {
        let b = if parts.iter().any(|p| p.b.is_some()) {
            let bs = parts
                .iter()
                .map(|p| match &p.b {
                    Some(b) => b.to_dtype(DType::F32),
                    None => Tensor::zeros(p.out_features(), DType::F32, p.b_device()),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        let scratch = parts.iter().find_map(|p| match &p.weights {
            Weights::Packed { scratch, .. } => Some(scratch.clone()),
            Weights::Dense(_) => None,
        });
        let all_packed = parts.iter().all(Linear::is_packed);
        match scratch {
            Some(scratch) if all_packed => {
                let all: Vec<Arc<Packed>> = parts
                    .iter()
                    .flat_map(|p| match &p.weights {
                        Weights::Packed { parts, .. } => parts.clone(),
                        Weights::Dense(_) => vec![],
                    })
                    .collect();
                if all.iter().any(|p| p.cols != all[0].cols) {
                    candle_core::bail!("linear: fused parts take inputs of different widths");
                }
                let b_host = match &b {
                    Some(b) => Some(b.to_vec1::<f32>()?),
                    None => None,
                };
                Ok(Self {
                    weights: Weights::Packed {
                        parts: all,
                        scratch,
                    },
                    b,
                    b_host,
                })
            }
            _ => {
                let wts = parts
                    .iter()
                    .map(|p| p.dense_wt())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Self::from_transposed(Tensor::cat(&wts, 1)?, b)
            }
        }
    }

    fn b_device(&self) -> &candle_core::Device {
        match &self.weights {
            Weights::Dense(wt) => wt.device(),
            Weights::Packed { .. } => &candle_core::Device::Cpu,
        }
    }

    /// `Wᵀ` as a dense f32 tensor (a packed layer's dequantized on the CPU).
    pub fn dense_wt(&self) -> candle_core::Result<Tensor> {
        match &self.weights {
            Weights::Dense(wt) => Ok(wt.clone()),
            Weights::Packed { parts, .. } => {
                let (m, k) = (self.out_features(), self.in_features());
                let mut w = vec![0f32; m * k];
                let mut at = 0;
                for p in parts {
                    p.par_dequantize_rows(0..p.rows, &mut w[at * k..(at + p.rows) * k]);
                    at += p.rows;
                }
                Tensor::from_vec(w, (m, k), &candle_core::Device::Cpu)?
                    .t()?
                    .contiguous()
            }
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match &self.weights {
            Weights::Dense(wt) => wt.dims()[0],
            Weights::Packed { parts, .. } => parts[0].cols,
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match &self.weights {
            Weights::Dense(wt) => wt.dims()[1],
            Weights::Packed { parts, .. } => parts.iter().map(|p| p.rows).sum(),
        }
    }

    /// Weights (not counting the bias).
    pub fn parameters(&self) -> usize {
        self.in_features() * self.out_features()
    }

    /// Whether the weights are kept in their file's encoding.
    pub fn is_packed(&self) -> bool {
        matches!(self.weights, Weights::Packed { .. })
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
        let host_f32 = match &self.weights {
            Weights::Dense(wt) => wt.dtype() == DType::F32 && wt.device().is_cpu(),
            Weights::Packed { .. } => true,
        };
        if x.device().is_cpu() && x.dtype() == DType::F32 && host_norm && host_f32 {
            if let Some(blas) = distill_blas::get() {
                return self.forward_blas(blas, &x.contiguous()?, residual, epilogue);
            }
        }
        let y = match &self.weights {
            Weights::Dense(wt) if wt.dtype() == x.dtype() => x.matmul(wt)?,
            // bf16 weights: the input rounded to bf16, the product accumulated and returned in f32.
            Weights::Dense(wt) if wt.dtype() == DType::BF16 => {
                crate::bf16::matmul_f32_out(&x.to_dtype(DType::BF16)?, wt)?.to_dtype(x.dtype())?
            }
            // Other half-precision weights: the input rounded to their dtype, the product back in
            // the activations' dtype.
            Weights::Dense(wt) => x.to_dtype(wt.dtype())?.matmul(wt)?.to_dtype(x.dtype())?,
            Weights::Packed { .. } => x.matmul(&self.dense_wt()?)?,
        };
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

    /// The BLAS path: the weights dense, or dequantized into the scratch (in slices of rows for a
    /// large plain product).
    fn forward_blas(
        &self,
        blas: &'static distill_blas::Blas,
        x: &Tensor,
        residual: Option<&Tensor>,
        epilogue: Epilogue,
    ) -> candle_core::Result<Tensor> {
        let residual = match residual {
            Some(r) => Some(r.contiguous()?),
            None => None,
        };
        let guard;
        let residual = match &residual {
            Some(r) => {
                guard = r.storage_and_layout();
                match (&*guard.0, guard.1.contiguous_offsets()) {
                    (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Some(&v[a..b]),
                    _ => candle_core::bail!("linear: the residual is not a CPU f32 tensor"),
                }
            }
            None => None,
        };
        let (m, k) = (self.out_features(), self.in_features());
        match &self.weights {
            Weights::Dense(wt) => {
                let op = |w: &[f32]| {
                    x.apply_op1_no_bwd(&BlasLinear {
                        blas,
                        w,
                        w_out_in: false,
                        out: m,
                        bias: self.b_host.as_deref(),
                        residual,
                        epilogue,
                    })
                };
                with_host(wt, op)
                    .unwrap_or_else(|| candle_core::bail!("linear: weights not on the host"))
            }
            Weights::Packed { parts, scratch } => {
                let plain = residual.is_none()
                    && self.b_host.is_none()
                    && matches!(epilogue, Epilogue::None);
                if plain && m * k > SLICE_VALUES {
                    return self.sliced_product(x);
                }
                let mut w = scratch.lend(m * k);
                let mut at = 0;
                for p in parts {
                    p.par_dequantize_rows(0..p.rows, &mut w[at * k..(at + p.rows) * k]);
                    at += p.rows;
                }
                x.apply_op1_no_bwd(&BlasLinear {
                    blas,
                    w: &w[..m * k],
                    w_out_in: true,
                    out: m,
                    bias: self.b_host.as_deref(),
                    residual,
                    epilogue,
                })
            }
        }
    }

    /// `x · Wᵀ` for a large packed `W` (the vocabulary head): [`Linear::forward_slices`], each slice
    /// copied into its block of output columns, so no f32 copy of `W` ever exists whole.
    fn sliced_product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, m) = (x.dim(0)?, self.out_features());
        let mut out = crate::cpu::zeros(n * m);
        self.forward_slices(x, &mut |first, width, y| {
            out.par_chunks_mut(m.max(1))
                .zip(y.par_chunks(width.max(1)))
                .for_each(|(o, r)| o[first..first + width].copy_from_slice(r));
        })?;
        Tensor::from_vec(out, (n, m), x.device())
    }

    /// Whether [`Linear::forward_slices`] hands out slices: packed weights with a BLAS to multiply them.
    pub fn slices_on_host(&self) -> bool {
        self.is_packed() && self.b.is_none() && distill_blas::get().is_some()
    }

    /// `x · Wᵀ` (no bias) handed to `each` one block of about [`SLICE_VALUES`] weights' output
    /// columns at a time: `(first column, width, [n, width] row-major)`; the whole product at once
    /// where the layer does not slice ([`Linear::slices_on_host`]).
    pub fn forward_slices(
        &self,
        x: &Tensor,
        each: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> candle_core::Result<()> {
        let (Some(blas), Weights::Packed { parts, scratch }, None) =
            (distill_blas::get(), &self.weights, &self.b)
        else {
            let y = self.forward(x)?;
            each(0, y.dim(1)?, &y.flatten_all()?.to_vec1()?);
            return Ok(());
        };
        let x = x.contiguous()?;
        let (n, k) = x.dims2()?;
        let slice = (SLICE_VALUES / k.max(1)).max(1);
        let mut w = scratch.lend(slice * k);
        let mut y = vec![0f32; n * slice];
        let threads = rayon::current_num_threads().min(n.div_ceil(16)).max(1);
        let rows = n.div_ceil(threads).max(1);
        with_host(&x, |xv| {
            let mut col = 0;
            for p in parts {
                let mut r0 = 0;
                while r0 < p.rows {
                    let r1 = (r0 + slice).min(p.rows);
                    let width = r1 - r0;
                    let w = &mut w[..width * k];
                    p.par_dequantize_rows(r0..r1, w);
                    let w = &*w;
                    let y = &mut y[..n * width];
                    y.par_chunks_mut(rows * width)
                        .enumerate()
                        .for_each(|(i, c)| {
                            let count = c.len() / width;
                            let g = distill_blas::Gemm {
                                shape: (count, width, k),
                                b_transposed: true,
                                ldc: width,
                            };
                            blas.gemm(g, &xv[i * rows * k..(i * rows + count) * k], w, 0.0, c);
                        });
                    each(col + r0, width, y);
                    r0 = r1;
                }
                col += p.rows;
            }
        })
        .ok_or_else(|| candle_core::Error::Msg("linear: input not on the host".into()))
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
    /// `Wᵀ` (`[in, out]`), or `W` (`[out, in]`) when `w_out_in`.
    w: &'a [f32],
    w_out_in: bool,
    out: usize,
    bias: Option<&'a [f32]>,
    /// `[n, out]`, added to the product.
    residual: Option<&'a [f32]>,
    epilogue: Epilogue<'a>,
}

impl BlasLinear<'_> {
    fn gemm(&self, count: usize, k: usize, x: &[f32], beta: f32, y: &mut [f32]) {
        let g = distill_blas::Gemm {
            shape: (count, self.out, k),
            b_transposed: self.w_out_in,
            ldc: self.out,
        };
        self.blas.gemm(g, x, self.w, beta, y);
    }
}

impl CustomOp1 for BlasLinear<'_> {
    fn name(&self) -> &'static str {
        "distill-blas-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let m = self.out;
        if self.w.len() != k * m {
            candle_core::bail!("linear: x is {n}×{k} but the weights hold {}", self.w.len());
        }
        if matches!(self.residual, Some(r) if r.len() != n * m) {
            candle_core::bail!("linear: residual does not fit {n}×{m}");
        }
        let x = contiguous_f32(xs, xl, "linear")?;
        let (width, copies) = match self.epilogue {
            Epilogue::SiluMul if m.is_multiple_of(2) => (m / 2, 1),
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
                    self.gemm(count, k, &x[r0 * k..(r0 + count) * k], 1.0, y);
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
                        self.gemm(count, k, xr, beta, y);
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

    fn q8(rows: usize, cols: usize, seed: u64) -> (Arc<Packed>, Tensor) {
        use candle_core::quantized::{GgmlDType, QTensor};
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (rows, cols), &dev).unwrap();
        let w = (w + seed as f64 * 1e-3).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap().to_vec();
        let p = Packed::new(crate::packed::Encoding::Q8_0, rows, cols, bytes).unwrap();
        (Arc::new(p), q.dequantize(&dev).unwrap())
    }

    fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{what} [{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn packed_layers_compute_what_their_dense_copies_do() {
        use crate::norm::{Norm, NormKind};
        let dev = Device::Cpu;
        let scratch = Scratch::default();
        let x = Tensor::randn(0f32, 1.0, (37, 64), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (37, 48), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 48, &dev).unwrap();
        let (p1, w1) = q8(48, 64, 1);
        let (p2, w2) = q8(16, 64, 2);
        let packed = Linear::packed(p1.clone(), Some(b.clone()), &scratch).unwrap();
        let dense = Linear::new(&w1, Some(b.clone())).unwrap();
        assert!(packed.is_packed() && !dense.is_packed());
        assert_eq!((packed.in_features(), packed.out_features()), (64, 48));
        let rms = Norm::new(
            NormKind::Rms,
            Tensor::ones(48, DType::F32, &dev).unwrap(),
            None,
            1e-6,
        )
        .unwrap();
        let (s1, n1) = packed.forward_add_normed(&x, &r, &rms).unwrap();
        let (s2, n2) = dense.forward_add_normed(&x, &r, &rms).unwrap();
        assert_close(&s1, &s2, 1e-5, "residual sum");
        assert_close(&n1, &n2, 1e-5, "normed");
        // Fused packed parts (a bias on one of them), and the SwiGLU epilogue.
        let fp = Linear::fused(&[
            Linear::packed(p1, Some(b.clone()), &scratch).unwrap(),
            Linear::packed(p2, None, &scratch).unwrap(),
        ])
        .unwrap();
        let fd = Linear::fused(&[
            Linear::new(&w1, Some(b)).unwrap(),
            Linear::new(&w2, None).unwrap(),
        ])
        .unwrap();
        assert!(fp.is_packed());
        assert_close(
            &fp.forward(&x).unwrap(),
            &fd.forward(&x).unwrap(),
            1e-5,
            "fused",
        );
        let swi = |l: &Linear| l.forward_with(&x, None, Epilogue::SiluMul).unwrap();
        assert_close(&swi(&fp), &swi(&fd), 1e-5, "silu-mul");
        // The dense copy of a packed layer is its dequantized transpose.
        assert_close(
            &fp.dense_wt().unwrap(),
            &fd.dense_wt().unwrap(),
            0.0,
            "dense copy",
        );
    }

    #[test]
    fn a_head_larger_than_a_slice_is_multiplied_slice_by_slice() {
        let dev = Device::Cpu;
        let (rows, cols) = (SLICE_VALUES / 512 + 300, 512);
        let (p, w) = q8(rows, cols, 3);
        let x = Tensor::randn(0f32, 1.0, (5, cols), &dev).unwrap();
        let got = Linear::packed(p, None, &Scratch::default())
            .unwrap()
            .forward(&x)
            .unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), &[5, rows]);
        assert_close(&got, &want, 1e-4, "sliced head");
    }
}
