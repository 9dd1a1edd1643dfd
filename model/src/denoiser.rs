//! The denoiser network F of EDM: TabSyn's `MLPDiffusion` with class conditioning.
//!
//! `F(x, c_noise, y) = MLP(proj(x) + time_embed(pos(c_noise)) + class_embed(y))`, where `pos` is
//! the sinusoidal embedding of the noise level (`[sin, cos]`, frequencies `10000^(-i/(w/2))`),
//! `time_embed` is `Linear(w, w) -> SiLU -> Linear(w, w)`, and the MLP is
//! `w -> 2w -> 2w -> w -> d` with SiLU between. The class embedding has `n_classes + 1` rows: the
//! last is "no label", used when the label is dropped in training and for the unconditional
//! branch of classifier-free guidance.

use tch::{Kind, Tensor};

use super::error::{ModelError, Result};
use super::layers::{Builder, Linear};

/// The MLP denoiser.
#[derive(Debug)]
pub struct Denoiser {
    proj: Linear,
    time0: Linear,
    time1: Linear,
    /// `[n_classes + 1, w]`.
    class_embed: Tensor,
    mlp: [Linear; 4],
    /// `[w / 2]` frequencies of the sinusoidal embedding (a constant, not saved).
    freqs: Tensor,
    dim: i64,
    null_class: i64,
}

impl Denoiser {
    /// `dim`: latent width d; `width`: w; `classes`: number of real classes.
    pub(crate) fn new(b: &mut Builder, dim: i64, width: i64, classes: i64) -> Result<Self> {
        if width < 2 {
            return Err(ModelError::InvalidConfig {
                key: "model.denoiser_width",
                reason: format!("{width} is too small (at least 2)"),
            });
        }
        let half = width / 2;
        let proj = Linear::new(&mut b.sub("proj"), dim, width)?;
        let time0 = Linear::new(&mut b.sub("time_embed.0"), 2 * half, width)?;
        let time1 = Linear::new(&mut b.sub("time_embed.1"), width, width)?;
        // nn.Embedding's initialisation: N(0, 1).
        let class_embed = b.normal("class_embed.weight", &[classes + 1, width], 1.0)?;
        let mlp = [
            Linear::new(&mut b.sub("mlp.0"), width, 2 * width)?,
            Linear::new(&mut b.sub("mlp.1"), 2 * width, 2 * width)?,
            Linear::new(&mut b.sub("mlp.2"), 2 * width, width)?,
            Linear::new(&mut b.sub("mlp.3"), width, dim)?,
        ];
        let freqs: Vec<f32> = (0..half)
            .map(|i| (1.0f64 / 10_000.0).powf(i as f64 / half as f64) as f32)
            .collect();
        let freqs = Tensor::f_from_slice(&freqs)?.f_to_device(proj.weight.device())?;
        Ok(Self {
            proj,
            time0,
            time1,
            class_embed,
            mlp,
            freqs,
            dim,
            null_class: classes,
        })
    }

    /// Index of the "no label" class.
    pub fn null_class(&self) -> i64 {
        self.null_class
    }

    pub fn dim(&self) -> i64 {
        self.dim
    }

    /// `x` `[B, d]`, `c_noise` `[B]` float, `labels` `[B]` int64 in `0..=null_class` ->
    /// `[B, d]`.
    pub fn forward(&self, x: &Tensor, c_noise: &Tensor, labels: &Tensor) -> Tensor {
        let arg = c_noise.unsqueeze(1) * self.freqs.unsqueeze(0);
        let emb = Tensor::cat(&[arg.sin(), arg.cos()], 1);
        let emb = self.time1.forward(&self.time0.forward(&emb).silu());
        let emb = emb + Tensor::embedding(&self.class_embed, labels, -1, false, false);
        let h = self.proj.forward(&x.to_kind(Kind::Float)) + emb;
        let h = self.mlp[0].forward(&h).silu();
        let h = self.mlp[1].forward(&h).silu();
        let h = self.mlp[2].forward(&h).silu();
        self.mlp[3].forward(&h)
    }
}
