//! Multinomial logistic regression with L2, fitted by full-batch gradient descent with backtracking
//! line search. The objective is scikit-learn's, divided by `C·n`:
//! `mean CE + ‖W‖² / (2·C·n)` (the bias is not penalised), so `C` means what it means there.

use crate::kd::log_softmax;
use distill_cache::task::LinearHead;

/// Fit options.
#[derive(Clone, Copy, Debug)]
pub struct LogRegOptions {
    /// Inverse regularisation strength (scikit-learn's `C`).
    pub c: f64,
    pub max_iter: usize,
    /// Stop when the gradient's norm is below this.
    pub tol: f64,
    pub normalize_input: bool,
}

impl Default for LogRegOptions {
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 2000,
            tol: 1e-6,
            normalize_input: true,
        }
    }
}

fn objective(
    x: &[Vec<f32>],
    y: &[usize],
    w: &[f64],
    classes: usize,
    lambda: f64,
) -> (f64, Vec<f64>) {
    let dim = x[0].len();
    let n = x.len() as f64;
    let mut grad = vec![0.0; w.len()];
    let mut loss = 0.0;
    let bias = classes * dim;
    let mut z = vec![0f32; classes];
    for (xi, &yi) in x.iter().zip(y) {
        for (c, zc) in z.iter_mut().enumerate() {
            let wc = &w[c * dim..(c + 1) * dim];
            *zc = (w[bias + c] + wc.iter().zip(xi).map(|(a, &b)| a * b as f64).sum::<f64>()) as f32;
        }
        let ls = log_softmax(&z, 1.0);
        loss -= ls[yi] as f64;
        for c in 0..classes {
            let d = (ls[c] as f64).exp() - if c == yi { 1.0 } else { 0.0 };
            for (g, &v) in grad[c * dim..(c + 1) * dim].iter_mut().zip(xi) {
                *g += d * v as f64;
            }
            grad[bias + c] += d;
        }
    }
    loss /= n;
    grad.iter_mut().for_each(|g| *g /= n);
    for i in 0..bias {
        loss += 0.5 * lambda * w[i] * w[i];
        grad[i] += lambda * w[i];
    }
    (loss, grad)
}

/// Fits a head on `x` (rows of equal length) with classes `y` in `0..classes`.
pub fn fit(x: &[Vec<f32>], y: &[usize], classes: usize, opts: LogRegOptions) -> LinearHead {
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
    let lambda = 1.0 / (opts.c * xs.len() as f64);
    let mut w = vec![0.0f64; classes * dim + classes];
    let (mut loss, mut grad) = objective(&xs, y, &w, classes, lambda);
    let mut step = 1.0;
    for _ in 0..opts.max_iter {
        let gnorm2: f64 = grad.iter().map(|g| g * g).sum();
        if gnorm2.sqrt() < opts.tol {
            break;
        }
        // Backtracking (Armijo) from a step a little larger than the last accepted one.
        step *= 2.0;
        loop {
            let cand: Vec<f64> = w.iter().zip(&grad).map(|(a, g)| a - step * g).collect();
            let (l, g) = objective(&xs, y, &cand, classes, lambda);
            if l <= loss - 0.5 * step * gnorm2 || step < 1e-12 {
                w = cand;
                loss = l;
                grad = g;
                break;
            }
            step *= 0.5;
        }
    }
    LinearHead {
        classes,
        dim,
        weight: w[..classes * dim].iter().map(|&v| v as f32).collect(),
        bias: w[classes * dim..].iter().map(|&v| v as f32).collect(),
        normalize_input: opts.normalize_input,
    }
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
        let (l0, g) = objective(&x, &y, &w, 3, 1.0 / 4.0);
        assert!(g.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-3, "{g:?}");
        w[0] += 1e-2;
        assert!(objective(&x, &y, &w, 3, 1.0 / 4.0).0 > l0);
    }
}
