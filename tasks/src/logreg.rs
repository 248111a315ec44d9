//! Multinomial logistic regression with L2, fitted by L-BFGS (ten pairs of history, backtracking
//! Armijo line search) in f64. The objective is scikit-learn's, divided by `C·n`:
//! `mean CE + ‖W‖² / (2·C·n)` (the bias is not penalised), so `C` means what it means there; the
//! tests check the fitted probabilities against scikit-learn's (`scripts/logreg_reference.py`).
//!
//! [`fit_cv`] chooses `C` as scikit-learn's `LogisticRegressionCV(scoring="neg_log_loss")` does —
//! stratified k-fold cross-validation over a grid, the lowest out-of-fold log-loss (ties: the higher
//! accuracy), among the `C`s whose macro-F1 is within five points of the grid's best ([`choose`]:
//! the guard against a near-constant head) — then the temperature of the head's soft labels on the
//! same out-of-fold scores, and reports the cross-validated accuracy and macro-F1: an estimate of the
//! teacher's quality before any test set. Log-loss, not accuracy: with ~100 labels the accuracy of
//! a fold moves in steps of 5% and chose poorly regularised heads (measured on the quickstart's task:
//! 66.5% against 68.3% for C = 1, three draws), while the log-loss ranks every C smoothly.

use crate::cv;
use distill_cache::task::LinearHead;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Fit options.
#[derive(Clone, Copy, Debug)]
pub struct LogRegOptions {
    /// Inverse regularisation strength (scikit-learn's `C`).
    pub c: f64,
    /// L-BFGS iterations at most.
    pub max_iter: usize,
    /// Stop when the gradient's norm is below this.
    pub tol: f64,
    pub normalize_input: bool,
}

impl Default for LogRegOptions {
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-6,
            normalize_input: true,
        }
    }
}

/// The objective over a data set: rows flattened in f64, the parameters laid out as the class
/// weights (`classes × dim`, row-major) then the biases.
struct Problem<'a> {
    x: Vec<f64>,
    y: &'a [usize],
    dim: usize,
    classes: usize,
    /// `1 / (C·n)`.
    lambda: f64,
}

impl<'a> Problem<'a> {
    fn new(x: &[Vec<f32>], y: &'a [usize], classes: usize, lambda: f64) -> Self {
        Self {
            x: x.iter().flatten().map(|&v| v as f64).collect(),
            y,
            dim: x[0].len(),
            classes,
            lambda,
        }
    }

    /// The loss at `w`, its gradient written into `grad`.
    fn eval(&self, w: &[f64], grad: &mut [f64]) -> f64 {
        let (dim, classes) = (self.dim, self.classes);
        let bias = classes * dim;
        grad.fill(0.0);
        let mut z = vec![0f64; classes];
        let mut loss = 0.0;
        for (xi, &yi) in self.x.chunks_exact(dim).zip(self.y) {
            for (c, zc) in z.iter_mut().enumerate() {
                let wc = &w[c * dim..(c + 1) * dim];
                *zc = w[bias + c] + wc.iter().zip(xi).map(|(a, b)| a * b).sum::<f64>();
            }
            let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            loss += lse - z[yi];
            for c in 0..classes {
                let d = (z[c] - lse).exp() - if c == yi { 1.0 } else { 0.0 };
                for (g, v) in grad[c * dim..(c + 1) * dim].iter_mut().zip(xi) {
                    *g += d * v;
                }
                grad[bias + c] += d;
            }
        }
        let n = self.y.len() as f64;
        loss /= n;
        grad.iter_mut().for_each(|g| *g /= n);
        for i in 0..bias {
            loss += 0.5 * self.lambda * w[i] * w[i];
            grad[i] += self.lambda * w[i];
        }
        loss
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises the problem from `w` by L-BFGS: the direction from the last pairs of steps and
/// gradient changes (the two-loop recursion), a backtracking line search from a unit step.
fn lbfgs(p: &Problem, w: &mut Vec<f64>, max_iter: usize, tol: f64) {
    const HISTORY: usize = 10;
    let len = w.len();
    let mut grad = vec![0.0; len];
    let mut loss = p.eval(w, &mut grad);
    // (s, y, 1 / s·y), oldest first.
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let (mut cand, mut cand_grad) = (vec![0.0; len], vec![0.0; len]);
    let mut alphas = [0.0; HISTORY];
    for _ in 0..max_iter {
        let gnorm = dot(&grad, &grad).sqrt();
        if gnorm < tol {
            break;
        }
        // d ≈ H⁻¹ g; the step goes along −d.
        let mut d = grad.clone();
        for (k, (s, y, rho)) in pairs.iter().enumerate().rev() {
            alphas[k] = rho * dot(s, &d);
            d.iter_mut()
                .zip(y)
                .for_each(|(di, yi)| *di -= alphas[k] * yi);
        }
        let scale = match pairs.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            // The first step: a unit step moves the parameters by at most 1.
            None => 1.0 / gnorm.max(1.0),
        };
        d.iter_mut().for_each(|v| *v *= scale);
        for (k, (s, y, rho)) in pairs.iter().enumerate() {
            let b = rho * dot(y, &d);
            d.iter_mut()
                .zip(s)
                .for_each(|(di, si)| *di += (alphas[k] - b) * si);
        }
        let mut slope = -dot(&grad, &d);
        if slope >= 0.0 {
            // Not a descent direction (rounding): start the history again from the gradient.
            pairs.clear();
            d.clone_from(&grad);
            d.iter_mut().for_each(|v| *v /= gnorm.max(1.0));
            slope = -dot(&grad, &d);
        }
        let mut step = 1.0;
        let accepted = loop {
            cand.iter_mut()
                .zip(w.iter().zip(&d))
                .for_each(|(c, (wi, di))| *c = wi - step * di);
            let l = p.eval(&cand, &mut cand_grad);
            if l <= loss + 1e-4 * step * slope {
                break Some(l);
            }
            step *= 0.5;
            if step < 1e-12 {
                break None;
            }
        };
        // No decrease along the direction: the optimum, to the objective's precision.
        let Some(l) = accepted else { break };
        let s: Vec<f64> = cand.iter().zip(w.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = cand_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
            if pairs.len() == HISTORY {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(w, &mut cand);
        std::mem::swap(&mut grad, &mut cand_grad);
        loss = l;
    }
}

/// Fits a head on `x` (rows of equal length) with classes `y` in `0..classes`.
pub fn fit(x: &[Vec<f32>], y: &[usize], classes: usize, opts: LogRegOptions) -> LinearHead {
    fit_from(x, y, classes, opts, None).0
}

/// [`fit`] from a starting point (the parameters another fit returned: warm starts along a grid of
/// `C`), returning the parameters too.
pub fn fit_from(
    x: &[Vec<f32>],
    y: &[usize],
    classes: usize,
    opts: LogRegOptions,
    init: Option<&[f64]>,
) -> (LinearHead, Vec<f64>) {
    let dim = x[0].len();
    let xs: Vec<Vec<f32>> = if opts.normalize_input {
        x.iter()
            .map(|r| {
                let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                r.iter().map(|v| v / n).collect()
            })
            .collect()
    } else {
        x.to_vec()
    };
    let problem = Problem::new(&xs, y, classes, 1.0 / (opts.c * xs.len() as f64));
    let mut w = match init {
        Some(w) if w.len() == classes * dim + classes => w.to_vec(),
        _ => vec![0.0f64; classes * dim + classes],
    };
    lbfgs(&problem, &mut w, opts.max_iter, opts.tol);
    let head = LinearHead {
        classes,
        dim,
        weight: w[..classes * dim].iter().map(|&v| v as f32).collect(),
        bias: w[classes * dim..].iter().map(|&v| v as f32).collect(),
        normalize_input: opts.normalize_input,
    };
    (head, w)
}

/// The `C` values cross-validation tries: nine on a log scale from 0.01 to 100.
pub const C_GRID: [f64; 9] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0];

/// How many times cross-validation deals the gold labels into folds by default: one k-fold split
/// of 100 labels is noisy (a few examples moving between folds can move the chosen `C` a step
/// along the grid), so the grid's figures are means over several seeded splits, as scikit-learn's
/// `RepeatedStratifiedKFold` does.
pub const CV_REPEATS: usize = 5;

/// How a cross-validated head is fitted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CvOptions {
    /// A fixed `C` (the temperature stays 1: the head of earlier releases); `None`: chosen from
    /// [`C_GRID`], with a temperature fitted too.
    pub c: Option<f64>,
    pub folds: usize,
    /// Seeded k-fold splits whose figures are averaged ([`CV_REPEATS`] by default; at least 1).
    pub repeats: usize,
    pub seed: u64,
}

impl Default for CvOptions {
    /// C and temperature chosen over [`CV_REPEATS`] seeded 5-fold splits.
    fn default() -> Self {
        Self {
            c: None,
            folds: 5,
            repeats: CV_REPEATS,
            seed: 0,
        }
    }
}

/// One `C` of the grid, cross-validated (means over the repeated splits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CvPoint {
    pub c: f64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub log_loss: f64,
}

/// What cross-validation found for a head (kept in the task record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadReport {
    pub folds: usize,
    /// Seeded k-fold splits the figures are means over (1 in records of earlier releases).
    #[serde(default = "one")]
    pub repeats: usize,
    /// The `C` of the head: chosen from `grid`, or fixed (`c_fixed`).
    pub c: f64,
    pub c_fixed: bool,
    /// The head's logits are divided by it (fitted on the out-of-fold scores).
    pub temperature: f64,
    /// Cross-validated figures at `c` (the log-loss after the temperature).
    pub accuracy: f64,
    pub macro_f1: f64,
    pub log_loss: f64,
    pub grid: Vec<CvPoint>,
}

fn one() -> usize {
    1
}

/// A fold head's scores for the rows it held out: (row, scores).
type Scored = Vec<(usize, Vec<f32>)>;

/// The random stream of split `r`: the first is the one split of earlier releases.
fn split_stream(r: usize) -> String {
    if r == 0 {
        "head-folds".into()
    } else {
        format!("head-folds-{r}")
    }
}

/// How far below the grid's best cross-validated macro-F1 a `C` may fall and still be chosen.
pub const MACRO_F1_GUARD: f64 = 0.05;

/// The grid point [`fit_cv`] keeps: the lowest out-of-fold log-loss (ties: the higher accuracy)
/// among the points whose macro-F1 is within [`MACRO_F1_GUARD`] of the grid's best.
///
/// The guard: with ~100 labels a heavily regularised head can win on log-loss while leaning on
/// one class (its probabilities stay near the prior, which costs little log-loss, and it labels
/// most of the corpus with the majority class). On the quickstart (README) it moved one of the five
/// heads from C = 3 (64.7%) to C = 10 (65.9%) and a labeling-loop head from C = 0.3 (59.9%, macro-F1
/// 0.50) to C = 1 (64.7%); a scikit-learn replay over 30 draws of 100 labels had it change 6 choices
/// for +0.9 ± 0.4 points.
pub fn choose(points: &[CvPoint]) -> usize {
    let best_f1 = points
        .iter()
        .map(|p| p.macro_f1)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut best: Option<usize> = None;
    for (g, p) in points.iter().enumerate() {
        if p.macro_f1 < best_f1 - MACRO_F1_GUARD {
            continue;
        }
        let better = best.is_none_or(|b| {
            let b = &points[b];
            p.log_loss < b.log_loss - 1e-12
                || (p.log_loss < b.log_loss + 1e-12 && p.accuracy > b.accuracy)
        });
        if better {
            best = Some(g);
        }
    }
    best.expect("a non-empty grid")
}

/// Fits a head whose `C` and temperature are chosen by repeated stratified cross-validation (or
/// `C` fixed), refitted on every example; the report gives the cross-validated figures.
///
/// Each `C` is scored by its out-of-fold log-loss, averaged over the splits, and chosen by
/// [`choose`]; the temperature is fitted on the chosen `C`'s out-of-fold scores of every split together.
pub fn fit_cv(
    x: &[Vec<f32>],
    y: &[usize],
    classes: usize,
    cvo: CvOptions,
) -> (LinearHead, HeadReport) {
    let k = cv::fold_count(cvo.folds, x.len());
    let repeats = cvo.repeats.max(1);
    let splits: Vec<Vec<usize>> = (0..repeats)
        .map(|r| cv::folds(y, k, cvo.seed, &split_stream(r)))
        .collect();
    let grid: Vec<f64> = match cvo.c {
        Some(c) => vec![c],
        None => C_GRID.to_vec(),
    };
    let opts = |c: f64| LogRegOptions {
        c,
        ..Default::default()
    };
    // Every (split, fold) is a chain that walks the grid in order, each head starting from the
    // previous C's solution (the grid ascends). The chains are independent: they run in parallel,
    // and each gives its held-out rows' scores at every C.
    let chains: Vec<(usize, usize)> = (0..repeats)
        .flat_map(|r| (0..k).map(move |f| (r, f)))
        .collect();
    let held_out: Vec<Vec<Scored>> = chains
        .par_iter()
        .map(|&(r, f)| {
            let fold = &splits[r];
            let (mut tx, mut ty, mut test) = (vec![], vec![], vec![]);
            for i in 0..y.len() {
                if fold[i] == f {
                    test.push(i);
                } else {
                    tx.push(x[i].clone());
                    ty.push(y[i]);
                }
            }
            let mut warm: Option<Vec<f64>> = None;
            grid.iter()
                .map(|&c| {
                    if tx.is_empty() {
                        return vec![];
                    }
                    let (head, w) = fit_from(&tx, &ty, classes, opts(c), warm.as_deref());
                    warm = Some(w);
                    test.iter()
                        .map(|&i| {
                            let mut s = vec![0f32; classes];
                            head.apply(&x[i], &mut s);
                            (i, s)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut points = Vec::new();
    let mut grid_scores = Vec::with_capacity(grid.len());
    for (g, &c) in grid.iter().enumerate() {
        let mut split_scores = Vec::with_capacity(repeats);
        let (mut accuracy, mut macro_f1, mut log_loss) = (0.0, 0.0, 0.0);
        for r in 0..repeats {
            // The split's out-of-fold scores: every row's from the one chain that held it out.
            let mut scores = vec![vec![0f32; classes]; y.len()];
            for (chain, &(cr, _)) in held_out.iter().zip(&chains) {
                if cr == r {
                    for (i, s) in &chain[g] {
                        scores[*i].clone_from(s);
                    }
                }
            }
            let (a, f1, ll) = cv::score(&scores, y, classes, 1.0);
            accuracy += a / repeats as f64;
            macro_f1 += f1 / repeats as f64;
            log_loss += ll / repeats as f64;
            split_scores.push(scores);
        }
        points.push(CvPoint {
            c,
            accuracy,
            macro_f1,
            log_loss,
        });
        grid_scores.push(split_scores);
    }
    let chosen = choose(&points);
    let c = grid[chosen];
    let split_scores = grid_scores.swap_remove(chosen);
    // Every split's out-of-fold scores, each against the gold labels.
    let scores: Vec<Vec<f32>> = split_scores.into_iter().flatten().collect();
    let gold: Vec<usize> = (0..repeats).flat_map(|_| y.iter().copied()).collect();
    let temperature = match cvo.c {
        Some(_) => 1.0,
        None => cv::fit_temperature(&scores, &gold),
    };
    let mut head = fit(x, y, classes, opts(c));
    if temperature != 1.0 {
        head.weight.iter_mut().for_each(|w| *w /= temperature);
        head.bias.iter_mut().for_each(|b| *b /= temperature);
    }
    let p = &points[chosen];
    let report = HeadReport {
        folds: k,
        repeats,
        c,
        c_fixed: cvo.c.is_some(),
        temperature: temperature as f64,
        accuracy: p.accuracy,
        macro_f1: p.macro_f1,
        log_loss: cv::log_loss(&scores, &gold, temperature),
        grid: points,
    };
    (head, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_a_separable_problem_and_regularisation_shrinks_weights() {
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                let c = (i % 2) as f32;
                vec![
                    c * 2.0 - 1.0 + 0.1 * (i as f32 % 5.0 - 2.0),
                    0.3 * (i as f32 % 3.0),
                ]
            })
            .collect();
        let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let opts = LogRegOptions {
            normalize_input: false,
            ..Default::default()
        };
        let head = fit(&x, &y, 2, opts);
        let mut z = [0.0; 2];
        for (xi, &yi) in x.iter().zip(&y) {
            head.apply(xi, &mut z);
            assert_eq!(usize::from(z[1] > z[0]), yi);
        }
        let strong = fit(&x, &y, 2, LogRegOptions { c: 0.01, ..opts });
        let norm = |h: &LinearHead| h.weight.iter().map(|v| v * v).sum::<f32>();
        assert!(norm(&strong) < norm(&head) / 4.0);
    }

    #[test]
    fn the_gradient_is_right_at_the_optimum() {
        // At the returned optimum the full gradient is ~0: check the objective does not fall along it.
        let x = vec![
            vec![1.0f32, 0.0],
            vec![0.0, 1.0],
            vec![1.0, 1.0],
            vec![0.2, 0.1],
        ];
        let y = vec![0, 1, 2, 0];
        let head = fit(
            &x,
            &y,
            3,
            LogRegOptions {
                normalize_input: false,
                ..Default::default()
            },
        );
        let mut w: Vec<f64> = head
            .weight
            .iter()
            .chain(&head.bias)
            .map(|&v| v as f64)
            .collect();
        let problem = Problem::new(&x, &y, 3, 1.0 / 4.0);
        let mut g = vec![0.0; w.len()];
        let l0 = problem.eval(&w, &mut g);
        assert!(g.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-3, "{g:?}");
        w[0] += 1e-2;
        assert!(problem.eval(&w, &mut g) > l0);
    }

    /// scikit-learn's `LogisticRegression` (multinomial, lbfgs, tol 1e-12; 1.7.2) on a data set both
    /// sides compute from a formula: its class probabilities of the first six rows, printed by
    /// `scripts/logreg_reference.py`, at a moderate and a weak regularisation.
    const SKLEARN: [(f64, [[f64; 3]; 6]); 2] = [
        (
            1.0,
            [
                [0.283900698, 0.286577436, 0.429521866],
                [0.396459293, 0.346882528, 0.256658179],
                [0.269117174, 0.368476149, 0.362406677],
                [0.313091733, 0.338150906, 0.348757361],
                [0.366122085, 0.322983064, 0.310894851],
                [0.348094986, 0.343909878, 0.307995136],
            ],
        ),
        (
            100.0,
            [
                [0.177967301, 0.217044912, 0.604987787],
                [0.566761409, 0.296678004, 0.136560587],
                [0.149355678, 0.397498437, 0.453145885],
                [0.369263064, 0.379255587, 0.251481349],
                [0.393517767, 0.375642186, 0.230840047],
                [0.194118969, 0.399346281, 0.40653475],
            ],
        ),
    ];

    #[test]
    fn the_fit_matches_scikit_learn_from_cold_and_warm_starts() {
        let x: Vec<Vec<f32>> = (0..45)
            .map(|i| {
                (0..5)
                    .map(|j| {
                        let (i, j) = (i as f64, j as f64);
                        ((1.3 * i + 0.7 * j * j + 0.5).sin() + 0.25 * (0.9 * i * j).cos()) as f32
                    })
                    .collect()
            })
            .collect();
        let y: Vec<usize> = (0..45).map(|i| (i * 7 + i / 4) % 3).collect();
        let opts = |c| LogRegOptions {
            c,
            normalize_input: false,
            ..Default::default()
        };
        let check = |head: &LinearHead, want: &[[f64; 3]; 6], how: &str| {
            let mut z = vec![0f32; 3];
            for (row, want) in x.iter().zip(want) {
                head.apply(row, &mut z);
                let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let total: f32 = z.iter().map(|v| (v - m).exp()).sum();
                for (v, w) in z.iter().zip(want) {
                    let p = ((v - m).exp() / total) as f64;
                    assert!(
                        (p - w).abs() < 1e-5,
                        "{how}: {p} against scikit-learn's {w}"
                    );
                }
            }
        };
        let mut warm = None;
        for (c, want) in &SKLEARN {
            check(&fit(&x, &y, 3, opts(*c)), want, &format!("C = {c}"));
            // From the previous C's solution, as cross-validation walks the grid.
            let (head, w) = fit_from(&x, &y, 3, opts(*c), warm.as_deref());
            check(&head, want, &format!("C = {c}, warm"));
            warm = Some(w);
        }
    }

    /// Rows where the class shows only in the difference of two features that share a large noise:
    /// a strongly regularised head (weights ∝ the class means' difference) reads the noisy feature
    /// and does little better than chance; a weakly regularised one learns the difference.
    fn embedded(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = crate::rng::Rng::derive(seed, "embedded", 0);
        let (mut x, mut y) = (vec![], vec![]);
        for i in 0..n {
            let c = i % 2;
            let shared = 2.0 * rng.normal();
            let sign = if c == 1 { 0.5 } else { -0.5 };
            let mut row = vec![sign + shared, shared + 0.2 * rng.normal()];
            row.extend((0..10).map(|_| 0.3 * rng.normal()));
            x.push(row);
            y.push(c);
        }
        (x, y)
    }

    fn accuracy_on(head: &LinearHead, x: &[Vec<f32>], y: &[usize]) -> f64 {
        let mut z = vec![0f32; head.classes];
        let right = x
            .iter()
            .zip(y)
            .filter(|(xi, &yi)| {
                head.apply(xi, &mut z);
                crate::metrics::argmax(&z) == yi
            })
            .count();
        right as f64 / y.len() as f64
    }

    #[test]
    fn cross_validation_chooses_a_c_that_beats_a_bad_fixed_one_and_estimates_accuracy() {
        let (x, y) = embedded(100, 1);
        let (fresh_x, fresh_y) = embedded(4000, 2);
        let cvo = CvOptions {
            c: None,
            folds: 5,
            repeats: CV_REPEATS,
            seed: 0,
        };
        let (head, report) = fit_cv(&x, &y, 2, cvo);
        assert_eq!(report.grid.len(), C_GRID.len());
        assert!(!report.c_fixed);
        let (weak, weak_report) = fit_cv(
            &x,
            &y,
            2,
            CvOptions {
                c: Some(0.01),
                ..cvo
            },
        );
        let (acc, weak_acc) = (
            accuracy_on(&head, &fresh_x, &fresh_y),
            accuracy_on(&weak, &fresh_x, &fresh_y),
        );
        assert!(report.c >= 1.0, "{report:?}");
        assert!(acc > weak_acc + 0.1, "{acc} vs {weak_acc}");
        assert!(report.accuracy >= weak_report.accuracy, "{report:?}");
        // The cross-validated accuracy estimates accuracy on fresh data.
        assert!(
            (report.accuracy - acc).abs() < 0.1,
            "cv {} vs fresh {acc}",
            report.accuracy
        );
        assert!((0.25..=10.0).contains(&report.temperature), "{report:?}");
    }

    #[test]
    fn repeated_splits_steady_the_choice_of_c() {
        // The same gold labels, cross-validated with different fold seeds: a single split's choice
        // of C wanders along the grid with the seed; the mean over several splits wanders less.
        // A weak signal (three of eight features shifted by ±0.3σ): the log-loss is flat across
        // the middle of the grid, where a few examples changing folds move the minimum.
        let mut rng = crate::rng::Rng::derive(7, "weak", 0);
        let (x, y): (Vec<Vec<f32>>, Vec<usize>) = (0..60)
            .map(|i| {
                let c = i % 2;
                let shift = if c == 1 { 0.3 } else { -0.3 };
                let row = (0..8)
                    .map(|f| rng.normal() + if f < 3 { shift } else { 0.0 })
                    .collect();
                (row, c)
            })
            .unzip();
        let spread = |repeats: usize| {
            let logs: Vec<f64> = (0..8)
                .map(|seed| {
                    let cvo = CvOptions {
                        c: None,
                        folds: 5,
                        repeats,
                        seed,
                    };
                    let (_, report) = fit_cv(&x, &y, 2, cvo);
                    assert_eq!(report.repeats, repeats);
                    report.c.log10()
                })
                .collect();
            let mean = logs.iter().sum::<f64>() / logs.len() as f64;
            logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / logs.len() as f64
        };
        let (single, repeated) = (spread(1), spread(CV_REPEATS));
        assert!(
            single > 0.0,
            "the single split never moved: the test shows nothing"
        );
        assert!(
            repeated < single,
            "variance of log10 C: {repeated} vs {single}"
        );
    }

    #[test]
    fn the_choice_passes_over_a_near_constant_head_with_the_lowest_log_loss() {
        let point = |c, accuracy, macro_f1, log_loss| CvPoint {
            c,
            accuracy,
            macro_f1,
            log_loss,
        };
        // C = 0.3 has the lowest log-loss but labels nearly everything with one class.
        let points = [
            point(0.1, 0.55, 0.36, 0.690),
            point(0.3, 0.58, 0.42, 0.655),
            point(1.0, 0.66, 0.65, 0.660),
            point(3.0, 0.67, 0.66, 0.700),
        ];
        assert_eq!(choose(&points), 2);
        // Within the guard, log-loss decides, not macro-F1.
        let points = [point(1.0, 0.66, 0.63, 0.650), point(3.0, 0.67, 0.66, 0.700)];
        assert_eq!(choose(&points), 0);
        // Equal log-loss: the higher accuracy.
        let points = [point(1.0, 0.64, 0.64, 0.65), point(3.0, 0.66, 0.64, 0.65)];
        assert_eq!(choose(&points), 1);
    }

    #[test]
    fn a_fixed_c_gives_the_plain_head_at_temperature_one() {
        let (x, y) = embedded(60, 3);
        let cvo = CvOptions {
            c: Some(1.0),
            folds: 5,
            repeats: CV_REPEATS,
            seed: 0,
        };
        let (head, report) = fit_cv(&x, &y, 2, cvo);
        assert_eq!(head, fit(&x, &y, 2, LogRegOptions::default()));
        assert!(report.c_fixed);
        assert_eq!(
            (report.c, report.temperature, report.grid.len()),
            (1.0, 1.0, 1)
        );
    }
}
