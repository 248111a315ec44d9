//! Output heads shared by the architectures: padding masks, pooling into one vector per row, and the
//! per-position statistics of a next-token distribution that a `token_topk` entry keeps (top-k,
//! tail mass, log-partition, seeded samples).

use candle_core::{Device, IndexOp, Tensor, D};

/// `[b, t]` f32 mask: 1 at each row's real tokens, 0 at padding.
pub fn padding_mask(
    (b, t): (usize, usize),
    lengths: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut mask = vec![0f32; b * t];
    for (i, &len) in lengths.iter().enumerate() {
        mask[i * t..i * t + len.min(t)]
            .iter_mut()
            .for_each(|m| *m = 1.0);
    }
    Tensor::from_vec(mask, (b, t), device)
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

/// [`pool`] (then, with `normalize`, [`l2_normalize`]) on the host for token states `[b, t, h]` in a
/// contiguous f32 CPU tensor: rows in parallel, each over its own `lengths[i]` real tokens only (padded
/// states are never read). `None` for any other tensor.
pub fn pool_host(
    states: &Tensor,
    lengths: &[usize],
    pooling: distill_cache::model_dir::Pooling,
    normalize: bool,
) -> candle_core::Result<Option<Vec<f32>>> {
    use distill_cache::model_dir::Pooling;
    use rayon::prelude::*;
    let (b, t, h) = states.dims3()?;
    if lengths.len() != b {
        candle_core::bail!("pool: {} lengths for {b} rows", lengths.len());
    }
    Ok(crate::cpu::with_host(states, |x| {
        let mut out = vec![0f32; b * h];
        out.par_chunks_mut(h.max(1))
            .zip(lengths)
            .enumerate()
            .for_each(|(row, (o, &len))| {
                let tokens = x[row * t * h..][..len.min(t) * h].chunks(h);
                match pooling {
                    Pooling::Cls => o.copy_from_slice(&x[row * t * h..][..h]),
                    Pooling::Mean => {
                        tokens.for_each(|s| o.iter_mut().zip(s).for_each(|(o, s)| *o += s));
                        let n = len.min(t) as f32;
                        o.iter_mut().for_each(|o| *o /= n);
                    }
                    Pooling::Max => {
                        o.fill(f32::NEG_INFINITY);
                        tokens.for_each(|s| o.iter_mut().zip(s).for_each(|(o, s)| *o = o.max(*s)));
                    }
                }
                if normalize {
                    let norm = o.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    o.iter_mut().for_each(|v| *v /= norm);
                }
            });
        out
    }))
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

/// What a `token_topk` entry keeps of one position's distribution, written into the caller's slices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PositionStats {
    /// log(Σ probability outside the top-k); −∞ when the top-k hold everything.
    pub tail_logprob: f32,
    /// logsumexp of the raw logits.
    pub log_partition: f32,
}

/// From one position's raw logits (temperature 1): the `k` most likely ids sorted by descending
/// log-probability (ties: lower id first) with their log-probabilities, the tail and the
/// log-partition. The tail is summed directly over the ids outside the top-k in f64, never as
/// `1 − Σ top-k` (which loses everything to rounding when the top-k hold nearly all the mass).
pub fn topk_position(logits: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> PositionStats {
    let mut acc = SlicedTopk::new(ids.len());
    acc.add(0, logits);
    acc.finish(ids, logprobs)
}

/// The top-k of one slice of a position's logits, with its mass relative to the slice's maximum:
/// `(top, max, total, rest)`, `rest` the mass of the ids outside `top`.
fn slice_topk(logits: &[f32], k: usize) -> (Vec<(f32, u32)>, f32, f64, f64) {
    let k = k.min(logits.len());
    // Pass 1: the top-k (a sorted buffer; most logits fail the first comparison) and the maximum.
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    let mut kth = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if top.len() < k || l > kth {
            let at = top.partition_point(|&(v, _)| v >= l);
            top.insert(at, (l, i as u32));
            if top.len() > k {
                top.pop();
            }
            if top.len() == k {
                kth = top[k - 1].0;
            }
        }
    }
    let max = top[0].0;
    // Pass 2: the partition function and the mass strictly below the k-th value; values equal to
    // the k-th that did not make the top-k go to the rest too.
    // f32 exponentials (vectorised, relative error 3e-7) summed in f64, block by block.
    let (mut total, mut below, mut ties) = (0f64, 0f64, 0usize);
    for block in logits.chunks(256) {
        let (mut t, mut b) = (0f32, 0f32);
        for &l in block {
            let e = crate::cpu::exp_f32(l - max);
            t += e;
            b += if l < kth { e } else { 0.0 };
            ties += (l == kth) as usize;
        }
        total += t as f64;
        below += b as f64;
    }
    let selected_ties = top.iter().filter(|(v, _)| *v == kth).count();
    let rest = below + (ties - selected_ties) as f64 * ((kth - max) as f64).exp();
    (top, max, total, rest)
}

/// One position's top-k, tail and log-partition gathered over slices of its vocabulary (a head that
/// never holds a position's whole logits). Each slice keeps its own top-k as candidates and its other
/// ids' mass; the final top-k is the best of the candidates, and the tail adds the slices' rest to the
/// candidates left out — sums of positive terms only, as [`topk_position`] (one slice) computes them.
#[derive(Clone, Debug)]
pub struct SlicedTopk {
    k: usize,
    /// `(value, id)` of every slice's top-k.
    candidates: Vec<(f32, u32)>,
    /// `(max, total, rest)` of every slice, relative to its max.
    slices: Vec<(f32, f64, f64)>,
}

impl SlicedTopk {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            candidates: Vec::new(),
            slices: Vec::new(),
        }
    }

    /// The logits of ids `first..first + logits.len()`.
    pub fn add(&mut self, first: u32, logits: &[f32]) {
        if logits.is_empty() {
            return;
        }
        let (top, max, total, rest) = slice_topk(logits, self.k);
        self.candidates
            .extend(top.into_iter().map(|(v, i)| (v, i + first)));
        self.slices.push((max, total, rest));
    }

    /// Writes the top-k ids and log-probabilities (`ids.len()` = k, at most the ids seen).
    pub fn finish(mut self, ids: &mut [u32], logprobs: &mut [f32]) -> PositionStats {
        let max = self
            .slices
            .iter()
            .map(|s| s.0)
            .fold(f32::NEG_INFINITY, f32::max);
        let scale = |m: f32| ((m - max) as f64).exp();
        let total: f64 = self.slices.iter().map(|&(m, t, _)| t * scale(m)).sum();
        let mut tail: f64 = self.slices.iter().map(|&(m, _, r)| r * scale(m)).sum();
        self.candidates
            .sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let k = ids.len();
        tail += self.candidates[k..]
            .iter()
            .map(|&(v, _)| ((v - max) as f64).exp())
            .sum::<f64>();
        let log_total = total.ln();
        for (j, &(v, id)) in self.candidates[..k].iter().enumerate() {
            ids[j] = id;
            logprobs[j] = ((v - max) as f64 - log_total) as f32;
        }
        PositionStats {
            tail_logprob: if tail > 0.0 {
                (tail.ln() - log_total) as f32
            } else {
                f32::NEG_INFINITY
            },
            log_partition: (max as f64 + log_total) as f32,
        }
    }
}

/// A small deterministic generator (SplitMix64) for sampled tokens.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The generator of one position: depends on the seed, the row and the position only, so a row's
    /// samples do not depend on its batch or window.
    pub fn for_position(seed: u64, row: u64, position: u64) -> Self {
        let mut g = Self(seed ^ row.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        g.next_u64();
        let mut g = Self(g.next_u64() ^ position.wrapping_mul(0xc2b2_ae3d_27d4_eb4f));
        g.next_u64();
        g
    }
}

/// `draws` samples from the softmax of `logits` (temperature 1), as distinct ids ascending with their
/// counts, appended to `ids`/`counts`. One pass over the vocabulary with sorted uniforms.
pub fn sample_position(
    logits: &[f32],
    log_partition: f32,
    draws: usize,
    rng: &mut SplitMix64,
    ids: &mut Vec<u32>,
    counts: &mut Vec<u16>,
) {
    if draws == 0 {
        return;
    }
    let mut u: Vec<f64> = (0..draws).map(|_| rng.next_f64()).collect();
    u.sort_by(f64::total_cmp);
    let lse = log_partition as f64;
    let (mut cum, mut next) = (0f64, 0usize);
    for (i, &l) in logits.iter().enumerate() {
        cum += (l as f64 - lse).exp();
        let mut c = 0u16;
        while next < draws && u[next] < cum {
            c += 1;
            next += 1;
        }
        if c > 0 {
            ids.push(i as u32);
            counts.push(c);
        }
        if next == draws {
            return;
        }
    }
    // Rounding left the cumulative sum a hair under 1: the last draws go to the most likely id.
    if next < draws {
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0);
        let rest = (draws - next) as u16;
        match ids.iter().position(|&x| x == best) {
            Some(p) => counts[p] += rest,
            None => {
                let at = ids.partition_point(|&x| x < best);
                ids.insert(at, best);
                counts.insert(at, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log-softmax in f64, written out for the test.
    fn log_softmax(l: &[f32]) -> Vec<f64> {
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum();
        l.iter().map(|&x| x as f64 - m - s.ln()).collect()
    }

    #[test]
    fn host_pooling_matches_the_definition_and_skips_padding() {
        use distill_cache::model_dir::Pooling;
        let (b, t, h) = (3usize, 5usize, 7usize);
        let lengths = [5usize, 2, 1];
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 250.0) - 2.0;
        let mut x: Vec<f32> = (0..b * t * h).map(val).collect();
        // Padded states are unspecified: NaN here, which must not reach any output.
        for (row, &len) in lengths.iter().enumerate() {
            x[(row * t + len) * h..(row + 1) * t * h].fill(f32::NAN);
        }
        let states = Tensor::from_vec(x.clone(), (b, t, h), &Device::Cpu).unwrap();
        for pooling in [Pooling::Mean, Pooling::Max, Pooling::Cls] {
            for normalize in [false, true] {
                let got = pool_host(&states, &lengths, pooling, normalize)
                    .unwrap()
                    .expect("a CPU tensor");
                for (row, &len) in lengths.iter().enumerate() {
                    let token = |j: usize, k: usize| x[(row * t + j) * h + k] as f64;
                    let mut want: Vec<f64> = (0..h)
                        .map(|k| match pooling {
                            Pooling::Mean => {
                                (0..len).map(|j| token(j, k)).sum::<f64>() / len as f64
                            }
                            Pooling::Max => (0..len).map(|j| token(j, k)).fold(f64::MIN, f64::max),
                            Pooling::Cls => token(0, k),
                        })
                        .collect();
                    if normalize {
                        let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
                        want.iter_mut().for_each(|v| *v /= norm);
                    }
                    for k in 0..h {
                        let g = got[row * h + k] as f64;
                        assert!(
                            (g - want[k]).abs() < 1e-6,
                            "{pooling:?} normalize {normalize} row {row} dim {k}: {g} vs {}",
                            want[k]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn topk_tail_and_partition_match_a_direct_computation() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 5.0)
            .collect();
        let k = 20;
        let (mut ids, mut lp) = (vec![0u32; k], vec![0f32; k]);
        let s = topk_position(&logits, &mut ids, &mut lp);
        let reference = log_softmax(&logits);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| reference[b].total_cmp(&reference[a]).then(a.cmp(&b)));
        for j in 0..k {
            assert_eq!(ids[j] as usize, order[j]);
            assert!((lp[j] as f64 - reference[order[j]]).abs() < 1e-5);
        }
        let tail: f64 = order[k..].iter().map(|&i| reference[i].exp()).sum();
        assert!((s.tail_logprob as f64 - tail.ln()).abs() < 1e-5);
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + logits
            .iter()
            .map(|&x| (x as f64 - m).exp())
            .sum::<f64>()
            .ln();
        assert!((s.log_partition as f64 - lse).abs() < 1e-4);
        let total: f64 =
            lp.iter().map(|&x| (x as f64).exp()).sum::<f64>() + (s.tail_logprob as f64).exp();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    #[test]
    fn a_peaked_distribution_keeps_its_tail() {
        // One logit far above the rest: 1 − Σ top-1 rounds to 0 in f32, the direct sum does not.
        let mut logits = vec![0f32; 50_000];
        logits[123] = 30.0;
        let (mut ids, mut lp) = (vec![0u32; 1], vec![0f32; 1]);
        let s = topk_position(&logits, &mut ids, &mut lp);
        assert_eq!(ids[0], 123);
        let expect = (49_999f64).ln() - 30.0; // log(Σ e^0) − log(e^30 + …) ≈ ln 49999 − 30
        assert!(
            (s.tail_logprob as f64 - expect).abs() < 1e-4,
            "{}",
            s.tail_logprob
        );
        assert!(s.tail_logprob.is_finite());
    }

    #[test]
    fn ties_at_the_kth_value_go_to_the_lower_id_and_the_rest_to_the_tail() {
        let logits = vec![1.0f32, 3.0, 2.0, 2.0, 2.0];
        let (mut ids, mut lp) = (vec![0u32; 2], vec![0f32; 2]);
        let s = topk_position(&logits, &mut ids, &mut lp);
        assert_eq!(ids, vec![1, 2]);
        let r = log_softmax(&logits);
        let tail = r[0].exp() + r[3].exp() + r[4].exp();
        assert!((s.tail_logprob as f64 - tail.ln()).abs() < 1e-6);
    }

    #[test]
    fn everything_in_the_topk_leaves_no_tail() {
        let logits = vec![0.5f32, -1.0, 2.0];
        let (mut ids, mut lp) = (vec![0u32; 3], vec![0f32; 3]);
        let s = topk_position(&logits, &mut ids, &mut lp);
        assert_eq!(ids, vec![2, 0, 1]);
        assert_eq!(s.tail_logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn samples_are_deterministic_and_follow_the_distribution() {
        let logits = vec![0.0f32, (3.0f32).ln(), -50.0, (6.0f32).ln()]; // p = 0.1, 0.3, ~0, 0.6
        let lse = (10.0f32).ln();
        let draw = |seed| {
            let (mut ids, mut counts) = (vec![], vec![]);
            sample_position(
                &logits,
                lse,
                10_000,
                &mut SplitMix64::for_position(seed, 3, 5),
                &mut ids,
                &mut counts,
            );
            (ids, counts)
        };
        let (ids, counts) = draw(42);
        assert_eq!(draw(42), (ids.clone(), counts.clone()));
        assert_ne!(draw(43), (ids.clone(), counts.clone()));
        assert_eq!(counts.iter().map(|&c| c as usize).sum::<usize>(), 10_000);
        assert!(!ids.contains(&2));
        let share = |id| counts[ids.iter().position(|&x| x == id).unwrap()] as f64 / 1e4;
        assert!(
            (share(0) - 0.1).abs() < 0.02
                && (share(1) - 0.3).abs() < 0.02
                && (share(3) - 0.6).abs() < 0.02
        );
    }

    #[test]
    fn slices_of_the_vocabulary_give_what_the_whole_does() {
        let mut logits: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919 % 1000) as f32 / 97.0).sin() * 6.0)
            .collect();
        logits[4321] = 25.0; // a peaked position keeps its tail
        logits[17] = 3.0;
        logits[2500] = 3.0; // ties at the k-th value cross a slice edge
        for k in [1usize, 5, 20] {
            let (mut a_ids, mut a_lp) = (vec![0u32; k], vec![0f32; k]);
            let whole = topk_position(&logits, &mut a_ids, &mut a_lp);
            for width in [1usize, 7, 1000, 4999] {
                let mut acc = SlicedTopk::new(k);
                for (i, s) in logits.chunks(width).enumerate() {
                    acc.add((i * width) as u32, s);
                }
                let (mut ids, mut lp) = (vec![0u32; k], vec![0f32; k]);
                let got = acc.finish(&mut ids, &mut lp);
                assert_eq!(ids, a_ids, "k {k}, slices of {width}");
                for (x, y) in lp.iter().zip(&a_lp) {
                    assert!((x - y).abs() < 1e-5, "k {k}, slices of {width}: {x} vs {y}");
                }
                assert!((got.log_partition - whole.log_partition).abs() < 1e-5);
                let rel = ((got.tail_logprob - whole.tail_logprob) as f64).abs();
                assert!(
                    rel < 1e-4,
                    "tail {} vs {}",
                    got.tail_logprob,
                    whole.tail_logprob
                );
            }
        }
    }
}
