//! Adam with decoupled weight decay (AdamW; plain Adam when the decay is 0), written out so its
//! state can be checkpointed: tch's `nn::Optimizer` keeps its moments inside libtorch where they
//! cannot be read or restored, so a resumed run would restart the moments from zero.
//!
//! The update matches `torch.optim.AdamW` (and `torch.optim.Adam` with weight_decay = 0):
//! ```text
//! t += 1
//! p *= 1 - lr * weight_decay
//! m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::error::{ModelError, Result};

/// Hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW); 0 gives Adam.
    pub weight_decay: f64,
}

impl AdamConfig {
    /// PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8) with the given rate and decay.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// Adam(W) over a fixed, ordered list of named trainable tensors.
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
}

impl Adam {
    /// `params` are shallow clones of the model's variables (updated in place). Their order is
    /// the order of [`Adam::gradients`] and of the state tensors.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Result<Self> {
        let mut m = Vec::with_capacity(params.len());
        let mut v = Vec::with_capacity(params.len());
        for (_, p) in &params {
            m.push(p.f_zeros_like()?);
            v.push(p.f_zeros_like()?);
        }
        Ok(Self {
            config,
            params,
            m,
            v,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// The variables this optimiser updates, in order.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Zeroes every variable's gradient (those not yet defined stay undefined).
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Each variable's gradient, in order: tensors sharing storage with the gradients, so a
    /// caller may modify them in place (an all-reduce) before [`Adam::step`]. Errors if a
    /// variable received no gradient: every rank must hand the same list to a collective.
    pub fn gradients(&self) -> Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|(name, p)| {
                let g = p.grad();
                if g.defined() {
                    Ok(g)
                } else {
                    Err(ModelError::MissingGradient { name: name.clone() })
                }
            })
            .collect()
    }

    /// One update from the current gradients; variables without a gradient are skipped.
    pub fn step(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = c.lr / bias1;
        for (((_, p), m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            // In place, as torch.optim's single-tensor Adam: m and v by lerp (b m + (1 - b) g),
            // the step by one addcdiv with the step size folded into the denominator. Each
            // returns the updated tensor; only the side effect matters.
            if c.weight_decay != 0.0 {
                let _ = p.f_mul_scalar_(1.0 - c.lr * c.weight_decay)?;
            }
            let _ = m.f_lerp_(&g, 1.0 - c.beta1)?;
            let _ = v.f_lerp_(&g.f_square()?, 1.0 - c.beta2)?;
            // p - step * m / (sqrt(v) / bias2_sqrt + eps) = p + m / (sqrt(v) * a + b), with
            // a = -1 / (bias2_sqrt * step), b = -eps / step.
            // (A zero learning rate moves nothing; dividing by it would give NaN.)
            if step_size != 0.0 {
                let mut denom = v.f_sqrt()?;
                let _ = denom.f_mul_scalar_(-1.0 / (bias2_sqrt * step_size))?;
                let _ = denom.f_add_scalar_(-c.eps / step_size)?;
                let _ = p.f_addcdiv_(m, &denom)?;
            }
        }
        Ok(())
    }

    /// The state to checkpoint: `m.<name>` and `v.<name>` per variable and `step` (int64 `[1]`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for ((name, _), m) in self.params.iter().zip(&self.m) {
            out.push((format!("m.{name}"), m.shallow_clone()));
        }
        for ((name, _), v) in self.params.iter().zip(&self.v) {
            out.push((format!("v.{name}"), v.shallow_clone()));
        }
        out.push(("step".to_string(), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restores [`Adam::state`] output (any device; copied onto the variables' device). Every
    /// moment must be present with its variable's shape.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let by_name: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let get = |name: String| -> Result<&Tensor> {
            by_name
                .get(name.as_str())
                .copied()
                .ok_or(ModelError::MissingTensor { name })
        };
        let step_t = get("step".to_string())?;
        if step_t.numel() != 1 {
            return Err(ModelError::ShapeMismatch {
                tensor: "step".into(),
                expected: vec![1],
                found: step_t.size(),
            });
        }
        let step = step_t
            .f_to_kind(Kind::Int64)?
            .f_reshape([-1])?
            .f_int64_value(&[0])?;
        // Check everything before changing anything.
        let mut sources = Vec::with_capacity(2 * self.params.len());
        for (name, p) in &self.params {
            for prefix in ["m", "v"] {
                let key = format!("{prefix}.{name}");
                let src = get(key.clone())?;
                if src.size() != p.size() {
                    return Err(ModelError::ShapeMismatch {
                        tensor: key,
                        expected: p.size(),
                        found: src.size(),
                    });
                }
                sources.push(src);
            }
        }
        let _guard = tch::no_grad_guard();
        for (i, (m, v)) in self.m.iter_mut().zip(&mut self.v).enumerate() {
            m.f_copy_(sources[2 * i])?;
            v.f_copy_(sources[2 * i + 1])?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn param(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    /// The textbook update for one scalar, in f64.
    fn reference(p: &mut f64, m: &mut f64, v: &mut f64, g: f64, t: i32, c: &AdamConfig) {
        *p *= 1.0 - c.lr * c.weight_decay;
        *m = c.beta1 * *m + (1.0 - c.beta1) * g;
        *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
        let m_hat = *m / (1.0 - c.beta1.powi(t));
        let v_hat = *v / (1.0 - c.beta2.powi(t));
        *p -= c.lr * m_hat / (v_hat.sqrt() + c.eps);
    }

    #[test]
    fn adam_matches_hand_computed_first_two_steps() {
        for weight_decay in [0.0, 0.1] {
            let c = AdamConfig::new(0.1, weight_decay);
            let p = param(&[1.0, -2.0, 0.5]);
            let mut opt = Adam::new(vec![("p".into(), p.shallow_clone())], c).unwrap();
            let mut expect = [(1.0f64, 0.0, 0.0), (-2.0, 0.0, 0.0), (0.5, 0.0, 0.0)];
            for t in 1..=2 {
                opt.zero_grad();
                // loss = sum(p^3): g = 3 p^2, so the two steps see different gradients.
                (&p * &p * &p).sum(Kind::Float).backward();
                for (e, x) in expect.iter_mut().zip(Vec::<f64>::try_from(&p).unwrap()) {
                    reference(&mut e.0, &mut e.1, &mut e.2, 3.0 * x * x, t, &c);
                }
                opt.step().unwrap();
                let got = Vec::<f64>::try_from(&p).unwrap();
                for (g, e) in got.iter().zip(&expect) {
                    assert!(
                        (g - e.0).abs() < 1e-6,
                        "step {t} wd {weight_decay}: {g} vs {}",
                        e.0
                    );
                }
            }
            // The first step of Adam moves each weight by about lr (m_hat / sqrt(v_hat) = +-1).
            assert_eq!(opt.steps(), 2);
        }
    }

    #[test]
    fn state_round_trip_resumes_exactly() {
        let c = AdamConfig::new(0.05, 0.01);
        let run = |p: &Tensor, opt: &mut Adam, steps: usize| {
            for _ in 0..steps {
                opt.zero_grad();
                (p * p).sum(Kind::Float).backward();
                opt.step().unwrap();
            }
        };
        let a = param(&[1.0, 2.0]);
        let mut opt_a = Adam::new(vec![("a".into(), a.shallow_clone())], c).unwrap();
        run(&a, &mut opt_a, 5);

        let b = param(&[1.0, 2.0]);
        let mut opt_b = Adam::new(vec![("a".into(), b.shallow_clone())], c).unwrap();
        run(&b, &mut opt_b, 3);
        let saved: Vec<(String, Tensor)> = opt_b
            .state()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let mut opt_c = Adam::new(vec![("a".into(), b.shallow_clone())], c).unwrap();
        opt_c.load_state(&saved).unwrap();
        run(&b, &mut opt_c, 2);
        assert_eq!(
            Vec::<f32>::try_from(&a).unwrap(),
            Vec::<f32>::try_from(&b).unwrap()
        );
    }

    #[test]
    fn load_state_names_missing_and_misshaped_tensors() {
        let p = param(&[1.0, 2.0]);
        let mut opt = Adam::new(vec![("w".into(), p)], AdamConfig::new(0.1, 0.0)).unwrap();
        let err = opt
            .load_state(&[("step".into(), Tensor::from_slice(&[1i64]))])
            .unwrap_err();
        assert!(err.to_string().contains("m.w"), "{err}");
        let bad = vec![
            ("step".to_string(), Tensor::from_slice(&[1i64])),
            (
                "m.w".to_string(),
                Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "v.w".to_string(),
                Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
            ),
        ];
        let err = opt.load_state(&bad).unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref tensor, .. } if tensor == "m.w"),
            "{err}"
        );
    }
}
