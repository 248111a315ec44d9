//! Optimisation shared by the students: the learning-rate schedule (linear warm-up, then linear decay
//! to zero) and one AdamW — applied to flat `f32` parameters (the n-gram student, with lazy updates for
//! embedding rows) or to candle variables ([`VarAdamW`]: the transformer and LM students), with the
//! same update and global gradient clipping.

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

/// Where an [`AdamW::update`] is in training.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The learning rate of this step.
    pub lr: f64,
    /// 1-based step number (bias correction).
    pub t: u64,
    /// Apply the decoupled weight decay (not to biases and embeddings).
    pub decay: bool,
}

impl AdamW {
    /// One update of `params[offset..offset + grad.len()]` (and the same range of the moments).
    pub fn update(
        &self,
        params: &mut [f32],
        grad: &[f32],
        st: &mut Moments,
        offset: usize,
        step: Step,
    ) {
        let Step { lr, t, decay } = step;
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

/// AdamW over named candle variables: moments per variable, decoupled weight decay where asked, global
/// gradient-norm clipping. Its state (weights and moments, `name`, `m.name`, `v.name`) is what a
/// checkpoint holds.
pub struct VarAdamW {
    opt: AdamW,
    slots: std::collections::BTreeMap<String, VarSlot>,
}

struct VarSlot {
    var: candle_core::Var,
    m: candle_core::Tensor,
    v: candle_core::Tensor,
    decay: bool,
    /// This variable's share of the learning rate (1 unless [`VarAdamW::with_rates`]).
    rate: f64,
}

impl std::fmt::Debug for VarAdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VarAdamW")
            .field("variables", &self.slots.len())
            .finish()
    }
}

impl VarAdamW {
    /// An optimiser of `(name, variable, decay)` triples.
    pub fn new(
        opt: AdamW,
        vars: impl IntoIterator<Item = (String, candle_core::Var, bool)>,
    ) -> candle_core::Result<Self> {
        let mut slots = std::collections::BTreeMap::new();
        for (name, var, decay) in vars {
            let t = var.as_tensor();
            slots.insert(
                name,
                VarSlot {
                    m: t.zeros_like()?,
                    v: t.zeros_like()?,
                    var,
                    decay,
                    rate: 1.0,
                },
            );
        }
        Ok(Self { opt, slots })
    }

    /// Gives each variable its share of the learning rate, by name (discriminative or layer-wise
    /// rates); the schedule scales them all.
    pub fn with_rates(mut self, rate: impl Fn(&str) -> f64) -> Self {
        for (name, s) in self.slots.iter_mut() {
            s.rate = rate(name);
        }
        self
    }

    /// One update at step `t` (1-based) with learning rate `lr`, gradients clipped to a global norm of
    /// `max_norm` (0: no clipping). Variables without a gradient are left alone.
    pub fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        max_norm: f32,
        lr: f64,
        t: u64,
    ) -> candle_core::Result<()> {
        let mut gs = Vec::new();
        let mut sq = 0f64;
        for (name, s) in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                gs.push((name.clone(), g.clone()));
            }
        }
        let norm = sq.sqrt();
        let scale = if max_norm > 0.0 && norm > max_norm as f64 {
            max_norm as f64 / norm
        } else {
            1.0
        };
        let o = &self.opt;
        let c1 = 1.0 - o.beta1.powi(t as i32);
        let c2 = 1.0 - o.beta2.powi(t as i32);
        for (name, g) in gs {
            let g = (g * scale)?;
            let s = self.slots.get_mut(&name).expect("slot per variable");
            let lr = lr * s.rate;
            s.m = ((&s.m * o.beta1)? + (&g * (1.0 - o.beta1))?)?;
            s.v = ((&s.v * o.beta2)? + (g.sqr()? * (1.0 - o.beta2))?)?;
            let p = s.var.as_tensor();
            let update = ((&s.m / c1)? / ((&s.v / c2)?.sqrt()? + o.eps)?)?;
            let mut next = (p - (update * lr)?)?;
            if s.decay {
                next = (next - (p * (lr * o.weight_decay))?)?;
            }
            s.var.set(&next.detach())?;
        }
        Ok(())
    }

    /// Weights and moments by name, for a checkpoint.
    pub fn state(
        &self,
    ) -> candle_core::Result<std::collections::HashMap<String, candle_core::Tensor>> {
        let mut out = std::collections::HashMap::new();
        for (k, s) in &self.slots {
            out.insert(k.clone(), s.var.as_tensor().clone());
            out.insert(format!("m.{k}"), s.m.clone());
            out.insert(format!("v.{k}"), s.v.clone());
        }
        Ok(out)
    }

    /// Restores weights and moments from a checkpoint.
    pub fn restore(&mut self, state: &crate::checkpoint::State) -> crate::Result<()> {
        for (k, s) in self.slots.iter_mut() {
            let dims = s.var.dims().to_vec();
            s.var.set(state.get(k, &dims)?)?;
            s.m = state.get(&format!("m.{k}"), &dims)?.clone();
            s.v = state.get(&format!("v.{k}"), &dims)?.clone();
        }
        Ok(())
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
            let step = Step {
                lr: 0.01,
                t,
                decay: true,
            };
            opt.update(&mut p, &g, &mut st, 0, step);
        }
        assert!(p.iter().all(|x| x.abs() < 1e-2), "{p:?}");
        let mut a = [3.0f32, 0.0];
        let mut b = [4.0f32];
        let n = clip(&mut [&mut a, &mut b], 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
    }
}
