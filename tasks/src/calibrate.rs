//! Calibration of a prompted teacher's class scores on the gold labels.
//!
//! A prompted LLM's raw scores (log-probabilities of each choice's continuation) are biased: one
//! answer is likelier than another whatever the text. Three calibrations of the scores are compared by
//! stratified k-fold cross-validation on the gold labels, and the best refitted on all of them:
//! - `none`: the raw scores (the zero-shot teacher);
//! - `bias`: a bias per class (contextual calibration: scores + b, b fitted by maximum likelihood);
//! - `head`: a small multinomial logistic regression on the scores (a C × C matrix and biases, L2).
//!
//! Each becomes a [`LinearHead`] over the C scores, so the calibrated task is an ordinary derived
//! logits entry.

use crate::logreg::{self, LogRegOptions};
use crate::metrics::log_softmax;
use distill_cache::task::LinearHead;
use serde::{Deserialize, Serialize};

/// A calibration of class scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    None,
    Bias,
    Head,
}

/// One calibration's cross-validated figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CvFigures {
    pub calibration: Calibration,
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// What cross-validation found, and what was chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub folds: usize,
    pub chosen: Calibration,
    pub figures: Vec<CvFigures>,
}

/// The head that passes `classes` scores through, plus `bias`.
pub fn identity(classes: usize, bias: Vec<f32>) -> LinearHead {
    let mut weight = vec![0f32; classes * classes];
    for c in 0..classes {
        weight[c * classes + c] = 1.0;
    }
    LinearHead {
        classes,
        dim: classes,
        weight,
        bias,
        normalize_input: false,
    }
}

/// Biases that maximise the likelihood of `y` under softmax(x + b): gradient descent on a convex
/// objective (the gradient is the mean of softmax − one-hot).
pub fn fit_bias(x: &[Vec<f32>], y: &[usize], classes: usize) -> Vec<f32> {
    let mut b = vec![0f64; classes];
    let n = x.len().max(1) as f64;
    for _ in 0..2000 {
        let mut g = vec![0f64; classes];
        for (xi, &yi) in x.iter().zip(y) {
            let z: Vec<f32> = xi.iter().zip(&b).map(|(v, bb)| v + *bb as f32).collect();
            let ls = log_softmax(&z, 1.0);
            for c in 0..classes {
                g[c] += (ls[c] as f64).exp() - if c == yi { 1.0 } else { 0.0 };
            }
        }
        let norm: f64 = g.iter().map(|v| (v / n).powi(2)).sum::<f64>().sqrt();
        for (bc, gc) in b.iter_mut().zip(&g) {
            *bc -= 1.0 * gc / n;
        }
        if norm < 1e-7 {
            break;
        }
    }
    // Only differences matter: centre them.
    let mean = b.iter().sum::<f64>() / classes as f64;
    b.iter().map(|v| (v - mean) as f32).collect()
}

/// Fits one calibration on `(x, y)`.
pub fn fit(kind: Calibration, x: &[Vec<f32>], y: &[usize], classes: usize) -> LinearHead {
    match kind {
        Calibration::None => identity(classes, vec![0.0; classes]),
        Calibration::Bias => identity(classes, fit_bias(x, y, classes)),
        Calibration::Head => logreg::fit(
            x,
            y,
            classes,
            LogRegOptions {
                c: 1.0,
                normalize_input: false,
                ..Default::default()
            },
        ),
    }
}

/// Compares the calibrations by `k`-fold cross-validation and refits the best on everything. Ties go
/// to the simpler calibration.
pub fn choose(
    x: &[Vec<f32>],
    y: &[usize],
    classes: usize,
    k: usize,
    seed: u64,
) -> (LinearHead, CalibrationReport) {
    let k = crate::cv::fold_count(k, x.len());
    let fold = crate::cv::folds(y, k, seed, "calibration-folds");
    let mut figures = Vec::new();
    for kind in [Calibration::None, Calibration::Bias, Calibration::Head] {
        let scores = crate::cv::out_of_fold(x, y, &fold, k, classes, |_, tx, ty| {
            fit(kind, tx, ty, classes)
        });
        let (accuracy, macro_f1, _) = crate::cv::score(&scores, y, classes, 1.0);
        figures.push(CvFigures {
            calibration: kind,
            accuracy,
            macro_f1,
        });
    }
    let best = figures
        .iter()
        .fold(&figures[0], |b, f| {
            if f.accuracy > b.accuracy + 1e-12 {
                f
            } else {
                b
            }
        })
        .calibration;
    (
        fit(best, x, y, classes),
        CalibrationReport {
            folds: k,
            chosen: best,
            figures,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::argmax;
    use crate::rng::Rng;

    /// A scorer biased towards class 0 by `shift`: class `c` scores `signal·[c == y] − shift·[c != 0]`
    /// plus noise.
    fn biased(n: usize, shift: f32, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = Rng::derive(seed, "biased", 0);
        let (mut x, mut y) = (vec![], vec![]);
        for i in 0..n {
            let yi = i % 2;
            let row: Vec<f32> = (0..2)
                .map(|c| {
                    let signal = if c == yi { 1.0 } else { 0.0 };
                    let bias = if c == 0 { shift } else { 0.0 };
                    signal + bias + 0.6 * rng.normal()
                })
                .collect();
            x.push(row);
            y.push(yi);
        }
        (x, y)
    }

    #[test]
    fn bias_calibration_recovers_the_scorers_bias() {
        let (x, y) = biased(2000, 1.5, 1);
        let b = fit_bias(&x, &y, 2);
        // The fitted bias undoes the shift: b1 − b0 ≈ 1.5.
        assert!(((b[1] - b[0]) - 1.5).abs() < 0.15, "{b:?}");
    }

    #[test]
    fn cross_validation_prefers_a_calibration_over_biased_raw_scores() {
        let (x, y) = biased(100, 1.5, 2);
        let (head, report) = choose(&x, &y, 2, 5, 0);
        let raw = report.figures[0].accuracy;
        let chosen = report
            .figures
            .iter()
            .find(|f| f.calibration == report.chosen)
            .unwrap();
        assert_ne!(report.chosen, Calibration::None, "{report:?}");
        assert!(chosen.accuracy > raw + 0.1, "{report:?}");
        // On fresh data the calibrated head beats the raw scores too.
        let (tx, ty) = biased(1000, 1.5, 3);
        let acc = |h: &LinearHead| {
            let mut z = vec![0f32; 2];
            tx.iter()
                .zip(&ty)
                .filter(|(xi, &yi)| {
                    h.apply(xi, &mut z);
                    argmax(&z) == yi
                })
                .count() as f64
                / 1000.0
        };
        assert!(acc(&head) > acc(&identity(2, vec![0.0; 2])) + 0.1);
    }

    #[test]
    fn unbiased_scores_stay_uncalibrated_on_ties() {
        // Perfectly separable, unbiased scores: every calibration scores 100%, the simplest wins.
        let x: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                if i % 2 == 0 {
                    vec![1.0, -1.0]
                } else {
                    vec![-1.0, 1.0]
                }
            })
            .collect();
        let y: Vec<usize> = (0..20).map(|i| i % 2).collect();
        let (_, report) = choose(&x, &y, 2, 5, 0);
        assert_eq!(report.chosen, Calibration::None);
    }
}
