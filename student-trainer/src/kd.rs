//! The distillation loss of the task students, in one place: on plain slices with its gradient (the
//! n-gram student) and on candle tensors for autograd (the transformer student).
//!
//! For student logits `s`, teacher logits `t`, temperature `T` and an optional gold class `y`:
//!
//! ```text
//! L = T² · KL(softmax(t/T) ‖ softmax(s/T)) + α · CE(softmax(s), y)
//! ∂L/∂s = T · (softmax(s/T) − softmax(t/T)) + α · (softmax(s) − onehot(y))
//! ```
//!
//! The `T²` factor keeps the soft term's gradient scale independent of `T` (Hinton et al., 2015).

use distill_tasks::metrics::log_softmax;

/// Loss weights.
#[derive(Clone, Copy, Debug)]
pub struct KdWeights {
    pub temperature: f32,
    /// Weight of the soft (teacher) term; 0 trains on gold labels alone.
    pub soft: f32,
    /// α: weight of the gold cross-entropy.
    pub alpha: f32,
}

/// Loss and gradient with respect to the student logits for one example.
pub fn kd_loss(
    student: &[f32],
    teacher: Option<&[f32]>,
    gold: Option<usize>,
    w: KdWeights,
    grad: &mut [f32],
) -> f32 {
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut loss = 0.0;
    let t = w.temperature;
    if let (Some(teacher), true) = (teacher, w.soft > 0.0) {
        let ls = log_softmax(student, t);
        let lt = log_softmax(teacher, t);
        for i in 0..student.len() {
            let pt = lt[i].exp();
            let ps = ls[i].exp();
            loss += w.soft * t * t * pt * (lt[i] - ls[i]);
            grad[i] += w.soft * t * (ps - pt);
        }
    }
    if let (Some(y), true) = (gold, w.alpha > 0.0) {
        let ls = log_softmax(student, 1.0);
        loss -= w.alpha * ls[y];
        for i in 0..student.len() {
            grad[i] += w.alpha * (ls[i].exp() - if i == y { 1.0 } else { 0.0 });
        }
    }
    loss
}

/// The same loss on a batch of candle tensors (`logits` and `soft`: `[b, classes]`; `gold`: `[b]`
/// class ids, counted where `gold_mask` is 1), averaged over the batch, for autograd.
pub fn kd_loss_tensor(
    logits: &candle_core::Tensor,
    soft: &candle_core::Tensor,
    gold: &candle_core::Tensor,
    gold_mask: &candle_core::Tensor,
    w: KdWeights,
) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::D;
    use candle_nn::ops::log_softmax;
    let b = logits.dim(0)? as f64;
    let t = w.temperature as f64;
    let log_ps = log_softmax(&(logits / t)?, D::Minus1)?;
    let log_pt = log_softmax(&(soft / t)?, D::Minus1)?;
    let kl = (log_pt.exp()? * (&log_pt - &log_ps)?)?.sum_all()?;
    let mut loss = (kl * (w.soft as f64 * t * t / b))?;
    if w.alpha > 0.0 {
        let log_p = log_softmax(logits, D::Minus1)?;
        let picked = log_p.gather(&gold.unsqueeze(1)?, 1)?.squeeze(1)?;
        let ce = (picked * gold_mask)?.sum_all()?;
        loss = (loss - (ce * (w.alpha as f64 / b))?)?;
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: KdWeights = KdWeights {
        temperature: 2.0,
        soft: 1.0,
        alpha: 0.5,
    };

    #[test]
    fn matches_hand_computed_values() {
        // Student [0, ln 3] at T=2: softmax([0, ln3/2]) = [1/(1+√3), √3/(1+√3)] = [0.366025, 0.633975].
        // Teacher [ln 3, 0] at T=2: [0.633975, 0.366025].
        // KL = 0.633975·ln(0.633975/0.366025) + 0.366025·ln(0.366025/0.633975) = 0.267949·ln√3 = 0.147186.
        // T²·KL = 0.588745. CE(y=1) at T=1: −ln(3/4) = 0.287682; α·CE = 0.143841. Sum: 0.732586.
        let s = [0.0, 3f32.ln()];
        let t = [3f32.ln(), 0.0];
        let mut g = [0.0; 2];
        let loss = kd_loss(&s, Some(&t), Some(1), W, &mut g);
        assert!((loss - 0.732_586).abs() < 1e-5, "{loss}");
        // ∂/∂s0 = 2·(0.366025 − 0.633975) + 0.5·(0.25 − 0) = −0.535898 + 0.125 = −0.410898.
        assert!((g[0] + 0.410_898).abs() < 1e-5, "{g:?}");
        assert!(
            (g[0] + g[1]).abs() < 1e-6,
            "gradients of a softmax loss sum to 0"
        );
    }

    #[test]
    fn zero_when_student_equals_teacher_and_no_gold() {
        let mut g = [0.0; 3];
        let l = kd_loss(&[1.0, 2.0, 3.0], Some(&[1.0, 2.0, 3.0]), None, W, &mut g);
        assert!(l.abs() < 1e-6 && g.iter().all(|v| v.abs() < 1e-6));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let s = [0.3f32, -1.2, 0.8];
        let t = [1.0f32, 0.1, -0.5];
        let mut g = [0.0; 3];
        kd_loss(&s, Some(&t), Some(2), W, &mut g);
        let mut scratch = [0.0; 3];
        for i in 0..3 {
            let (mut a, mut b) = (s, s);
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let num = (kd_loss(&a, Some(&t), Some(2), W, &mut scratch)
                - kd_loss(&b, Some(&t), Some(2), W, &mut scratch))
                / 2e-3;
            assert!((num - g[i]).abs() < 2e-3, "{i}: {num} vs {}", g[i]);
        }
    }

    #[test]
    fn the_tensor_loss_matches_the_slice_loss() {
        use candle_core::{Device, Tensor};
        let s = [[0.3f32, -0.2, 0.1], [0.0, 0.5, -1.0]];
        let t = [[1.0f32, 0.2, -0.5], [-0.4, 0.1, 0.9]];
        let tensor = |x: &[[f32; 3]; 2]| {
            Tensor::from_iter(x.iter().flatten().copied(), &Device::Cpu)
                .unwrap()
                .reshape((2, 3))
                .unwrap()
        };
        let gold = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[1f32, 0.0], &Device::Cpu).unwrap();
        let got = kd_loss_tensor(&tensor(&s), &tensor(&t), &gold, &mask, W)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mut g = [0.0; 3];
        let want = (kd_loss(&s[0], Some(&t[0]), Some(2), W, &mut g)
            + kd_loss(&s[1], Some(&t[1]), None, W, &mut g))
            / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
