//! flowsynth's generative model, the math without the runtime: class-conditional latent
//! diffusion over network flows (DESIGN.md §3). The worker crate runs it (assignments,
//! data-parallel glue, checkpoints); nothing here knows about gRPC, jobs or object stores.
//!
//! Rows are encoded by the [`Preprocessor`] (normal-quantile transform, ordinal codes) and
//! mapped to the space the denoiser learns, which [`ModelMode`] chooses:
//! - `tabular` (TabSyn): the posterior means of a Transformer [`Vae`] over the columns;
//! - `multimodal` (MAGE-ID): those joined with the posterior mean of a [`CnnVae`] over the
//!   row's image view ([`image`]): one unified latent; the tabular decoder gives the sample and
//!   the image decoder a second view whose agreement with it is the cross-modal coherence;
//! - `data-space` (TabDDPM-like baseline): the preprocessed row itself, categoricals one-hot,
//!   with no VAE.
//!
//! The space is normalised as `(z - mean) / 2` (TabSyn) and modelled by a class-conditioned EDM
//! [`Denoiser`]. Sampling runs the Heun sampler there, undoes the normalisation, decodes and
//! inverts the preprocessing.
//!
//! [`FlowModel`] holds the networks and the latent statistics; [`Trainer`] runs the two training
//! stages (VAEs, then denoiser) with two Adam optimisers and a checkpointable [`TrainState`].
//!
//! All randomness (initial weights, noise, data order) is drawn in Rust from the seed (see
//! `rng`), so the same seed, data and configuration give the same weights and losses on CPU, on
//! any thread.

pub mod alloc;
pub mod cnn;
pub mod denoiser;
pub mod edm;
mod epoch;
pub mod error;
pub mod image;
mod layers;
pub mod optim;
pub mod preprocess;
pub mod rng;
mod rows;
mod trainer;
pub mod vae;

use std::collections::HashMap;

use flowsynth_common::config::{ModelConfig, ModelMode};
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::table::Table;
use tch::{Device, Kind, Tensor};

pub use alloc::reuse_freed_memory;
pub use cnn::{CnnShape, CnnVae};
pub use denoiser::Denoiser;
pub use edm::{EdmNoise, SamplerOptions};
pub use error::{ModelError, Result};
pub use image::ImageLayout;
pub use optim::{Adam, AdamConfig};
pub use preprocess::{Batch, Preprocessor, probit};
pub use rows::{RowSource, TableSource, class_counts};
pub use trainer::{Alone, EpochReport, Partition, Replicas, Stage, TrainState, Trainer};
pub use vae::{Vae, VaeLoss, VaeShape};

use image::MomentSums;
use layers::{Builder, int_vector, matrix};
use rng::{Stream, derive, row_normals, tag};

/// Rows generated (and decoded) per chunk in [`FlowModel::sample`]; bounds memory for large
/// requests.
pub const SAMPLE_CHUNK_ROWS: usize = 4096;

/// Nearest same-class neighbours each anchor may be interpolated with in neighbourhood sampling
/// (SMOTE's k).
pub const ANCHOR_NEIGHBOURS: i64 = 5;

/// Name of the per-dimension latent mean buffer (`[latent_dim]`).
pub const LATENT_MEAN: &str = "latent.mean";
/// Name of the "latent statistics fitted" flag buffer (`[1]`, 0 or 1).
pub const LATENT_FITTED: &str = "latent.fitted";
/// Name of the image layout buffer of the multimodal model (`[n_features]`: each feature's
/// pixel, -1 before the layout is fitted).
pub const IMAGE_PIXELS: &str = "image.pixels";

/// The image modality of the multimodal model.
#[derive(Debug)]
struct ImageView {
    cnn: CnnVae,
    /// The [`IMAGE_PIXELS`] buffer.
    pixels: Tensor,
    /// The layout the buffer holds, with its pixel mask, once fitted.
    layout: Option<(ImageLayout, Tensor)>,
}

/// Preprocessing, VAE(s), denoiser and latent statistics of one dataset.
#[derive(Debug)]
pub struct FlowModel {
    pre: Preprocessor,
    mode: ModelMode,
    /// The tabular VAE (`None` in data space).
    vae: Option<Vae>,
    /// The CNN VAE and image layout (multimodal only).
    image: Option<ImageView>,
    denoiser: Denoiser,
    /// `vae.*` then `image.cnn.*` variables in creation order: what the first stage trains.
    vae_params: Vec<(String, Tensor)>,
    /// `denoiser.*` variables in creation order.
    denoiser_params: Vec<(String, Tensor)>,
    /// `[latent_dim]` mean of the unnormalised latents over the training rows.
    latent_mean: Tensor,
    /// `[1]`: 1 once `latent_mean` is fitted.
    latent_fitted: Tensor,
    config: ModelConfig,
    device: Device,
}

/// Reparameterisation noise of the first stage for a batch: the tabular VAE's
/// (`[B, 1 + n_tokens, d_token]`) and, multimodal, the CNN VAE's (`[B, image_latent]`).
#[derive(Debug)]
pub struct VaeNoise {
    pub tabular: Tensor,
    pub image: Option<Tensor>,
}

/// What the first stage's loss adds up for one batch.
#[derive(Debug)]
pub struct StageOneLoss {
    /// The tabular VAE's loss (its `total` includes the image terms when there are any).
    pub tabular: VaeLoss,
    /// Multimodal: the CNN VAE's pixel MSE and KL.
    pub image_mse: f64,
    pub image_kl: f64,
    /// The batch's unnormalised latents `[B, latent_dim]` (posterior means: the tabular VAE's,
    /// then the CNN VAE's when multimodal), still in the graph: the same numbers
    /// [`FlowModel::encode_latent`] would compute, from the pass this loss already made.
    pub latent: Tensor,
}

impl FlowModel {
    /// Builds the networks for `manifest`'s columns with weights drawn from `seed` (the same seed
    /// gives the same weights, on any device).
    pub fn new(
        manifest: &DatasetManifest,
        cfg: &ModelConfig,
        device: Device,
        seed: u64,
    ) -> Result<Self> {
        for (key, v) in [
            ("model.d_token", cfg.d_token),
            ("model.n_heads", cfg.n_heads),
            ("model.ffn_dim", cfg.ffn_dim),
            ("model.n_layers", cfg.n_layers),
            ("model.denoiser_width", cfg.denoiser_width),
            ("model.image_latent", cfg.image_latent),
            ("model.image_channels", cfg.image_channels),
        ] {
            if v < 1 {
                return Err(ModelError::InvalidConfig {
                    key,
                    reason: format!("{v} is not positive"),
                });
            }
        }
        let pre = Preprocessor::new(manifest)?;
        let mut rng = Stream::new(derive(seed, &[tag::INIT]));
        let mut vae_params = Vec::new();
        let vae = if cfg.mode.has_vae() {
            let shape = VaeShape {
                n_num: pre.n_num() as i64,
                cardinalities: pre.cardinalities().to_vec(),
                d_token: cfg.d_token,
                n_heads: cfg.n_heads,
                ffn_dim: cfg.ffn_dim,
                n_layers: cfg.n_layers,
            };
            Some(Vae::new(
                &mut Builder::new(&mut vae_params, &mut rng, device, "vae"),
                shape,
            )?)
        } else {
            None
        };
        let n_features = (pre.n_num() + pre.n_cat()) as i64;
        let image = if cfg.mode == ModelMode::Multimodal {
            let shape = CnnShape {
                side: ImageLayout::side_for(n_features as usize) as i64,
                channels: (cfg.image_channels, 2 * cfg.image_channels),
                d_image: cfg.image_latent,
            };
            Some(ImageView {
                cnn: CnnVae::new(
                    &mut Builder::new(&mut vae_params, &mut rng, device, "image.cnn"),
                    shape,
                )?,
                pixels: Tensor::f_full([n_features], -1.0, (Kind::Float, device))?,
                layout: None,
            })
        } else {
            None
        };
        let latent_dim = match (&vae, &image) {
            (Some(v), None) => v.shape().latent_dim(),
            (Some(v), Some(i)) => v.shape().latent_dim() + i.cnn.shape().d_image,
            _ => pre.n_num() as i64 + pre.cardinalities().iter().sum::<i64>(),
        };
        let mut denoiser_params = Vec::new();
        let denoiser = Denoiser::new(
            &mut Builder::new(&mut denoiser_params, &mut rng, device, "denoiser"),
            latent_dim,
            cfg.denoiser_width,
            pre.classes() as i64,
        )?;
        Ok(Self {
            latent_mean: Tensor::f_zeros([latent_dim], (Kind::Float, device))?,
            latent_fitted: Tensor::f_zeros([1], (Kind::Float, device))?,
            pre,
            mode: cfg.mode,
            vae,
            image,
            denoiser,
            vae_params,
            denoiser_params,
            config: cfg.clone(),
            device,
        })
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.pre
    }

    pub fn mode(&self) -> ModelMode {
        self.mode
    }

    /// The tabular VAE (`None` in data space).
    pub fn vae(&self) -> Option<&Vae> {
        self.vae.as_ref()
    }

    /// The CNN VAE (multimodal only).
    pub fn cnn(&self) -> Option<&CnnVae> {
        self.image.as_ref().map(|i| &i.cnn)
    }

    /// The fitted image layout (multimodal, once fitted).
    pub fn image_layout(&self) -> Option<&ImageLayout> {
        self.image
            .as_ref()
            .and_then(|i| i.layout.as_ref())
            .map(|(l, _)| l)
    }

    pub fn denoiser(&self) -> &Denoiser {
        &self.denoiser
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Width of a row of the space the denoiser learns.
    pub fn latent_dim(&self) -> i64 {
        self.denoiser.dim()
    }

    /// Width of the tabular VAE's part of the latent (0 in data space).
    fn tabular_dim(&self) -> i64 {
        self.vae.as_ref().map_or(0, |v| v.shape().latent_dim())
    }

    pub fn classes(&self) -> usize {
        self.pre.classes()
    }

    /// The first stage's trainable variables (shallow clones), in a fixed order: the tabular
    /// VAE's, then the CNN VAE's; none in data space.
    pub fn vae_params(&self) -> Vec<(String, Tensor)> {
        shallow(&self.vae_params)
    }

    /// The denoiser's trainable variables (shallow clones), in a fixed order.
    pub fn denoiser_params(&self) -> Vec<(String, Tensor)> {
        shallow(&self.denoiser_params)
    }

    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (LATENT_MEAN.to_string(), self.latent_mean.shallow_clone()),
            (
                LATENT_FITTED.to_string(),
                self.latent_fitted.shallow_clone(),
            ),
        ];
        if let Some(img) = &self.image {
            out.push((IMAGE_PIXELS.to_string(), img.pixels.shallow_clone()));
        }
        out
    }

    /// Every weight and buffer, by stable name (`vae.*`, `image.*`, `denoiser.*`, `latent.*`):
    /// what a checkpoint stores. The tensors share storage with the model.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.vae_params();
        out.extend(self.denoiser_params());
        out.extend(self.buffers());
        out
    }

    /// Copies `tensors` (any device, float kind) into the model. Every tensor of
    /// [`FlowModel::named_tensors`] must be present with its shape, and nothing else; errors
    /// name the offending tensor and leave the model unchanged.
    pub fn load_named_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let mut by_name: HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let targets = self.named_tensors();
        let mut pairs = Vec::with_capacity(targets.len());
        for (name, dst) in targets {
            let src = by_name
                .remove(name.as_str())
                .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
            if src.size() != dst.size() {
                return Err(ModelError::ShapeMismatch {
                    tensor: name,
                    expected: dst.size(),
                    found: src.size(),
                });
            }
            pairs.push((dst, src));
        }
        if let Some(name) = by_name.keys().min() {
            return Err(ModelError::UnexpectedTensor {
                name: name.to_string(),
            });
        }
        // The layout is checked before anything is copied.
        let layout = match (&self.image, by_name_pixels(tensors)) {
            (Some(img), Some(p)) => Some(layout_from_buffer(p, img.cnn.shape().side)?),
            _ => None,
        };
        {
            let _guard = tch::no_grad_guard();
            for (mut dst, src) in pairs {
                dst.f_copy_(src)?;
            }
        }
        if let (Some(img), Some(layout)) = (&mut self.image, layout) {
            img.layout = layout
                .map(|l| Ok::<_, ModelError>((l.clone(), l.mask(self.device)?)))
                .transpose()?;
        }
        Ok(())
    }

    /// Whether the latent statistics have been fitted (VAE training finished).
    pub fn latent_fitted(&self) -> Result<bool> {
        Ok(layers::scalar(&self.latent_fitted.f_sum(Kind::Float)?)? > 0.5)
    }

    /// The latent mean `[latent_dim]`.
    pub fn latent_mean(&self) -> &Tensor {
        &self.latent_mean
    }

    /// Sets the latent mean (`[latent_dim]`) and marks the statistics fitted, e.g. with a mean
    /// averaged over all workers.
    pub fn set_latent_mean(&mut self, mean: &Tensor) -> Result<()> {
        let expected = vec![self.latent_dim()];
        if mean.size() != expected {
            return Err(ModelError::ShapeMismatch {
                tensor: LATENT_MEAN.into(),
                expected,
                found: mean.size(),
            });
        }
        let _guard = tch::no_grad_guard();
        self.latent_mean.f_copy_(mean)?;
        let _ = self.latent_fitted.f_fill_(1.0)?;
        Ok(())
    }

    /// Whether the model still needs its image layout fitted (multimodal, before training).
    pub fn needs_image_layout(&self) -> bool {
        self.image.as_ref().is_some_and(|i| i.layout.is_none())
    }

    /// The image view's feature rows of a batch `[B, n_num + n_cat]` (see [`image`]).
    fn image_features(&self, num: &Tensor, cat: &Tensor) -> Result<Tensor> {
        image::features(num, cat, self.pre.cardinalities())
    }

    /// Sums of the image features over batches of rows, from which the layout is fitted
    /// ([`FlowModel::fit_image_layout`]); a data-parallel trainer sums them over its ranks.
    pub fn image_moments(
        &self,
        batches: &mut dyn Iterator<Item = Result<Batch>>,
    ) -> Result<MomentSums> {
        let n = (self.pre.n_num() + self.pre.n_cat()) as i64;
        let mut sums = MomentSums::new(n, self.device)?;
        let _guard = tch::no_grad_guard();
        for batch in batches {
            let batch = batch?;
            sums.add(&self.image_features(&batch.num, &batch.cat)?)?;
        }
        Ok(sums)
    }

    /// Fits the image layout from (replica-summed) moments and stores it in the model.
    pub fn fit_image_layout(&mut self, sums: &MomentSums) -> Result<()> {
        let Some(img) = &mut self.image else {
            return Ok(());
        };
        let n = sums.sum.size()[0] as usize;
        let layout = ImageLayout::fit(&sums.correlation()?, n)?;
        let pixels: Vec<f32> = layout.pixel_of().iter().map(|&p| p as f32).collect();
        {
            let _guard = tch::no_grad_guard();
            img.pixels
                .f_copy_(&Tensor::f_from_slice(&pixels)?.f_to_device(self.device)?)?;
        }
        let mask = layout.mask(self.device)?;
        img.layout = Some((layout, mask));
        Ok(())
    }

    /// A batch's images `[B, 1, side, side]` (multimodal, layout fitted).
    pub fn render(&self, num: &Tensor, cat: &Tensor) -> Result<Tensor> {
        let (layout, _) = self.fitted_layout()?;
        layout.render(&self.image_features(num, cat)?)
    }

    fn fitted_layout(&self) -> Result<&(ImageLayout, Tensor)> {
        self.image
            .as_ref()
            .and_then(|i| i.layout.as_ref())
            .ok_or(ModelError::LayoutNotFitted)
    }

    /// The first stage's loss on a batch (tabular VAE, plus the CNN VAE on the batch's images
    /// when multimodal, summed with the same beta); `eps` as in [`Vae::loss`].
    pub fn vae_loss(
        &self,
        batch: &Batch,
        beta: f64,
        eps: Option<&VaeNoise>,
    ) -> Result<StageOneLoss> {
        let vae = self.trained_vae()?;
        let mut tabular = vae.loss(batch, beta, eps.map(|e| &e.tabular))?;
        let (mut image_mse, mut image_kl) = (0.0, 0.0);
        let mut latent = tabular.mean.shallow_clone();
        if let Some(img) = &self.image {
            let (_, mask) = self.fitted_layout()?;
            let images = self.render(&batch.num, &batch.cat)?;
            let l = img
                .cnn
                .loss(&images, mask, beta, eps.and_then(|e| e.image.as_ref()))?;
            tabular.total = &tabular.total + &l.total;
            image_mse = layers::scalar(&l.mse.f_detach()?)?;
            image_kl = layers::scalar(&l.kl.f_detach()?)?;
            latent = Tensor::f_cat(&[latent, l.mean], 1)?;
        }
        Ok(StageOneLoss {
            tabular,
            image_mse,
            image_kl,
            latent,
        })
    }

    /// The tabular VAE, for the first stage's work; the data-space model has none.
    fn trained_vae(&self) -> Result<&Vae> {
        self.vae.as_ref().ok_or(ModelError::InvalidConfig {
            key: "model.mode",
            reason: "the data-space model has no VAE to train".into(),
        })
    }

    /// First-stage reparameterisation noise for rows `row_ids` (see [`VaeNoise`]).
    pub fn vae_noise(&self, key: u64, row_ids: &[u64]) -> Result<VaeNoise> {
        let s = self.trained_vae()?.shape();
        let tab = ((s.n_tokens() + 1) * s.d_token) as usize;
        let img = self.cnn().map_or(0, |c| c.shape().d_image as usize);
        let per_row = tab + img;
        let rows = row_ids.len();
        let all = matrix(
            &row_normals(key, row_ids, per_row),
            rows,
            per_row,
            self.device,
        )?;
        let tabular = all.f_narrow(1, 0, tab as i64)?.f_reshape([
            rows as i64,
            s.n_tokens() + 1,
            s.d_token,
        ])?;
        let image = if img > 0 {
            Some(all.f_narrow(1, tab as i64, img as i64)?)
        } else {
            None
        };
        Ok(VaeNoise { tabular, image })
    }

    /// Cross-modal coherence of latents (unnormalised, `[B, latent_dim]`): the mean squared
    /// difference, over the feature pixels, between the image the CNN decoder draws from the
    /// image part and the image of the row the tabular decoder reads from the tabular part.
    /// 0 = the two views agree exactly. `None` unless multimodal. Per row, `[B]`.
    fn coherence_rows(&self, raw: &Tensor, num: &Tensor, cat: &Tensor) -> Result<Option<Tensor>> {
        let Some(img) = &self.image else {
            return Ok(None);
        };
        let (_, mask) = self.fitted_layout()?;
        let tab = self.tabular_dim();
        let drawn = img
            .cnn
            .decode(&raw.f_narrow(1, tab, img.cnn.shape().d_image)?)?;
        let read = self.render(num, cat)?;
        Ok(Some(cnn::masked_mse_rows(&drawn, &read, mask)?))
    }

    /// Mean cross-modal coherence of rows (encoded with the posterior means, decoded by both
    /// decoders): a training metric of the multimodal model; `None` in the other modes.
    pub fn coherence(&self, batch: &Batch) -> Result<Option<f64>> {
        if self.image.is_none() {
            return Ok(None);
        }
        self.coherence_of_latents(&self.raw_latent(batch)?)
    }

    /// [`FlowModel::coherence`] of rows already encoded: unnormalised latents `raw`
    /// `[B, latent_dim]` (e.g. [`StageOneLoss::latent`]).
    pub fn coherence_of_latents(&self, raw: &Tensor) -> Result<Option<f64>> {
        if self.image.is_none() {
            return Ok(None);
        }
        let _guard = tch::no_grad_guard();
        let (num, cat) = self.decode_raw(raw)?;
        match self.coherence_rows(raw, &num, &cat)? {
            Some(c) => Ok(Some(layers::scalar(&c.f_mean(Kind::Float)?)?)),
            None => Ok(None),
        }
    }

    /// Unnormalised latents of a batch `[B, latent_dim]` (posterior means, or the row itself in
    /// data space), without gradients.
    fn raw_latent(&self, batch: &Batch) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        match (&self.vae, &self.image) {
            (Some(vae), None) => vae.encode_mean(batch),
            (Some(vae), Some(img)) => {
                let tab = vae.encode_mean(batch)?;
                let pic = img.cnn.encode_mean(&self.render(&batch.num, &batch.cat)?)?;
                Ok(Tensor::f_cat(&[tab, pic], 1)?)
            }
            (None, _) => {
                let mut parts = vec![batch.num.shallow_clone()];
                for (i, &k) in self.pre.cardinalities().iter().enumerate() {
                    parts.push(
                        batch
                            .cat
                            .f_select(1, i as i64)?
                            .f_one_hot(k)?
                            .f_to_kind(Kind::Float)?,
                    );
                }
                Ok(Tensor::f_cat(&parts, 1)?)
            }
        }
    }

    /// Unnormalised latents `raw` `[B, latent_dim]` -> the denoiser's space (centred on the
    /// training latents' mean, halved). Differentiable: joint training passes
    /// [`StageOneLoss::latent`] through it.
    pub fn diffusion_latent(&self, raw: &Tensor) -> Result<Tensor> {
        Ok((raw - self.latent_mean.f_unsqueeze(0)?) / 2.0)
    }

    /// Unnormalised latents -> preprocessed values: normal scores `[B, n_num]` and codes
    /// `[B, n_cat]` (the tabular decoder; in data space the numeric part and the argmax of each
    /// one-hot block).
    fn decode_raw(&self, raw: &Tensor) -> Result<(Tensor, Tensor)> {
        match &self.vae {
            Some(vae) => vae.decode(&raw.f_narrow(1, 0, self.tabular_dim())?),
            None => {
                let n_num = self.pre.n_num() as i64;
                let num = raw.f_narrow(1, 0, n_num)?;
                let mut at = n_num;
                let mut codes = Vec::new();
                for &k in self.pre.cardinalities() {
                    codes.push(raw.f_narrow(1, at, k)?.f_argmax(-1, false)?);
                    at += k;
                }
                let cat = if codes.is_empty() {
                    Tensor::f_zeros([raw.size()[0], 0], (Kind::Int64, raw.device()))?
                } else {
                    Tensor::f_stack(&codes, 1)?
                };
                Ok((num, cat))
            }
        }
    }

    /// Sum of the unnormalised latents over batches of rows (`[latent_dim]`, float64) and the
    /// number of rows, without gradients. The trainer sums both over its replicas (a sum, not an
    /// average: shards differ in size) and sets their ratio, TabSyn's latent mean, with
    /// [`FlowModel::set_latent_mean`].
    pub fn latent_sums(
        &self,
        batches: &mut dyn Iterator<Item = Result<Batch>>,
    ) -> Result<(Tensor, i64)> {
        let _guard = tch::no_grad_guard();
        let mut sum = Tensor::f_zeros([self.latent_dim()], (Kind::Double, self.device))?;
        let mut rows = 0;
        for batch in batches {
            let batch = batch?;
            let mu = self.raw_latent(&batch)?;
            sum += mu.f_sum_dim_intlist(0, false, Kind::Double)?;
            rows += batch.rows();
        }
        Ok((sum, rows))
    }

    /// The diffusion-space latent of a batch: `(raw - mean) / 2`, `[B, latent_dim]`, without
    /// gradients.
    pub fn encode_latent(&self, batch: &Batch) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.diffusion_latent(&self.raw_latent(batch)?)
    }

    /// EDM loss of the denoiser on diffusion-space latents `z` `[B, latent_dim]` with class codes
    /// `labels` `[B]` and the step's noise (see [`EdmNoise::draw`]).
    pub fn denoiser_loss(&self, z: &Tensor, labels: &Tensor, noise: &EdmNoise) -> Result<Tensor> {
        edm::loss(&self.denoiser, z, labels, noise)
    }

    /// Generates one row per entry of `labels` (class codes), with `steps` Heun steps and
    /// classifier-free guidance scale `guidance` (1 = none). Deterministic for a seed; row `i`'s
    /// starting noise depends only on `(seed, i)`. Works through [`SAMPLE_CHUNK_ROWS`] rows at a
    /// time. The output's labels are `labels`.
    pub fn sample(&self, labels: &[u32], steps: usize, guidance: f64, seed: u64) -> Result<Table> {
        self.sample_with(labels, &SamplerOptions::new(steps, guidance), seed)
    }

    /// [`FlowModel::sample`] with all sampler options (e.g. churn). Generation from pure noise:
    /// `opts.strength` must be 1 (see [`FlowModel::sample_class`] for the rest).
    pub fn sample_with(&self, labels: &[u32], opts: &SamplerOptions, seed: u64) -> Result<Table> {
        self.check_labels(labels)?;
        if opts.strength < 1.0 {
            return Err(ModelError::InvalidConfig {
                key: "model.sampler_strength",
                reason: "generation from noise runs the whole schedule (strength 1); pass real \
                         rows to start near to sample_class"
                    .into(),
            });
        }
        let mut out = self.empty_table();
        for start in (0..labels.len()).step_by(SAMPLE_CHUNK_ROWS) {
            let chunk = &labels[start..(start + SAMPLE_CHUNK_ROWS).min(labels.len())];
            let ids: Vec<u64> = (start as u64..(start + chunk.len()) as u64).collect();
            out.append(&self.generate(chunk, &ids, None, opts, seed)?.0);
        }
        Ok(out)
    }

    /// Encodes real rows of one class as starting points for [`FlowModel::sample_class`]: their
    /// diffusion-space latents and each one's nearest same-class neighbours in that space.
    pub fn anchors(&self, rows: &Table) -> Result<Anchors> {
        if !self.latent_fitted()? {
            return Err(ModelError::NotFitted);
        }
        if rows.rows() == 0 {
            return Err(ModelError::EmptyData {
                what: "rows to sample near",
            });
        }
        let (latents, num, cat) = self.encode_table(rows)?;
        let n = rows.rows() as i64;
        let k = ANCHOR_NEIGHBOURS.min(n - 1);
        let neighbours = if k > 0 {
            let _guard = tch::no_grad_guard();
            let mut found = Vec::new();
            let norms = latents
                .f_square()?
                .f_sum_dim_intlist(1, false, Kind::Float)?;
            for start in (0..n).step_by(SAMPLE_CHUNK_ROWS) {
                let len = (n - start).min(SAMPLE_CHUNK_ROWS as i64);
                let q = latents.f_narrow(0, start, len)?;
                // Squared distances |q|^2 + |l|^2 - 2 q.l (ranking only).
                let d = norms.f_narrow(0, start, len)?.f_unsqueeze(1)? + norms.f_unsqueeze(0)?
                    - q.f_matmul(&latents.f_transpose(0, 1)?)? * 2.0;
                // The row itself is at distance 0: take k + 1 and drop the first.
                let (_, idx) = d.f_topk(k + 1, 1, false, true)?;
                found.push(idx.f_narrow(1, 1, k)?);
            }
            Some(Tensor::f_cat(&found, 0)?)
        } else {
            None
        };
        // Which category of each column the class's real rows use, over the concatenated
        // vocabularies.
        let cards = self.pre.cardinalities();
        let mut offsets = Vec::with_capacity(cards.len());
        let mut seen = vec![false; cards.iter().sum::<i64>() as usize];
        let mut acc = 0i64;
        for (col, &k) in rows.categorical.iter().zip(cards) {
            offsets.push(acc);
            for &code in col {
                if let Some(s) = seen.get_mut((acc + i64::from(code)) as usize) {
                    *s = true;
                }
            }
            acc += k;
        }
        Ok(Anchors {
            latents,
            num,
            cat,
            seen: Tensor::f_from_slice(&seen)?.f_to_device(self.device)?,
            offsets: int_vector(&offsets, self.device)?,
            neighbours,
        })
    }

    /// `count` new rows of class `label`. With `anchors` (real rows of the class, see
    /// [`FlowModel::anchors`]) this is neighbourhood sampling: each row starts at a point on the
    /// segment between a random anchor and one of its nearest neighbours (a SMOTE step in latent
    /// space), is noised to the sigma that `opts.strength` selects and denoised conditioned on
    /// `label`; low strength gives close variations of real rows, strength 1 plain generation.
    /// Without anchors the rows are generated from pure noise (strength must be 1). Row `i`'s
    /// anchor, partner and noise depend only on `(seed, first_id + i)`, so a caller can draw
    /// more rows later without changing the first ones.
    pub fn sample_class(
        &self,
        label: u32,
        count: usize,
        anchors: Option<&Anchors>,
        opts: &SamplerOptions,
        seed: u64,
        first_id: u64,
    ) -> Result<Table> {
        Ok(self
            .sample_class_scored(label, count, anchors, opts, seed, first_id)?
            .0)
    }

    /// [`FlowModel::sample_class`] with each row's cross-modal coherence (multimodal; see
    /// [`FlowModel::coherence`]), `None` in the other modes.
    pub fn sample_class_scored(
        &self,
        label: u32,
        count: usize,
        anchors: Option<&Anchors>,
        opts: &SamplerOptions,
        seed: u64,
        first_id: u64,
    ) -> Result<(Table, Option<Vec<f64>>)> {
        self.check_labels(&[label])?;
        if anchors.is_none() && opts.strength < 1.0 {
            return Err(ModelError::InvalidConfig {
                key: "model.sampler_strength",
                reason: format!(
                    "strength {} needs real rows of the class to start near",
                    opts.strength
                ),
            });
        }
        let key = derive(seed, &[tag::NEIGHBOURHOOD]);
        let mut out = self.empty_table();
        let mut coherence: Option<Vec<f64>> = None;
        for start in (0..count).step_by(SAMPLE_CHUNK_ROWS) {
            let len = SAMPLE_CHUNK_ROWS.min(count - start);
            let ids: Vec<u64> = (0..len as u64)
                .map(|i| first_id + start as u64 + i)
                .collect();
            let labels = vec![label; len];
            let start = match anchors {
                Some(anchors) => Some(anchors.starts(key, &ids, self.device)?),
                None => None,
            };
            let (rows, scores) = self.generate(&labels, &ids, start.as_ref(), opts, seed)?;
            out.append(&rows);
            if let Some(c) = scores {
                coherence
                    .get_or_insert_with(Vec::new)
                    .extend(Vec::<f64>::try_from(
                        c.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?,
                    )?);
            }
        }
        Ok((out, coherence))
    }

    /// Latents, normal scores and codes of `rows`, through the encoder chunk by chunk.
    fn encode_table(&self, rows: &Table) -> Result<(Tensor, Tensor, Tensor)> {
        if !self.latent_fitted()? {
            return Err(ModelError::NotFitted);
        }
        let (mut parts, mut nums, mut cats) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..rows.rows().max(1)).step_by(SAMPLE_CHUNK_ROWS) {
            let idx: Vec<usize> = (start..(start + SAMPLE_CHUNK_ROWS).min(rows.rows())).collect();
            let batch = self.pre.encode(&rows.select(&idx), self.device)?;
            parts.push(self.encode_latent(&batch)?);
            nums.push(batch.num);
            cats.push(batch.cat);
        }
        Ok((
            Tensor::f_cat(&parts, 0)?,
            Tensor::f_cat(&nums, 0)?,
            Tensor::f_cat(&cats, 0)?,
        ))
    }

    fn check_labels(&self, labels: &[u32]) -> Result<()> {
        if !self.latent_fitted()? {
            return Err(ModelError::NotFitted);
        }
        let classes = self.classes();
        if let Some(&label) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(ModelError::LabelOutOfRange {
                label: label.into(),
                classes,
            });
        }
        Ok(())
    }

    fn empty_table(&self) -> Table {
        Table {
            numeric: vec![Vec::new(); self.pre.n_num()],
            categorical: vec![Vec::new(); self.pre.n_cat()],
            labels: Vec::new(),
        }
    }

    /// Runs the sampler for one chunk of rows (`ids` key their noise), from pure noise or near
    /// `start`, and decodes the latents. With `opts.residual` a row started near real rows keeps
    /// their preprocessed values and takes only the model's change: the decoded sample minus the
    /// decoded start (for a categorical, the decoded sample's category where it differs from the
    /// decoded start's and the class's real rows use it). The VAE's reconstruction error, which
    /// would otherwise blur every value of a small class, then cancels. Multimodal, each row's
    /// cross-modal coherence comes with it (of the decoded sample, before the residual step).
    fn generate(
        &self,
        labels: &[u32],
        ids: &[u64],
        start: Option<&Start>,
        opts: &SamplerOptions,
        seed: u64,
    ) -> Result<(Table, Option<Tensor>)> {
        let _guard = tch::no_grad_guard();
        let dim = self.latent_dim() as usize;
        let key = derive(seed, &[tag::SAMPLE]);
        let churn_key = derive(seed, &[tag::CHURN]);
        let x0 = matrix(&row_normals(key, ids, dim), ids.len(), dim, self.device)?;
        let codes: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        let y = int_vector(&codes, self.device)?;
        let device = self.device;
        let mut churn = |step: usize| -> Result<Tensor> {
            let k = derive(churn_key, &[step as u64]);
            matrix(&row_normals(k, ids, dim), ids.len(), dim, device)
        };
        let origin = start.map(|s| &s.latent);
        let z = edm::heun_sample(&self.denoiser, &x0, origin, &y, opts, &mut churn)?;
        let raw = |z: &Tensor| z * 2.0 + self.latent_mean.unsqueeze(0);
        let decode = |z: &Tensor| self.decode_raw(&raw(z));
        let (mut num, mut cat) = decode(&z)?;
        let coherence = self.coherence_rows(&raw(&z), &num, &cat)?;
        if let Some(s) = start.filter(|_| opts.residual) {
            let (num0, cat0) = decode(&s.latent)?;
            num = &s.num + (num - num0);
            // A category the model changes to is taken only if the class's real rows use it
            // (SMOTE-NC likewise takes categories from same-class neighbours).
            let flat = (&cat + s.offsets.f_unsqueeze(0)?).f_reshape([-1])?;
            let of_class = s.seen.f_index_select(0, &flat)?.f_reshape(cat.size())?;
            let take = cat.f_ne_tensor(&cat0)?.f_logical_and(&of_class)?;
            cat = cat.f_where_self(&take, &s.cat)?;
        }
        Ok((self.pre.decode(&num, &cat, labels)?, coherence))
    }
}

/// Where neighbourhood sampling starts a chunk of rows: a point between two real rows of the
/// class, in latent space and in preprocessed values.
struct Start {
    /// `[B, latent_dim]` diffusion-space latents.
    latent: Tensor,
    /// `[B, n_num]` the same interpolation of the two rows' normal scores.
    num: Tensor,
    /// `[B, n_cat]` the nearer row's categorical codes.
    cat: Tensor,
    /// The class's categories ([`Anchors`]' `seen` and `offsets`).
    seen: Tensor,
    offsets: Tensor,
}

/// Real rows of one class encoded for [`FlowModel::sample_class`].
#[derive(Debug)]
pub struct Anchors {
    /// `[n, latent_dim]` diffusion-space latents.
    latents: Tensor,
    /// `[n, n_num]` normal scores and `[n, n_cat]` codes of the rows (the preprocessed values).
    num: Tensor,
    cat: Tensor,
    /// `[n, k]` int64: each anchor's nearest other anchors (`None` for a single anchor).
    neighbours: Option<Tensor>,
    /// `[sum of vocabulary sizes]` bool: the categories the rows use, column after column from
    /// `offsets` (`[n_cat]` int64).
    seen: Tensor,
    offsets: Tensor,
}

impl Anchors {
    /// For each id, a start between a random anchor and one of its neighbours, drawn from
    /// `(key, id)`.
    fn starts(&self, key: u64, ids: &[u64], device: Device) -> Result<Start> {
        let n = self.len() as u64;
        let (mut a, mut b, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for &id in ids {
            let mut s = Stream::new(derive(key, &[id]));
            let anchor = s.below(n) as i64;
            a.push(anchor);
            b.push(match &self.neighbours {
                Some(nb) => nb.f_int64_value(&[anchor, s.below(nb.size()[1] as u64) as i64])?,
                None => anchor,
            });
            w.push(s.uniform() as f32);
        }
        let (a, b) = (int_vector(&a, device)?, int_vector(&b, device)?);
        let nearer_is_b = matrix(&w, ids.len(), 1, device)?.f_ge(0.5)?;
        let w = matrix(&w, ids.len(), 1, device)?;
        let mix = |t: &Tensor| -> Result<Tensor> {
            let ta = t.f_index_select(0, &a)?;
            let tb = t.f_index_select(0, &b)?;
            Ok(&ta + (tb - &ta) * &w)
        };
        let cat_b = self.cat.f_index_select(0, &b)?;
        let cat_a = self.cat.f_index_select(0, &a)?;
        Ok(Start {
            latent: mix(&self.latents)?,
            num: mix(&self.num)?,
            cat: cat_b.f_where_self(&nearer_is_b, &cat_a)?,
            seen: self.seen.shallow_clone(),
            offsets: self.offsets.shallow_clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.latents.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The [`IMAGE_PIXELS`] tensor of a loaded set.
fn by_name_pixels(tensors: &[(String, Tensor)]) -> Option<&Tensor> {
    tensors
        .iter()
        .find(|(n, _)| n == IMAGE_PIXELS)
        .map(|(_, t)| t)
}

/// The layout an [`IMAGE_PIXELS`] buffer holds; `None` while it is unfitted (all -1).
fn layout_from_buffer(pixels: &Tensor, side: i64) -> Result<Option<ImageLayout>> {
    let values = Vec::<f32>::try_from(pixels.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?)?;
    if values.iter().all(|&p| p == -1.0) {
        return Ok(None);
    }
    let mut pixel_of = Vec::with_capacity(values.len());
    for (i, &p) in values.iter().enumerate() {
        if !(p >= 0.0 && p.fract() == 0.0) {
            return Err(ModelError::InvalidLayout {
                reason: format!("`{IMAGE_PIXELS}` places feature {i} at pixel {p}"),
            });
        }
        pixel_of.push(p as usize);
    }
    ImageLayout::from_pixels(side as usize, pixel_of).map(Some)
}

fn shallow(v: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    v.iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// Hand-made datasets and tiny models for tests (this crate's and its users', with the
/// `testutil` feature).
#[cfg(any(test, feature = "testutil"))]
#[allow(clippy::unwrap_used)]
pub mod testutil;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
