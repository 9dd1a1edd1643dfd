//! The CNN VAE over a flow's image view (MAGE-ID's second modality, see [`crate::image`]).
//!
//! Encoder: two 3x3 convolutions (stride 1, padding 1, SiLU) keep the small image's resolution,
//! then a linear map of the flattened feature maps gives the posterior mean and log-variance of
//! a `d_image`-wide latent. Decoder: the mirror image, a linear map back to feature maps and two
//! 3x3 convolutions to one channel. The loss is the squared error on the pixels that hold a
//! feature (the layout's mask; empty pixels carry nothing) plus `beta` times the KL to N(0, I),
//! on the same scale as the tabular VAE's so that the summed loss weighs them alike.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::layers::{Builder, Linear, default_bound};

/// Sizes of the CNN VAE.
#[derive(Debug, Clone, PartialEq)]
pub struct CnnShape {
    /// Side of the square input image.
    pub side: i64,
    /// Channels of the first and second convolution.
    pub channels: (i64, i64),
    /// Width of the image latent.
    pub d_image: i64,
}

/// A 3x3 convolution, stride 1, padding 1 (PyTorch's `nn.Conv2d` initialisation).
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn new(b: &mut Builder, c_in: i64, c_out: i64) -> Result<Self> {
        let bound = default_bound(c_in * 9);
        Ok(Self {
            weight: b.uniform("weight", &[c_out, c_in, 3, 3], bound)?,
            bias: b.uniform("bias", &[c_out], bound)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), [1, 1], [1, 1], [1, 1], 1)
    }
}

/// Losses of one CNN VAE forward pass.
#[derive(Debug)]
pub struct CnnLoss {
    /// `mse + beta * kl`, scalar.
    pub total: Tensor,
    /// Mean squared error over the feature pixels.
    pub mse: Tensor,
    /// KL to N(0, I), averaged over rows and latent dimensions.
    pub kl: Tensor,
    /// The posterior means `[B, d_image]`, still in the graph (see `VaeLoss::mean`).
    pub mean: Tensor,
}

/// The CNN VAE. Its parameters are registered with the [`Builder`] it is built with.
#[derive(Debug)]
pub struct CnnVae {
    shape: CnnShape,
    enc0: Conv,
    enc1: Conv,
    to_mu: Linear,
    to_logvar: Linear,
    from_latent: Linear,
    dec0: Conv,
    dec1: Conv,
}

impl CnnVae {
    pub(crate) fn new(b: &mut Builder, shape: CnnShape) -> Result<Self> {
        let (c0, c1) = shape.channels;
        if shape.side < 1 || c0 < 1 || c1 < 1 || shape.d_image < 1 {
            return Err(ModelError::InvalidConfig {
                key: "model.image_latent",
                reason: format!("a CNN VAE of shape {shape:?} has an empty layer"),
            });
        }
        let flat = c1 * shape.side * shape.side;
        Ok(Self {
            enc0: Conv::new(&mut b.sub("enc0"), 1, c0)?,
            enc1: Conv::new(&mut b.sub("enc1"), c0, c1)?,
            to_mu: Linear::new(&mut b.sub("to_mu"), flat, shape.d_image)?,
            to_logvar: Linear::new(&mut b.sub("to_logvar"), flat, shape.d_image)?,
            from_latent: Linear::new(&mut b.sub("from_latent"), shape.d_image, flat)?,
            dec0: Conv::new(&mut b.sub("dec0"), c1, c0)?,
            dec1: Conv::new(&mut b.sub("dec1"), c0, 1)?,
            shape,
        })
    }

    pub fn shape(&self) -> &CnnShape {
        &self.shape
    }

    fn check(&self, images: &Tensor) -> Result<()> {
        let s = self.shape.side;
        let size = images.size();
        if size.len() != 4 || size[1..] != [1, s, s] {
            return Err(ModelError::ShapeMismatch {
                tensor: "images".into(),
                expected: vec![size.first().copied().unwrap_or(0), 1, s, s],
                found: size,
            });
        }
        Ok(())
    }

    fn features(&self, images: &Tensor) -> Tensor {
        let h = self.enc1.forward(&self.enc0.forward(images).silu()).silu();
        h.flatten(1, -1)
    }

    /// Posterior mean and log-variance, `[B, d_image]` each.
    pub fn encode(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check(images)?;
        let h = self.features(images);
        Ok((self.to_mu.forward(&h), self.to_logvar.forward(&h)))
    }

    /// Posterior mean `[B, d_image]`.
    pub fn encode_mean(&self, images: &Tensor) -> Result<Tensor> {
        self.check(images)?;
        Ok(self.to_mu.forward(&self.features(images)))
    }

    /// Latents `[B, d_image]` -> images `[B, 1, side, side]`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let size = z.size();
        if size.len() != 2 || size[1] != self.shape.d_image {
            return Err(ModelError::ShapeMismatch {
                tensor: "image latents".into(),
                expected: vec![size.first().copied().unwrap_or(0), self.shape.d_image],
                found: size,
            });
        }
        let s = self.shape.side;
        let h = self
            .from_latent
            .forward(z)
            .silu()
            .reshape([size[0], self.shape.channels.1, s, s]);
        Ok(self.dec1.forward(&self.dec0.forward(&h).silu()))
    }

    /// Loss on `images` with the pixel `mask` (`[side * side]`, 1 where a feature is). With
    /// `eps` (`[B, d_image]` standard normals) the latent is reparameterised; without, z = mu.
    pub fn loss(
        &self,
        images: &Tensor,
        mask: &Tensor,
        beta: f64,
        eps: Option<&Tensor>,
    ) -> Result<CnnLoss> {
        let (mu, logvar) = self.encode(images)?;
        let z = match eps {
            Some(eps) => {
                if eps.size() != mu.size() {
                    return Err(ModelError::ShapeMismatch {
                        tensor: "image reparameterisation noise".into(),
                        expected: mu.size(),
                        found: eps.size(),
                    });
                }
                &mu + eps * (&logvar * 0.5).exp()
            }
            None => mu.shallow_clone(),
        };
        let mse = masked_mse(&self.decode(&z)?, images, mask)?;
        let kl = ((&logvar + 1.0) - mu.square() - logvar.exp()).mean(Kind::Float) * -0.5;
        Ok(CnnLoss {
            total: &mse + &kl * beta,
            mse,
            kl,
            mean: mu,
        })
    }
}

/// Mean squared difference of two image batches over the masked pixels: the mean of
/// [`masked_mse_rows`], a scalar.
pub fn masked_mse(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(masked_mse_rows(a, b, mask)?.f_mean(Kind::Float)?)
}

/// Per-row mean squared difference over the masked pixels: `[B]`.
pub fn masked_mse_rows(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let rows = a.size()[0];
    let d = (a - b).f_reshape([rows, -1])?.f_square()? * mask.f_unsqueeze(0)?;
    let pixels = mask.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    Ok(d.f_sum_dim_intlist(1, false, Kind::Float)? / pixels)
}
