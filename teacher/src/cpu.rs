//! Custom CPU kernels of the teachers' forward passes (other devices use candle's own ops).
//!
//! Each works straight on the flattened `[batch × tokens, features]` matrices the models keep, touches
//! only each row's real tokens, and runs rows (or rows × heads) in parallel on rayon:
//! - [`attend_head`]: one head's attention, blocked like a small GEMM (both attentions below use it);
//! - [`CpuAttention`]: bidirectional multi-head attention from a fused QKV matrix (BERT);
//! - [`CpuCausalAttention`]: causal grouped-query attention with rotary embeddings applied on the way
//!   in (llama);
//! - [`CpuGeluErf`]: exact GELU with a vectorisable erf (BERT);
//! - [`CpuSiluMul`]: `silu(gate) · up` from a fused gate/up matrix (llama's SwiGLU).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

/// The f32 values of a contiguous CPU tensor, for the custom CPU ops below.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: expects a contiguous f32 tensor"),
    }
}

/// Hands the values of a contiguous f32 CPU tensor to `f`; `None` for any other tensor (another
/// device or dtype, a strided view), whose callers fall back to candle's ops.
pub(crate) fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Some(f(&v[start..end])),
        _ => None,
    }
}

/// `len` zeros, written by all of rayon's threads: `vec![0.0; len]` of a few MB is zeroed by the
/// calling thread alone (a page fault or `memset`) while the others wait, which cost a few percent of a
/// forward pass on two cores.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(0f32, len).with_min_len(1 << 16));
    v
}

/// Multi-head self-attention on the CPU, straight from the fused `[b·t, 3·hidden]` QKV matrix to the
/// `[b·t, hidden]` context matrix.
///
/// candle's batched matmul runs one small multi-threaded GEMM per (row, head) — thousands of tiny
/// calls per layer, dominated by thread hand-offs — and needs two transposing copies around it. Here
/// rows run in parallel, each head's keys and values are packed once and attended by [`attend_head`],
/// and only each row's real tokens are touched: padded keys are skipped (exactly what the additive mask does: their softmax weight is 0) and
/// padded queries are left at zero (no pooling or head reads them).
#[derive(Clone, Debug)]
pub(crate) struct CpuAttention {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub lengths: Vec<usize>,
    pub scale: f32,
}

/// Σ f(x) over eight independent partial sums, so the loop vectorises (a plain `sum` of floats does
/// not: its order is fixed).
#[inline]
pub(crate) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Queries, keys and value dimensions handled together by [`attend_head`]'s register blocks: four
/// queries against sixteen keys (or sixteen output dimensions) keep eight 8-wide accumulators in
/// registers, enough independent FMA chains to keep both FMA units busy.
const QB: usize = 4;
const KB: usize = 16;
const DB: usize = 16;

/// `acc[r][l] += a[r] · b[l]`: one rank-1 update of a register block (fused multiply-adds).
#[inline(always)]
fn outer_add<const W: usize>(acc: &mut [[f32; W]; QB], a: &[f32; QB], b: &[f32; W]) {
    for r in 0..QB {
        for l in 0..W {
            acc[r][l] = a[r].mul_add(b[l], acc[r][l]);
        }
    }
}

/// One head's keys and values packed for [`attend_head`]: keys transposed (`[d_pad][n_pad]`) and values
/// with rows `d_pad` wide, both zero-padded (`n_pad`: a multiple of the key block, `d_pad`: of the
/// dimension block), so every block of the kernel is full and padded keys contribute exact zeros.
///
/// Filled by [`PackedKv::reset`], [`PackedKv::set`] for each key, then [`PackedKv::seal`], which
/// transposes the keys in 8 × 8 tiles (a scattered store per value cost more than the scores).
#[derive(Debug, Default)]
pub(crate) struct PackedKv {
    /// Keys as set, `[n_pad][d_pad]`.
    k: Vec<f32>,
    /// Keys transposed by `seal`, `[d_pad][n_pad]`.
    kt: Vec<f32>,
    v: Vec<f32>,
    n_pad: usize,
    d: usize,
    d_pad: usize,
    sealed: bool,
}

impl PackedKv {
    /// Room for `n` keys of `d` dimensions, all zero.
    pub fn reset(&mut self, n: usize, d: usize) {
        self.n_pad = n.div_ceil(KB).max(1) * KB;
        self.d = d;
        self.d_pad = d.div_ceil(DB) * DB;
        self.k.clear();
        self.k.resize(self.n_pad * self.d_pad, 0.0);
        self.v.clear();
        self.v.resize(self.n_pad * self.d_pad, 0.0);
        self.kt.resize(self.d_pad * self.n_pad, 0.0);
        self.sealed = false;
    }

    /// Sets key and value `j`.
    #[inline]
    pub fn set(&mut self, j: usize, key: &[f32], value: &[f32]) {
        self.k[j * self.d_pad..][..self.d].copy_from_slice(key);
        self.v[j * self.d_pad..][..self.d].copy_from_slice(value);
    }

    /// Transposes the keys: call once all are set, before [`attend_head`].
    pub fn seal(&mut self) {
        let (n_pad, d_pad) = (self.n_pad, self.d_pad);
        for j0 in (0..n_pad).step_by(8) {
            for d0 in (0..d_pad).step_by(8) {
                let mut tile = [[0f32; 8]; 8];
                for (a, row) in self.k[j0 * d_pad + d0..].chunks(d_pad).take(8).enumerate() {
                    let row: &[f32; 8] = row[..8].try_into().expect("8");
                    for b in 0..8 {
                        tile[b][a] = row[b];
                    }
                }
                for (b, col) in tile.iter().enumerate() {
                    self.kt[(d0 + b) * n_pad + j0..][..8].copy_from_slice(col);
                }
            }
        }
        self.sealed = true;
    }
}

/// `out_i = Σ_j softmax_j(scale · q_i · k_j) · v_j` over keys `j < seen(i)` for `nq` queries of one
/// head: query `i` is `q[i·q_stride..][..d]`, its output goes to `out[i·out_stride..][..d]`.
///
/// Blocked like a small GEMM: four queries against sixteen keys (scores), then four queries times
/// sixteen value dimensions (outputs), accumulators in registers, so the compiler vectorises across
/// keys and dimensions; a dot product per (query, key) left most of each vector unit idle at head
/// sizes of 32–64. `probs` is scratch.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub(crate) fn attend_head(
    q: &[f32],
    q_stride: usize,
    nq: usize,
    kv: &PackedKv,
    seen: impl Fn(usize) -> usize,
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
    out_stride: usize,
) {
    debug_assert!(kv.sealed, "PackedKv::seal before attend_head");
    let (d, n_pad, d_pad) = (kv.d, kv.n_pad, kv.d_pad);
    probs.resize(QB * n_pad, 0.0);
    let mut qt = vec![[0f32; QB]; d];
    for i0 in (0..nq).step_by(QB) {
        let nb = (nq - i0).min(QB);
        let limits: [usize; QB] = std::array::from_fn(|r| seen(i0 + r.min(nb - 1)).min(n_pad));
        let k_end = limits.iter().max().copied().unwrap_or(0).div_ceil(KB) * KB;
        // The block's queries (the last one repeated to fill it), scaled, dimension by dimension.
        let qrows: [&[f32]; QB] =
            std::array::from_fn(|r| &q[(i0 + r.min(nb - 1)) * q_stride..][..d]);
        for (dd, col) in qt.iter_mut().enumerate() {
            for r in 0..QB {
                col[r] = qrows[r][dd] * scale;
            }
        }
        for j0 in (0..k_end).step_by(KB) {
            let mut acc = [[0f32; KB]; QB];
            for (dd, qv) in qt.iter().enumerate() {
                let k: &[f32; KB] = kv.kt[dd * n_pad + j0..][..KB].try_into().expect("KB");
                outer_add(&mut acc, qv, k);
            }
            for (r, a) in acc.iter().enumerate() {
                probs[r * n_pad + j0..][..KB].copy_from_slice(a);
            }
        }
        for r in 0..nb {
            let p = &mut probs[r * n_pad..][..k_end];
            let (live, dead) = p.split_at_mut(limits[r]);
            // Lane-wise max and sum, and the exponentials in a loop of their own: each vectorises.
            let mut lanes = [f32::NEG_INFINITY; 8];
            let chunks = live.chunks_exact(8);
            let tail = chunks.remainder();
            for c in chunks {
                for i in 0..8 {
                    lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
                }
            }
            let max = lanes
                .iter()
                .chain(tail)
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            for x in live.iter_mut() {
                *x = exp_f32(*x - max);
            }
            let inv = 1.0 / lane_sum(live, |x| x);
            live.iter_mut().for_each(|x| *x *= inv);
            dead.fill(0.0);
        }
        for d0 in (0..d_pad).step_by(DB) {
            let mut acc = [[0f32; DB]; QB];
            for j in 0..k_end {
                let v: &[f32; DB] = kv.v[j * d_pad + d0..][..DB].try_into().expect("DB");
                let w: [f32; QB] = std::array::from_fn(|r| probs[r * n_pad + j]);
                outer_add(&mut acc, &w, v);
            }
            let width = d.saturating_sub(d0).min(DB);
            for r in 0..nb {
                out[(i0 + r) * out_stride + d0..][..width].copy_from_slice(&acc[r][..width]);
            }
        }
    }
}

impl CustomOp1 for CpuAttention {
    fn name(&self) -> &'static str {
        "distill-cpu-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
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
        let mut out = zeros(n * h);
        out.par_chunks_mut(t * h)
            .enumerate()
            .for_each(|(row, out_row)| {
                let len = self.lengths[row].min(t);
                if len == 0 {
                    return;
                }
                let base = row * t * width;
                let (mut kv, mut probs) = (PackedKv::default(), Vec::new());
                for head in 0..self.heads {
                    let (qo, ko, vo) = (head * hd, h + head * hd, 2 * h + head * hd);
                    kv.reset(len, hd);
                    for j in 0..len {
                        let at = base + j * width;
                        kv.set(j, &qkv[at + ko..][..hd], &qkv[at + vo..][..hd]);
                    }
                    kv.seal();
                    attend_head(
                        &qkv[base + qo..],
                        width,
                        len,
                        &kv,
                        |_| len,
                        self.scale,
                        &mut probs,
                        &mut out_row[qo..],
                        h,
                    );
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, h))))
    }
}

/// Exact (erf) GELU on the CPU: `0.5·x·(1 + erf(x/√2))`, in parallel chunks, with a rational erf
/// approximation (max abs error about 1e-7 on f32, see the test) that the compiler vectorises.
/// candle's `gelu_erf` calls libm's scalar `erf` per element, which cost a quarter of a forward pass.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuGeluErf;

/// erf(x) for f32: odd rational function on [-4, 4] (erf is ±1 to f32 precision beyond). Coefficients
/// of the rational approximation used by Eigen's `generic_fast_erf_float`.
#[inline]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ] {
        p = p.mul_add(x2, c);
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_473_9e-2,
    ] {
        q = q.mul_add(x2, c);
    }
    x * p / q
}

impl CustomOp1 for CpuGeluErf {
    fn name(&self) -> &'static str {
        "distill-cpu-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(storage, layout, "gelu")?;
        let mut out = input.to_vec();
        out.par_chunks_mut(1 << 14).for_each(gelu_erf_in_place);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Exact GELU of every value, in place.
pub(crate) fn gelu_erf_in_place(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf_f32(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// e^x in f32 by range reduction (x = n·ln 2 + r, |r| ≤ ln 2 / 2), a degree-6 polynomial for e^r and
/// 2^n through the exponent bits: relative error under 3e-7 (see the test), and unlike libm's `expf`
/// the compiler vectorises it. Inputs are clamped to [-87, 88].
#[inline]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-1.428_606_8e-6, n.mul_add(-0.693_145_75, x));
    let mut p: f32 = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    // 2^n without a float-to-int conversion (whose saturating semantics stop vectorisation): n + 127
    // lands in the low mantissa bits of 1.5·2^23, and the shift moves it into the exponent field.
    p * f32::from_bits((n + (127.0 + 12_582_912.0)).to_bits() << 23)
}

/// Rotary position embeddings: `cos`/`sin` of `position × inv_freq[i]` for every position up to a
/// limit, computed once in f64.
#[derive(Clone, Debug)]
pub struct Rotary {
    /// Dimensions rotated per head (even, at most the head dimension).
    pub dims: usize,
    /// Pairs `(2i, 2i+1)` (GGUF, whose converter permutes Q/K weights so) or halves `(i, i + d/2)`
    /// (HF checkpoints).
    pub interleaved: bool,
    /// `[positions, dims/2]`.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub positions: usize,
}

impl Rotary {
    /// Tables for `positions` positions; `inv_freq` has `dims/2` entries.
    pub fn new(inv_freq: &[f64], interleaved: bool, positions: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self {
            dims: 2 * half,
            interleaved,
            cos,
            sin,
            positions,
        }
    }

    /// Rotates one head's vector `x` (head dimension ≥ `dims`) at position `p`, in place.
    #[inline]
    pub fn apply(&self, x: &mut [f32], p: usize) {
        let half = self.dims / 2;
        let (c, s) = (&self.cos[p * half..][..half], &self.sin[p * half..][..half]);
        if self.interleaved {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * c[i] - b * s[i];
                x[2 * i + 1] = a * s[i] + b * c[i];
            }
        } else {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                x[i] = a * c[i] - b * s[i];
                x[i + half] = a * s[i] + b * c[i];
            }
        }
    }
}

/// Keys (rotated) and values of a run of earlier tokens at one layer, `[len, kv_heads, head_dim]`
/// each: what new tokens attend to before themselves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerKv {
    pub len: usize,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Causal grouped-query attention on the CPU, from the fused `[b·t, (H + 2·KV)·d]` QKV matrix (queries,
/// then keys, then values, head by head) to the `[b·t, H·d]` context matrix, with rotary embeddings
/// applied to queries and keys on the way in.
///
/// Rows are right-padded: a real token attends to itself and the real tokens before it, never to a
/// pad (pads come after it), so the causal mask alone is exact. Pads' outputs are left at zero. Work is
/// split by (row, key/value head): each unit packs its head's rotated keys and values once and serves
/// the query heads of its group.
///
/// With a `past` (a shared prompt prefix), every row's tokens sit at positions after it and attend to
/// all of it first; with `kv_out`, each row's own rotated keys and values are handed back (to become
/// the past of a continuation).
#[derive(Debug)]
pub(crate) struct CpuCausalAttention<'a> {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub lengths: &'a [usize],
    pub scale: f32,
    pub rotary: &'a Rotary,
    pub past: Option<&'a LayerKv>,
    pub kv_out: Option<&'a std::sync::Mutex<Vec<LayerKv>>>,
}

impl CustomOp1 for CpuCausalAttention<'_> {
    fn name(&self) -> &'static str {
        "distill-cpu-causal-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, width) = layout.shape().dims2()?;
        let d = self.head_dim;
        let (h, kv) = (self.heads, self.kv_heads);
        if n != self.batch * self.seq
            || width != (h + 2 * kv) * d
            || self.lengths.len() != self.batch
            || !h.is_multiple_of(kv)
        {
            candle_core::bail!(
                "causal attention: qkv shape {:?} does not fit batch {} × seq {} with {h} heads / {kv} kv heads of {d}",
                layout.shape(),
                self.batch,
                self.seq
            );
        }
        let past_len = self.past.map(|p| p.len).unwrap_or(0);
        if past_len + self.seq > self.rotary.positions {
            candle_core::bail!(
                "causal attention: {} positions but rotary tables for {}",
                past_len + self.seq,
                self.rotary.positions
            );
        }
        let qkv = contiguous_f32(storage, layout, "causal attention")?;
        let t = self.seq;
        let group = h / kv;
        let units: Vec<(usize, usize)> = (0..self.batch)
            .flat_map(|r| (0..kv).map(move |g| (r, g)))
            .filter(|&(r, _)| self.lengths[r].min(t) > 0)
            .collect();
        // Each unit: `[group, len, d]` outputs for its query heads, and its own keys and values.
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = units
            .par_iter()
            .map(|&(row, g)| {
                let len = self.lengths[row].min(t);
                let total = past_len + len;
                let base = row * t * width;
                let (ko, vo) = ((h + g) * d, (h + kv + g) * d);
                let mut packed = PackedKv::default();
                packed.reset(total, d);
                if let Some(p) = self.past {
                    for j in 0..past_len {
                        let at = (j * kv + g) * d;
                        packed.set(j, &p.k[at..at + d], &p.v[at..at + d]);
                    }
                }
                // The row's own rotated keys and values are kept only when they are handed back.
                let keep = self.kv_out.is_some();
                let (mut keys, mut values) = if keep {
                    (vec![0f32; len * d], vec![0f32; len * d])
                } else {
                    (vec![0f32; d], Vec::new())
                };
                for j in 0..len {
                    let kr = &mut keys[if keep { j * d } else { 0 }..][..d];
                    kr.copy_from_slice(&qkv[base + j * width + ko..][..d]);
                    self.rotary.apply(kr, past_len + j);
                    let v = &qkv[base + j * width + vo..][..d];
                    packed.set(past_len + j, kr, v);
                    if keep {
                        values[j * d..(j + 1) * d].copy_from_slice(v);
                    }
                }
                packed.seal();
                // This group's queries, rotated: `[group, len, d]`.
                let mut queries = vec![0f32; group * len * d];
                for qh in 0..group {
                    let head = g * group + qh;
                    for i in 0..len {
                        let qr = &mut queries[(qh * len + i) * d..][..d];
                        qr.copy_from_slice(&qkv[base + i * width + head * d..][..d]);
                        self.rotary.apply(qr, past_len + i);
                    }
                }
                let mut out = vec![0f32; group * len * d];
                let mut probs = Vec::new();
                for qh in 0..group {
                    let at = qh * len * d;
                    attend_head(
                        &queries[at..],
                        d,
                        len,
                        &packed,
                        |i| past_len + i + 1,
                        self.scale,
                        &mut probs,
                        &mut out[at..],
                        d,
                    );
                }
                if keep {
                    (out, keys, values)
                } else {
                    (out, vec![], vec![])
                }
            })
            .collect();
        let mut out = zeros(n * h * d);
        let mut kv_rows = self.kv_out.map(|_| {
            (0..self.batch)
                .map(|r| {
                    let len = self.lengths[r].min(t);
                    LayerKv {
                        len,
                        k: vec![0f32; len * kv * d],
                        v: vec![0f32; len * kv * d],
                    }
                })
                .collect::<Vec<_>>()
        });
        for (&(row, g), (part, keys, values)) in units.iter().zip(&parts) {
            let len = self.lengths[row].min(t);
            for qh in 0..group {
                let head = g * group + qh;
                for i in 0..len {
                    out[(row * t + i) * h * d + head * d..][..d]
                        .copy_from_slice(&part[(qh * len + i) * d..][..d]);
                }
            }
            if let Some(rows) = kv_rows.as_mut() {
                let r = &mut rows[row];
                for j in 0..len {
                    let at = (j * kv + g) * d;
                    r.k[at..at + d].copy_from_slice(&keys[j * d..(j + 1) * d]);
                    r.v[at..at + d].copy_from_slice(&values[j * d..(j + 1) * d]);
                }
            }
        }
        if let (Some(sink), Some(rows)) = (self.kv_out, kv_rows) {
            *sink.lock().expect("poisoned") = rows;
        }
        Ok((CpuStorage::F32(out), Shape::from((n, h * d))))
    }
}

/// `silu(gate) · up` on the CPU from `[n, 2·f]` (gate columns first, then up) to `[n, f]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuSiluMul;

impl CustomOp1 for CpuSiluMul {
    fn name(&self) -> &'static str {
        "distill-cpu-silu-mul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, w) = layout.shape().dims2()?;
        let f = w / 2;
        let x = contiguous_f32(storage, layout, "silu-mul")?;
        let mut out = zeros(n * f);
        out.par_chunks_mut(f)
            .zip(x.par_chunks(w))
            .for_each(|(o, row)| silu_mul_row(row, o));
        Ok((CpuStorage::F32(out), Shape::from((n, f))))
    }
}

/// `silu(gate) · up` of one row `[gate…, up…]` into `out` (half its width).
#[inline]
pub(crate) fn silu_mul_row(row: &[f32], out: &mut [f32]) {
    let (gate, up) = row.split_at(out.len());
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_f32(-g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn blocked_attention_matches_the_definition() {
        // Head sizes off the blocks (d = 13, 40), query counts off the blocks, causal and full.
        for (d, nq, past) in [
            (13usize, 6usize, 0usize),
            (40, 9, 5),
            (64, 1, 0),
            (32, 27, 0),
        ] {
            let n = past + nq;
            let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5;
            let keys: Vec<f32> = (0..n * d).map(val).collect();
            let values: Vec<f32> = (0..n * d).map(|i| val(i + 17)).collect();
            let queries: Vec<f32> = (0..nq * d).map(|i| val(i + 331)).collect();
            let mut kv = PackedKv::default();
            kv.reset(n, d);
            for j in 0..n {
                kv.set(j, &keys[j * d..][..d], &values[j * d..][..d]);
            }
            kv.seal();
            for causal in [false, true] {
                let seen = |i: usize| if causal { past + i + 1 } else { n };
                let scale = 1.0 / (d as f32).sqrt();
                let mut out = vec![0f32; nq * d];
                attend_head(
                    &queries,
                    d,
                    nq,
                    &kv,
                    seen,
                    scale,
                    &mut Vec::new(),
                    &mut out,
                    d,
                );
                for i in 0..nq {
                    let q = &queries[i * d..][..d];
                    let s: Vec<f64> = (0..seen(i))
                        .map(|j| {
                            let k = &keys[j * d..][..d];
                            q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                    for dd in 0..d {
                        let want: f64 = s
                            .iter()
                            .enumerate()
                            .map(|(j, x)| (x - max).exp() / z * values[j * d + dd] as f64)
                            .sum();
                        let got = out[i * d + dd] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "d {d} query {i} dim {dd}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

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
    fn fast_exp_matches_libm() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let exact = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64 - exact) / exact).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst}");
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
