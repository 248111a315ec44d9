//! Stratified k-fold cross-validation on gold labels, shared by the few-shot head (which chooses its
//! `C` and temperature with it) and the calibration of prompted teachers (which chooses a
//! calibration): the folds, and out-of-fold scores of a fitted [`LinearHead`].

use crate::metrics::log_softmax;
use crate::metrics::{accuracy, argmax, macro_f1};
use crate::rng::Rng;
use distill_cache::task::LinearHead;

/// Stratified folds: each class's examples dealt round-robin after a seeded shuffle (`stream` names
/// the random stream, so two users of the same seed draw independent folds).
pub fn folds(y: &[usize], k: usize, seed: u64, stream: &str) -> Vec<usize> {
    let mut fold = vec![0; y.len()];
    let classes = y.iter().max().map(|m| m + 1).unwrap_or(0);
    let mut rng = Rng::derive(seed, stream, 0);
    let mut next = 0;
    for c in 0..classes {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        rng.shuffle(&mut idx);
        for i in idx {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// The folds a gold set of `n` examples allows: `k`, but at least 2 and at most `n`.
pub fn fold_count(k: usize, n: usize) -> usize {
    k.clamp(2, n.max(2))
}

/// Every example's scores from a head fitted without its fold. `fit` gets the fold's index and its
/// training rows.
pub fn out_of_fold(
    x: &[Vec<f32>],
    y: &[usize],
    fold: &[usize],
    k: usize,
    classes: usize,
    mut fit: impl FnMut(usize, &[Vec<f32>], &[usize]) -> LinearHead,
) -> Vec<Vec<f32>> {
    let mut scores = vec![vec![0f32; classes]; y.len()];
    for f in 0..k {
        let (mut tx, mut ty) = (vec![], vec![]);
        for i in 0..y.len() {
            if fold[i] != f {
                tx.push(x[i].clone());
                ty.push(y[i]);
            }
        }
        if tx.is_empty() {
            continue;
        }
        let head = fit(f, &tx, &ty);
        for i in (0..y.len()).filter(|&i| fold[i] == f) {
            head.apply(&x[i], &mut scores[i]);
        }
    }
    scores
}

/// Accuracy, macro-F1 and mean log-loss (at temperature `t`) of scores against the gold classes.
pub fn score(scores: &[Vec<f32>], y: &[usize], classes: usize, t: f32) -> (f64, f64, f64) {
    let pred: Vec<usize> = scores.iter().map(|s| argmax(s)).collect();
    (
        accuracy(&pred, y),
        macro_f1(&pred, y, classes),
        log_loss(scores, y, t),
    )
}

/// Mean negative log-likelihood of the gold classes under softmax(scores / t).
pub fn log_loss(scores: &[Vec<f32>], y: &[usize], t: f32) -> f64 {
    let n = y.len().max(1) as f64;
    scores
        .iter()
        .zip(y)
        .map(|(s, &c)| -(log_softmax(s, t)[c] as f64))
        .sum::<f64>()
        / n
}

/// The temperature that minimises the log-loss of `scores` (golden-section search over log t in
/// [0.25, 10]; the loss is unimodal in t for fixed scores). The range is bounded on purpose: when
/// every out-of-fold prediction is right the loss keeps falling as t → 0, and soft labels sharpened
/// without bound would be hard labels.
pub fn fit_temperature(scores: &[Vec<f32>], y: &[usize]) -> f32 {
    let f = |lt: f64| log_loss(scores, y, lt.exp() as f32);
    let (mut a, mut b) = (0.25f64.ln(), 10f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_and_seeded() {
        let y: Vec<usize> = (0..30).map(|i| usize::from(i % 3 == 0)).collect();
        let f = folds(&y, 5, 1, "t");
        for k in 0..5 {
            let ones = (0..30).filter(|&i| f[i] == k && y[i] == 1).count();
            assert_eq!(ones, 2, "class 1 (10 examples) spread 2 per fold");
        }
        assert_eq!(f, folds(&y, 5, 1, "t"));
        assert_ne!(f, folds(&y, 5, 2, "t"));
        assert_eq!(fold_count(10, 3), 3);
        assert_eq!(fold_count(1, 100), 2);
    }

    #[test]
    fn temperature_recovers_the_scale_of_overconfident_scores() {
        // Scores drawn as calibrated logits, then multiplied by 3: the best temperature is ~3.
        let mut rng = Rng::derive(5, "temp", 0);
        let (mut s, mut y) = (vec![], vec![]);
        for _ in 0..4000 {
            let z = 1.5 * rng.normal();
            let p1 = 1.0 / (1.0 + (-z).exp());
            let c = usize::from(rng.next_f32() < p1);
            s.push(vec![0.0, 3.0 * z]);
            y.push(c);
        }
        let t = fit_temperature(&s, &y);
        assert!((t - 3.0).abs() < 0.3, "{t}");
        assert!(log_loss(&s, &y, t) < log_loss(&s, &y, 1.0));
    }
}
