//! EDM (Karras et al. 2022) as TabSyn uses it: preconditioning, the training loss and the Heun
//! sampler, with classifier-free guidance added for class conditioning.
//!
//! `D(x; sigma, y) = c_skip x + c_out F(c_in x, ln(sigma)/4, y)` with `sigma_data = 0.5`.
//! Training draws `ln sigma ~ N(-1.2, 1.2^2)` per row and weights the squared error by
//! `(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`. The sampler integrates the probability-flow
//! ODE from sigma = 80 to 0 over the schedule
//! `sigma_i = (80^(1/7) + i/(N-1) (0.002^(1/7) - 80^(1/7)))^7` with Heun's method.

use tch::{Device, Kind, Tensor};

use super::denoiser::Denoiser;
use super::error::{ModelError, Result};
use super::layers::matrix;
use super::rng::per_row;

pub const SIGMA_DATA: f64 = 0.5;
pub const P_MEAN: f64 = -1.2;
pub const P_STD: f64 = 1.2;
pub const SIGMA_MIN: f64 = 0.002;
pub const SIGMA_MAX: f64 = 80.0;
pub const RHO: f64 = 7.0;

/// The preconditioned denoiser `D(x; sigma, y)`: `x` `[B, d]`, `sigma` `[B]` (positive),
/// `labels` `[B]` int64 -> `[B, d]`.
pub fn precondition(net: &Denoiser, x: &Tensor, sigma: &Tensor, labels: &Tensor) -> Tensor {
    let s = sigma.to_kind(Kind::Float).reshape([-1, 1]);
    let sd2 = SIGMA_DATA * SIGMA_DATA;
    let denom = s.square() + sd2;
    let c_skip = denom.reciprocal() * sd2;
    let c_out = &s * SIGMA_DATA / denom.sqrt();
    let c_in = denom.rsqrt();
    let c_noise = s.log().reshape([-1]) / 4.0;
    let f = net.forward(&(x * c_in), &c_noise, labels);
    x * c_skip + f * c_out
}

/// The per-row randomness of one training step, drawn in Rust from keys (see `rng`).
#[derive(Debug)]
pub struct EdmNoise {
    /// `[B]` noise levels, `exp(N(P_MEAN, P_STD^2))`.
    pub sigma: Tensor,
    /// `[B, d]` standard normals (scaled by sigma in the loss).
    pub noise: Tensor,
    /// `[B]` bool: rows whose label is replaced by the "no label" class.
    pub drop_label: Tensor,
}

impl EdmNoise {
    /// Draws each row's noise from its own stream keyed by `(key, row key)` (the row's slot in
    /// the epoch order), so a row gets the same noise whatever batch or worker it is in.
    pub fn draw(
        key: u64,
        row_ids: &[u64],
        dim: usize,
        label_dropout: f64,
        device: Device,
    ) -> Result<Self> {
        // Per row: the noise level, the dropout draw, then the noise, in that order.
        let all = per_row(key, row_ids, dim + 2, |s, out| {
            out[0] = (s.normal() * P_STD + P_MEAN).exp() as f32;
            out[1] = f32::from(u8::from(s.uniform() < label_dropout));
            for v in &mut out[2..] {
                *v = s.normal() as f32;
            }
        });
        let all = matrix(&all, row_ids.len(), dim + 2, device)?;
        Ok(Self {
            sigma: all.f_select(1, 0)?.f_contiguous()?,
            noise: all.f_narrow(1, 2, dim as i64)?.f_contiguous()?,
            drop_label: all.f_select(1, 1)?.f_gt(0.5)?,
        })
    }
}

/// The EDM training loss on clean latents `z` `[B, d]` with class `labels` `[B]`: the weighted
/// squared error of `D(z + sigma n; sigma, y')`, averaged over rows and dimensions, where `y'` is
/// the label or, for rows in `noise.drop_label`, the "no label" class.
pub fn loss(net: &Denoiser, z: &Tensor, labels: &Tensor, noise: &EdmNoise) -> Result<Tensor> {
    let size = z.size();
    if size.len() != 2 || size[1] != net.dim() || noise.noise.size() != size {
        return Err(ModelError::ShapeMismatch {
            tensor: "diffusion latents / noise".into(),
            expected: vec![size.first().copied().unwrap_or(0), net.dim()],
            found: noise.noise.size(),
        });
    }
    let labels = labels.f_masked_fill(&noise.drop_label, net.null_class())?;
    let sigma = &noise.sigma;
    let sd2 = SIGMA_DATA * SIGMA_DATA;
    let weight = (sigma.square() + sd2) / (sigma * SIGMA_DATA).square();
    let y_noisy = z + &noise.noise * sigma.unsqueeze(1);
    let d = precondition(net, &y_noisy, sigma, &labels);
    Ok((weight.unsqueeze(1) * (d - z).square()).mean(Kind::Float))
}

/// Sampler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerOptions {
    /// Noise levels visited (network evaluations: 2 * steps - 1). At least 2.
    pub steps: usize,
    /// Classifier-free guidance scale s: `D = D_uncond + s (D_cond - D_uncond)`; 1 = plain
    /// conditional sampling (one network evaluation per call instead of two).
    pub guidance: f64,
    /// EDM's S_churn: 0 = deterministic ODE sampling; TabSyn uses 1 (small stochasticity).
    pub churn: f64,
    /// Share of the noise schedule run, in (0, 1], when the sampler starts from given latents
    /// (neighbourhood sampling, SDEdit-style, as diffusers' img2img `strength`): the start is
    /// noised to the schedule's sigma at step `round((1 - strength) * steps)` and denoised from
    /// there. 1 = from sigma_max, where the start no longer matters.
    pub strength: f64,
    /// Rows started near real rows keep the real values and take only the model's change (see
    /// `FlowModel::sample_class`).
    pub residual: bool,
}

impl SamplerOptions {
    pub fn new(steps: usize, guidance: f64) -> Self {
        Self {
            steps,
            guidance,
            churn: 0.0,
            strength: 1.0,
            residual: true,
        }
    }

    /// The schedule step the sampler starts at (0 = sigma_max).
    pub fn first_step(&self) -> usize {
        (((1.0 - self.strength) * self.steps as f64).round() as usize).min(self.steps - 1)
    }
}

/// The noise levels `sigma_0 = 80 > ... > sigma_{N-1} = 0.002`, followed by 0.
pub fn sigma_schedule(steps: usize) -> Vec<f64> {
    let (a, b) = (SIGMA_MAX.powf(1.0 / RHO), SIGMA_MIN.powf(1.0 / RHO));
    let mut t: Vec<f64> = (0..steps)
        .map(|i| {
            let frac = if steps > 1 {
                i as f64 / (steps - 1) as f64
            } else {
                0.0
            };
            (a + frac * (b - a)).powf(RHO)
        })
        .collect();
    t.push(0.0);
    t
}

/// Generates latents with EDM's Heun sampler (Karras et al., Algorithm 2).
///
/// `noise` is `[B, d]` standard normals, scaled by the first sigma of the run (sigma_max unless
/// `opts.strength` < 1) and added to `origin` (`[B, d]` latents to start near; `None` = zeros, plain
/// generation). `labels` `[B]` int64 are the classes to generate. `churn_noise(i)` must return
/// `[B, d]` standard normals for step `i`; it is called only when `opts.churn > 0`. Runs without
/// gradient tracking.
pub fn heun_sample(
    net: &Denoiser,
    noise: &Tensor,
    origin: Option<&Tensor>,
    labels: &Tensor,
    opts: &SamplerOptions,
    churn_noise: &mut dyn FnMut(usize) -> Result<Tensor>,
) -> Result<Tensor> {
    if opts.steps < 2 {
        return Err(ModelError::InvalidConfig {
            key: "model.sampler_steps",
            reason: format!("{} steps; the sampler needs at least 2", opts.steps),
        });
    }
    if !(opts.strength > 0.0 && opts.strength <= 1.0) {
        return Err(ModelError::InvalidConfig {
            key: "model.sampler_strength",
            reason: format!("{} is not in (0, 1]", opts.strength),
        });
    }
    if !opts.guidance.is_finite() || !opts.churn.is_finite() || opts.churn < 0.0 {
        return Err(ModelError::InvalidConfig {
            key: "model.guidance_scale",
            reason: format!(
                "guidance {} and churn {} must be finite (churn >= 0)",
                opts.guidance, opts.churn
            ),
        });
    }
    let _guard = tch::no_grad_guard();
    let rows = noise.size()[0];
    let device = noise.device();
    let guided = (opts.guidance - 1.0).abs() > 1e-12;
    let null = Tensor::full([rows], net.null_class(), (Kind::Int64, device));
    let both_labels = Tensor::cat(&[labels, &null], 0);
    let denoise = |x: &Tensor, sigma: f64| -> Tensor {
        if guided {
            let x2 = Tensor::cat(&[x, x], 0);
            let s2 = Tensor::full([2 * rows], sigma, (Kind::Float, device));
            let d2 = precondition(net, &x2, &s2, &both_labels);
            let d_cond = d2.narrow(0, 0, rows);
            let d_uncond = d2.narrow(0, rows, rows);
            &d_uncond + (d_cond - &d_uncond) * opts.guidance
        } else {
            let s = Tensor::full([rows], sigma, (Kind::Float, device));
            precondition(net, x, &s, labels)
        }
    };
    let t = sigma_schedule(opts.steps);
    let first = opts.first_step();
    let mut x = noise.to_kind(Kind::Float) * t[first];
    if let Some(origin) = origin {
        x += origin.to_kind(Kind::Float);
    }
    for i in first..opts.steps {
        let (t_cur, t_next) = (t[i], t[i + 1]);
        let gamma = if opts.churn > 0.0 {
            (opts.churn / opts.steps as f64).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        };
        let t_hat = t_cur + gamma * t_cur;
        let x_hat = if gamma > 0.0 {
            &x + churn_noise(i)? * (t_hat * t_hat - t_cur * t_cur).sqrt()
        } else {
            x.shallow_clone()
        };
        let d_cur = (&x_hat - denoise(&x_hat, t_hat)) / t_hat;
        let mut x_next = &x_hat + &d_cur * (t_next - t_hat);
        if i < opts.steps - 1 {
            let d_prime = (&x_next - denoise(&x_next, t_next)) / t_next;
            x_next = &x_hat + (d_cur * 0.5 + d_prime * 0.5) * (t_next - t_hat);
        }
        x = x_next;
    }
    Ok(x)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn schedule_runs_from_sigma_max_to_sigma_min_then_zero() {
        let t = sigma_schedule(20);
        assert_eq!(t.len(), 21);
        assert!((t[0] - SIGMA_MAX).abs() < 1e-9);
        assert!((t[19] - SIGMA_MIN).abs() < 1e-12);
        assert_eq!(t[20], 0.0);
        assert!(t.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn strength_picks_the_first_step_like_img2img() {
        let mut o = SamplerOptions::new(20, 1.0);
        assert_eq!(o.first_step(), 0);
        o.strength = 0.5;
        assert_eq!(o.first_step(), 10);
        o.strength = 0.01;
        assert_eq!(o.first_step(), 19, "at least one step is run");
    }
}
