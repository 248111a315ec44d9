//! Classification metrics: accuracy, macro-F1, agreement, expected calibration error, latency
//! quantiles.

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// Unweighted mean over classes of F1 (classes absent from both `pred` and `gold` are skipped).
pub fn macro_f1(pred: &[usize], gold: &[usize], classes: usize) -> f64 {
    let mut sum = 0.0;
    let mut n = 0;
    for c in 0..classes {
        let tp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g == c)
            .count() as f64;
        let fp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g != c)
            .count() as f64;
        let fneg = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p != c && **g == c)
            .count() as f64;
        if tp + fp + fneg == 0.0 {
            continue;
        }
        sum += 2.0 * tp / (2.0 * tp + fp + fneg);
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Expected calibration error with `bins` equal-width confidence bins.
pub fn ece(probs: &[Vec<f32>], gold: &[usize], bins: usize) -> f64 {
    let mut conf = vec![0.0f64; bins];
    let mut acc = vec![0.0f64; bins];
    let mut count = vec![0usize; bins];
    for (p, &g) in probs.iter().zip(gold) {
        let k = argmax(p);
        let c = p[k] as f64;
        let b = ((c * bins as f64) as usize).min(bins - 1);
        conf[b] += c;
        acc[b] += (k == g) as u8 as f64;
        count[b] += 1;
    }
    let n = gold.len().max(1) as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (acc[b] - conf[b]).abs() / n)
        .sum()
}

/// Softmax probabilities of logits rows.
pub fn probabilities(logits: &[Vec<f32>]) -> Vec<Vec<f32>> {
    logits
        .iter()
        .map(|z| {
            let mut p = vec![0.0; z.len()];
            softmax(z, 1.0, &mut p);
            p
        })
        .collect()
}

/// The `q`-quantile (0..=1) of `xs` by nearest rank.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Softmax of `x / t` into `out`.
pub fn softmax(x: &[f32], t: f32, out: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut z = 0.0;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v - m) / t).exp();
        z += *o;
    }
    out.iter_mut().for_each(|o| *o /= z);
}

/// Log-softmax of `x / t`.
pub fn log_softmax(x: &[f32], t: f32) -> Vec<f32> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = x.iter().map(|&v| ((v - m) / t).exp()).sum::<f32>().ln();
    x.iter().map(|&v| (v - m) / t - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_a_hand_checked_example() {
        let gold = [0, 0, 1, 1, 2];
        let pred = [0, 1, 1, 1, 0];
        assert!((accuracy(&pred, &gold) - 0.6).abs() < 1e-12);
        // F1: class 0: tp1 fp1 fn1 → 0.5; class 1: tp2 fp1 fn0 → 0.8; class 2: tp0 fn1 → 0.
        assert!((macro_f1(&pred, &gold, 3) - 1.3 / 3.0).abs() < 1e-12);
        // Two predictions at confidence 0.9 (one right), one at 0.6 (right): bins 9 and 6.
        let probs = vec![vec![0.9, 0.1], vec![0.1, 0.9], vec![0.6, 0.4]];
        let e = ece(&probs, &[0, 0, 0], 10);
        assert!(
            (e - ((1.0f64 - 1.8).abs() / 3.0 + (1.0f64 - 0.6).abs() / 3.0)).abs() < 1e-6,
            "{e}"
        );
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.99), 4.0);
    }
}
