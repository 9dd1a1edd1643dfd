//! The two-stage training loop: VAE epochs (with TabSyn's beta schedule), then the latent
//! statistics, then denoiser epochs on the frozen VAE's latents.
//!
//! One call to [`Trainer::run_epoch`] runs one epoch of the current stage. Everything that
//! decides the result (data order, noise, label dropout) is keyed by `(seed, stage, epoch, row)`,
//! and [`TrainState`] plus the optimiser state tensors are all a resumed run needs: a run
//! restored from an epoch-boundary checkpoint continues exactly as the uninterrupted one.

use std::time::Instant;

use flowsynth_common::config::{ModelConfig, TrainConfig};
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::table::Table;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::FlowModel;
use super::edm::EdmNoise;
use super::error::{ModelError, Result};
use super::layers::scalar;
use super::optim::{Adam, AdamConfig};
use super::preprocess::Batch;
use super::rng::{derive, permutation, tag};

/// Rows per forward pass when evaluating (validation loss, latent statistics).
const EVAL_CHUNK_ROWS: usize = 4096;

/// Training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Stage 1: the VAE (reconstruction + beta * KL).
    Vae,
    /// Stage 2: the denoiser on the VAE's normalised latents.
    Diffusion,
    /// Both stages finished.
    Done,
}

impl Stage {
    fn key(self) -> u64 {
        match self {
            Stage::Vae => 1,
            Stage::Diffusion => 2,
            Stage::Done => 3,
        }
    }
}

/// Where training stands; serialised into a checkpoint's `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub stage: Stage,
    /// Epochs completed in the current stage.
    pub epoch_in_stage: usize,
    /// Optimiser steps taken over both stages.
    pub global_step: u64,
    /// Current KL weight of the VAE loss.
    pub beta: f64,
    /// Best VAE validation reconstruction loss so far (`None` before the first epoch).
    pub best_val_loss: Option<f64>,
    /// VAE epochs since `best_val_loss` last improved (or since beta last decayed).
    pub epochs_without_improvement: usize,
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// The stage the epoch belonged to.
    pub stage: Stage,
    /// 1-based epoch number within `stage`.
    pub epoch: usize,
    pub steps: usize,
    pub rows: usize,
    /// Mean training loss over the epoch's rows (VAE: mse + ce + beta * kl; diffusion: EDM).
    pub loss: f64,
    /// VAE stage: mean reconstruction terms and KL (0 in the diffusion stage).
    pub mse: f64,
    pub ce: f64,
    pub kl: f64,
    /// VAE stage: the reconstruction loss (mse + ce) that drives the beta schedule, on the
    /// validation rows, or on the training epoch when there are none.
    pub val_loss: Option<f64>,
    /// Beta after this epoch's schedule update.
    pub beta: f64,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Whether this epoch finished its stage (the trainer has moved on).
    pub stage_finished: bool,
}

/// The model, its two optimisers and the schedule.
#[derive(Debug)]
pub struct Trainer {
    model: FlowModel,
    vae_opt: Adam,
    diffusion_opt: Adam,
    state: TrainState,
    train: TrainConfig,
    shuffle: bool,
    /// Global id of each training-table row (noise keys); `None`: the row's index.
    row_ids: Option<Vec<u64>>,
}

impl Trainer {
    /// A fresh trainer at the start of the VAE stage, weights from `train.seed`.
    pub fn new(
        manifest: &DatasetManifest,
        train: &TrainConfig,
        model_cfg: &ModelConfig,
        device: Device,
    ) -> Result<Self> {
        if train.batch_size == 0 {
            return Err(ModelError::InvalidConfig {
                key: "train.batch_size",
                reason: "must be at least 1".into(),
            });
        }
        let model = FlowModel::new(manifest, model_cfg, device, train.seed)?;
        let vae_opt = Adam::new(
            model.vae_params(),
            AdamConfig::new(model_cfg.vae_lr, model_cfg.vae_weight_decay),
        )?;
        let diffusion_opt = Adam::new(
            model.denoiser_params(),
            AdamConfig::new(model_cfg.diffusion_lr, 0.0),
        )?;
        Ok(Self {
            model,
            vae_opt,
            diffusion_opt,
            state: TrainState {
                stage: Stage::Vae,
                epoch_in_stage: 0,
                global_step: 0,
                beta: model_cfg.beta_max,
                best_val_loss: None,
                epochs_without_improvement: 0,
            },
            train: train.clone(),
            shuffle: true,
            row_ids: None,
        })
    }

    pub fn model(&self) -> &FlowModel {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut FlowModel {
        &mut self.model
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Restores the schedule position (from a checkpoint's `state.json`); load the weights and
    /// [`Trainer::load_state_tensors`] too.
    pub fn set_state(&mut self, state: TrainState) {
        self.state = state;
    }

    /// Whether each epoch visits the rows in a seeded random order (default) or in table order.
    /// Table order lets a test lay out batches explicitly, e.g. to compare N workers with one.
    pub fn set_shuffle(&mut self, shuffle: bool) {
        self.shuffle = shuffle;
    }

    /// The dataset-wide id of each row of the training table that `run_epoch` will get (by
    /// default a row's id is its index in that table). Reparameterisation and diffusion noise are
    /// keyed by these ids, so a row gets the same noise on whichever worker holds it: with
    /// gradients averaged across workers, N workers with batch B then reproduce one worker with
    /// batch N*B.
    pub fn set_row_ids(&mut self, ids: Option<Vec<u64>>) {
        self.row_ids = ids;
    }

    pub fn vae_optimizer(&self) -> &Adam {
        &self.vae_opt
    }

    pub fn diffusion_optimizer(&self) -> &Adam {
        &self.diffusion_opt
    }

    /// Both optimisers' state (`vae_opt.*`, `diffusion_opt.*`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .vae_opt
            .state()
            .into_iter()
            .map(|(n, t)| (format!("vae_opt.{n}"), t))
            .collect();
        out.extend(
            self.diffusion_opt
                .state()
                .into_iter()
                .map(|(n, t)| (format!("diffusion_opt.{n}"), t)),
        );
        out
    }

    /// Restores [`Trainer::state_tensors`] output.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let part = |prefix: &str| -> Vec<(String, Tensor)> {
            tensors
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix(prefix)
                        .map(|rest| (rest.to_string(), t.shallow_clone()))
                })
                .collect()
        };
        let vae = part("vae_opt.");
        let diffusion = part("diffusion_opt.");
        self.vae_opt
            .load_state(&vae)
            .map_err(|e| prefix_error(e, "vae_opt."))?;
        self.diffusion_opt
            .load_state(&diffusion)
            .map_err(|e| prefix_error(e, "diffusion_opt."))
    }

    /// Runs one epoch of the current stage over `train` (and measures the VAE's validation loss
    /// on `val`). For every batch: zero gradients, loss, backward, `grad_hook` with the stage's
    /// gradients (in [`Adam::params`] order; it may modify them in place, e.g. all-reduce), then
    /// the optimiser step. An error from the hook stops the epoch and is returned as is.
    pub fn run_epoch(
        &mut self,
        train: &Table,
        val: &Table,
        grad_hook: &mut dyn FnMut(&[Tensor]) -> Result<()>,
    ) -> Result<EpochReport> {
        if train.rows() == 0 {
            return Err(ModelError::EmptyData { what: "training" });
        }
        if let Some(ids) = &self.row_ids
            && ids.len() != train.rows()
        {
            return Err(ModelError::TableLayout {
                reason: format!(
                    "{} row ids were set for {} training rows",
                    ids.len(),
                    train.rows()
                ),
            });
        }
        // A stage configured with zero epochs is skipped.
        if self.state.stage == Stage::Vae && self.state.epoch_in_stage >= self.train.epochs {
            self.finish_vae(train)?;
        }
        if self.state.stage == Stage::Diffusion
            && self.state.epoch_in_stage >= self.train.diffusion_epochs()
        {
            self.state.stage = Stage::Done;
        }
        match self.state.stage {
            Stage::Vae => self.vae_epoch(train, val, grad_hook),
            Stage::Diffusion => self.diffusion_epoch(train, grad_hook),
            Stage::Done => Err(ModelError::TrainingFinished),
        }
    }

    /// The epoch's row order (indices into the training table).
    fn order(&self, rows: usize) -> Vec<usize> {
        if self.shuffle {
            let key = derive(
                self.train.seed,
                &[
                    tag::PERMUTATION,
                    self.state.stage.key(),
                    self.state.epoch_in_stage as u64,
                ],
            );
            permutation(key, rows)
        } else {
            (0..rows).collect()
        }
    }

    fn row_ids(&self, idx: &[usize]) -> Vec<u64> {
        match &self.row_ids {
            Some(ids) => idx.iter().map(|&i| ids[i]).collect(),
            None => idx.iter().map(|&i| i as u64).collect(),
        }
    }

    /// The rows `idx` of `table`, preprocessed onto the model's device.
    fn encode_rows(&self, table: &Table, idx: &[usize]) -> Result<Batch> {
        self.model
            .preprocessor()
            .encode(&table.select(idx), self.model.device())
    }

    fn vae_epoch(
        &mut self,
        train: &Table,
        val: &Table,
        grad_hook: &mut dyn FnMut(&[Tensor]) -> Result<()>,
    ) -> Result<EpochReport> {
        let started = Instant::now();
        let beta = self.state.beta;
        let noise_key = derive(
            self.train.seed,
            &[tag::VAE_NOISE, self.state.epoch_in_stage as u64],
        );
        let order = self.order(train.rows());
        let (mut mse, mut ce, mut kl) = (0.0, 0.0, 0.0);
        let mut steps = 0;
        for idx in order.chunks(self.train.batch_size) {
            let batch = self.encode_rows(train, idx)?;
            let eps = self.model.vae_noise(noise_key, &self.row_ids(idx))?;
            self.vae_opt.zero_grad();
            let loss = self.model.vae_loss(&batch, beta, Some(&eps))?;
            loss.total.f_backward()?;
            let grads = self.vae_opt.gradients()?;
            grad_hook(&grads)?;
            self.vae_opt.step()?;
            self.state.global_step += 1;
            steps += 1;
            let w = idx.len() as f64;
            mse += loss.mse * w;
            ce += loss.ce * w;
            kl += loss.kl * w;
        }
        let rows = train.rows();
        let n = rows as f64;
        let (mse, ce, kl) = (mse / n, ce / n, kl / n);
        let val_loss = match self.validation_loss(val)? {
            Some(v) => v,
            None => mse + ce,
        };
        self.update_beta(val_loss);
        self.state.epoch_in_stage += 1;
        let epoch = self.state.epoch_in_stage;
        let finished = epoch >= self.train.epochs;
        if finished {
            self.finish_vae(train)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(EpochReport {
            stage: Stage::Vae,
            epoch,
            steps,
            rows,
            loss: mse + ce + beta * kl,
            mse,
            ce,
            kl,
            val_loss: Some(val_loss),
            beta: self.state.beta,
            seconds,
            rows_per_second: n / seconds.max(1e-9),
            stage_finished: finished,
        })
    }

    /// The VAE's reconstruction loss (mse + ce, with z = mu) over `val`, `None` when it is empty.
    pub fn validation_loss(&self, val: &Table) -> Result<Option<f64>> {
        if val.rows() == 0 {
            return Ok(None);
        }
        let _guard = tch::no_grad_guard();
        let mut sum = 0.0;
        let n = val.rows();
        for start in (0..n).step_by(EVAL_CHUNK_ROWS) {
            let idx: Vec<usize> = (start..(start + EVAL_CHUNK_ROWS).min(n)).collect();
            let batch = self.encode_rows(val, &idx)?;
            let loss = self.model.vae_loss(&batch, self.state.beta, None)?;
            sum += (loss.mse + loss.ce) * idx.len() as f64;
        }
        Ok(Some(sum / n as f64))
    }

    /// TabSyn's schedule: when the validation loss has not improved for `beta_patience` epochs,
    /// beta is multiplied by `beta_decay` (not below `beta_min`) and the count starts again.
    fn update_beta(&mut self, val_loss: f64) {
        let cfg = self.model.config();
        let (patience, decay, floor) = (cfg.beta_patience, cfg.beta_decay, cfg.beta_min);
        let s = &mut self.state;
        if s.best_val_loss.is_none_or(|best| val_loss < best) {
            s.best_val_loss = Some(val_loss);
            s.epochs_without_improvement = 0;
        } else {
            s.epochs_without_improvement += 1;
            if s.epochs_without_improvement >= patience {
                s.beta = (s.beta * decay).max(floor);
                s.epochs_without_improvement = 0;
            }
        }
    }

    /// Ends the VAE stage: fits the latent mean over all training rows, enters the diffusion
    /// stage.
    fn finish_vae(&mut self, train: &Table) -> Result<()> {
        self.model.fit_latent_stats_table(train, EVAL_CHUNK_ROWS)?;
        self.state.stage = Stage::Diffusion;
        self.state.epoch_in_stage = 0;
        self.state.best_val_loss = None;
        self.state.epochs_without_improvement = 0;
        Ok(())
    }

    fn diffusion_epoch(
        &mut self,
        train: &Table,
        grad_hook: &mut dyn FnMut(&[Tensor]) -> Result<()>,
    ) -> Result<EpochReport> {
        let started = Instant::now();
        let device = self.model.device();
        let dim = self.model.latent_dim() as usize;
        let dropout = self.model.config().label_dropout;
        let noise_key = derive(
            self.train.seed,
            &[tag::EDM_NOISE, self.state.epoch_in_stage as u64],
        );
        let order = self.order(train.rows());
        let mut loss_sum = 0.0;
        let mut steps = 0;
        for idx in order.chunks(self.train.batch_size) {
            let batch = self.encode_rows(train, idx)?;
            let z = self.model.encode_latent(&batch)?;
            let noise = EdmNoise::draw(noise_key, &self.row_ids(idx), dim, dropout, device)?;
            self.diffusion_opt.zero_grad();
            let loss = self.model.denoiser_loss(&z, &batch.label, &noise)?;
            loss.f_backward()?;
            let grads = self.diffusion_opt.gradients()?;
            grad_hook(&grads)?;
            self.diffusion_opt.step()?;
            self.state.global_step += 1;
            steps += 1;
            loss_sum += scalar(&loss.f_detach()?)? * idx.len() as f64;
        }
        let rows = train.rows();
        self.state.epoch_in_stage += 1;
        let epoch = self.state.epoch_in_stage;
        let finished = epoch >= self.train.diffusion_epochs();
        if finished {
            self.state.stage = Stage::Done;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(EpochReport {
            stage: Stage::Diffusion,
            epoch,
            steps,
            rows,
            loss: loss_sum / rows as f64,
            mse: 0.0,
            ce: 0.0,
            kl: 0.0,
            val_loss: None,
            beta: self.state.beta,
            seconds,
            rows_per_second: rows as f64 / seconds.max(1e-9),
            stage_finished: finished,
        })
    }
}

/// Puts the optimiser's prefix back on the tensor name of a load error.
fn prefix_error(e: ModelError, prefix: &str) -> ModelError {
    match e {
        ModelError::MissingTensor { name } => ModelError::MissingTensor {
            name: format!("{prefix}{name}"),
        },
        ModelError::ShapeMismatch {
            tensor,
            expected,
            found,
        } => ModelError::ShapeMismatch {
            tensor: format!("{prefix}{tensor}"),
            expected,
            found,
        },
        other => other,
    }
}
