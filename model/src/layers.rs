//! Small building blocks shared by the VAE and the denoiser: a parameter builder that names and
//! initialises variables from a seeded [`Stream`], and the layers built with it.
//!
//! Initial values follow PyTorch's defaults (what TabSyn's code gets): `nn.Linear` draws weight and
//! bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)), layer norms
//! start at weight 1, bias 0. They are drawn in Rust so the same seed gives the same weights on
//! any thread and any device.

use std::fmt::Display;

use tch::{Device, Kind, Tensor};

use super::error::Result;
use super::rng::Stream;

/// Creates named, trainable variables in creation order.
pub(crate) struct Builder<'a> {
    params: &'a mut Vec<(String, Tensor)>,
    rng: &'a mut Stream,
    device: Device,
    prefix: String,
}

impl<'a> Builder<'a> {
    pub fn new(
        params: &'a mut Vec<(String, Tensor)>,
        rng: &'a mut Stream,
        device: Device,
        prefix: &str,
    ) -> Self {
        Self {
            params,
            rng,
            device,
            prefix: prefix.to_string(),
        }
    }

    /// A builder whose variables are named `<prefix>.<name>.*`.
    pub fn sub(&mut self, name: impl Display) -> Builder<'_> {
        Builder {
            params: self.params,
            rng: self.rng,
            device: self.device,
            prefix: format!("{}.{}", self.prefix, name),
        }
    }

    fn add(&mut self, name: &str, values: Vec<f32>, dims: &[i64]) -> Result<Tensor> {
        let t = Tensor::f_from_slice(&values)?
            .f_reshape(dims)?
            .f_to_device(self.device)?
            .set_requires_grad(true);
        self.params
            .push((format!("{}.{}", self.prefix, name), t.shallow_clone()));
        Ok(t)
    }

    /// U(-bound, bound).
    pub fn uniform(&mut self, name: &str, dims: &[i64], bound: f64) -> Result<Tensor> {
        let n: i64 = dims.iter().product();
        let values = (0..n)
            .map(|_| ((2.0 * self.rng.uniform() - 1.0) * bound) as f32)
            .collect();
        self.add(name, values, dims)
    }

    /// N(0, std^2).
    pub fn normal(&mut self, name: &str, dims: &[i64], std: f64) -> Result<Tensor> {
        let n: i64 = dims.iter().product();
        let values = (0..n).map(|_| (self.rng.normal() * std) as f32).collect();
        self.add(name, values, dims)
    }

    pub fn constant(&mut self, name: &str, dims: &[i64], value: f32) -> Result<Tensor> {
        let n: i64 = dims.iter().product();
        self.add(name, vec![value; n as usize], dims)
    }
}

/// PyTorch's default bound for `nn.Linear` / kaiming_uniform(a = sqrt(5)): 1 / sqrt(fan_in).
pub(crate) fn default_bound(fan_in: i64) -> f64 {
    1.0 / (fan_in.max(1) as f64).sqrt()
}

/// Xavier-uniform bound: gain * sqrt(6 / (fan_in + fan_out)).
pub(crate) fn xavier_bound(fan_in: i64, fan_out: i64, gain: f64) -> f64 {
    gain * (6.0 / (fan_in + fan_out).max(1) as f64).sqrt()
}

/// `y = x W^T + b`; weight `[out, in]`, bias `[out]`.
#[derive(Debug)]
pub(crate) struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's `nn.Linear` initialisation.
    pub fn new(b: &mut Builder, in_dim: i64, out_dim: i64) -> Result<Self> {
        let bound = default_bound(in_dim);
        let weight = b.uniform("weight", &[out_dim, in_dim], bound)?;
        let bias = Some(b.uniform("bias", &[out_dim], bound)?);
        Ok(Self { weight, bias })
    }

    /// Default weight, zero bias (TabSyn's attention projections).
    pub fn zero_bias(b: &mut Builder, in_dim: i64, out_dim: i64) -> Result<Self> {
        let weight = b.uniform("weight", &[out_dim, in_dim], default_bound(in_dim))?;
        let bias = Some(b.constant("bias", &[out_dim], 0.0)?);
        Ok(Self { weight, bias })
    }

    /// Default weight, no bias.
    pub fn no_bias(b: &mut Builder, in_dim: i64, out_dim: i64) -> Result<Self> {
        let weight = b.uniform("weight", &[out_dim, in_dim], default_bound(in_dim))?;
        Ok(Self { weight, bias: None })
    }

    /// Xavier-uniform weight with `gain`, default bias (TabSyn's reconstruction heads).
    pub fn xavier(b: &mut Builder, in_dim: i64, out_dim: i64, gain: f64) -> Result<Self> {
        let weight = b.uniform(
            "weight",
            &[out_dim, in_dim],
            xavier_bound(in_dim, out_dim, gain),
        )?;
        let bias = Some(b.uniform("bias", &[out_dim], default_bound(in_dim))?);
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// [`Linear::forward`] for a layer much wider than its input (the VAE's FFN expansion,
    /// `d_token` 4 -> 128, over every token of the batch): the same product, but with the weight
    /// transposed into a contiguous copy, so that autograd computes the weight's gradient as
    /// `x^T g` (`[in, T] x [T, out]`) instead of `(g^T x)^T` (`[out, T] x [T, in]`), the
    /// orientation PyTorch picks for a transposed weight and which MKL runs about 5x slower at
    /// these shapes. Only the rounding of the gradient differs.
    pub fn forward_wide(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let rows: i64 = size[..size.len() - 1].iter().product();
        let flat = x.reshape([rows, size[size.len() - 1]]);
        let weight = self.weight.tr().contiguous();
        let y = match &self.bias {
            Some(b) => b.addmm(&flat, &weight),
            None => flat.mm(&weight),
        };
        let mut out = size;
        if let Some(last) = out.last_mut() {
            *last = self.weight.size()[0];
        }
        y.reshape(out)
    }
}

/// Layer normalisation over the last dimension (eps 1e-5, affine).
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub fn new(b: &mut Builder, dim: i64) -> Result<Self> {
        Ok(Self {
            weight: b.constant("weight", &[dim], 1.0)?,
            bias: b.constant("bias", &[dim], 0.0)?,
            dim,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), 1e-5, true)
    }
}

/// A float32 tensor `[rows, cols]` on `device` from row-major values.
pub(crate) fn matrix(values: &[f32], rows: usize, cols: usize, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(values)?
        .f_reshape([rows as i64, cols as i64])?
        .f_to_device(device)?)
}

/// An int64 vector on `device`.
pub(crate) fn int_vector(values: &[i64], device: Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(values)?.f_to_device(device)?)
}

/// A scalar float tensor's value.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.f_to_kind(Kind::Double)?.f_double_value(&[])?)
}

/// A float32 zero scalar on `device`.
pub(crate) fn zero_scalar(device: Device) -> Tensor {
    Tensor::zeros([0i64; 0], (Kind::Float, device))
}
