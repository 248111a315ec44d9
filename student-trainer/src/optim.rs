//! Optimisation shared by the students: the learning-rate schedule (linear warm-up, then linear decay
//! to zero) and AdamW on flat `f32` parameters, with lazy updates for embedding rows.

use serde::{Deserialize, Serialize};

/// Learning rate at `step` of `total`: linear warm-up over `warmup` steps, then linear decay to 0.
pub fn lr_at(base: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        base * (step + 1) as f64 / warmup as f64
    } else if total <= warmup {
        base
    } else {
        base * (total.saturating_sub(step)) as f64 / (total - warmup) as f64
    }
}

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW state of one flat parameter block.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl Moments {
    pub fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }
}

impl AdamW {
    /// One update of `params[offset..offset + grad.len()]` at step `t` (1-based); `decay` applies the
    /// decoupled weight decay.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        params: &mut [f32],
        grad: &[f32],
        st: &mut Moments,
        offset: usize,
        lr: f64,
        t: u64,
        decay: bool,
    ) {
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let c1 = 1.0 - self.beta1.powi(t as i32);
        let c2 = 1.0 - self.beta2.powi(t as i32);
        let step = (lr * c2.sqrt() / c1) as f32;
        let eps = (self.eps * c2.sqrt()) as f32;
        let wd = if decay {
            (lr * self.weight_decay) as f32
        } else {
            0.0
        };
        let p = &mut params[offset..offset + grad.len()];
        let m = &mut st.m[offset..offset + grad.len()];
        let v = &mut st.v[offset..offset + grad.len()];
        for i in 0..grad.len() {
            let g = grad[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            p[i] -= wd * p[i] + step * m[i] / (v[i].sqrt() + eps);
        }
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip(blocks: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let norm = blocks
        .iter()
        .map(|b| b.iter().map(|g| g * g).sum::<f32>())
        .sum::<f32>()
        .sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / norm;
        blocks
            .iter_mut()
            .for_each(|b| b.iter_mut().for_each(|g| *g *= s));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(1.0, 100, 10, 100), 0.0);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clipping_caps_the_norm() {
        let opt = AdamW {
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut p = vec![3.0f32, -2.0];
        let mut st = Moments::new(2);
        for t in 1..=2000 {
            let g: Vec<f32> = p.iter().map(|x| 2.0 * x).collect();
            opt.update(&mut p, &g, &mut st, 0, 0.01, t, true);
        }
        assert!(p.iter().all(|x| x.abs() < 1e-2), "{p:?}");
        let mut a = [3.0f32, 0.0];
        let mut b = [4.0f32];
        let n = clip(&mut [&mut a, &mut b], 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
    }
}
