//! The two-stage training loop: VAE epochs (with TabSyn's beta schedule; the tabular and the CNN
//! VAE together in multimodal mode, after the image layout is fitted), then the latent
//! statistics, then denoiser epochs on the frozen VAEs' latents. The data-space model has no
//! VAE stage.
//!
//! One call to [`Trainer::run_epoch`] runs one epoch of the current stage. Everything that
//! decides the result (data order, noise, label dropout) is keyed by `(seed, stage, epoch, row)`,
//! and [`TrainState`] plus the optimiser state tensors are all a resumed run needs: a run
//! restored from an epoch-boundary checkpoint continues exactly as the uninterrupted one.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use flowsynth_common::config::{ModelConfig, ModelMode, TrainConfig};
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::table::Table;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::FlowModel;
use super::edm::EdmNoise;
use super::epoch::{
    cut_windows, epoch_order, everywhere_classes, pass_windows, window_order, window_quotas,
};
use super::error::{ModelError, Result};
use super::layers::scalar;
use super::optim::{Adam, AdamConfig};
use super::preprocess::Batch;
use super::rng::{derive, permutation, tag};
use super::rows::{RowSource, TableSource};

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
    /// VAE stage, multimodal: the CNN VAE's pixel MSE and KL.
    pub image_mse: f64,
    pub image_kl: f64,
    /// VAE stage, multimodal: cross-modal coherence on the validation rows (or the training
    /// epoch's first rows when there are none): mean squared difference between the image the
    /// CNN decoder draws and the image of the row the tabular decoder reads, 0 = agreement.
    pub coherence: Option<f64>,
    /// VAE stage: the reconstruction loss (mse + ce, + image_mse) that drives the beta schedule,
    /// on the validation rows, or on the training epoch when there are none.
    pub val_loss: Option<f64>,
    /// Beta after this epoch's schedule update.
    pub beta: f64,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Whether this epoch finished its stage (the trainer has moved on).
    pub stage_finished: bool,
}

/// What a trainer needs from the other ranks of a data-parallel job. A process training alone
/// uses [`Alone`]; a closure over the gradients is also accepted (it sees the gradients only, for
/// tests and progress hooks).
pub trait Replicas {
    /// Sums the step's gradients over all ranks, in place (in [`Adam::params`] order). Each rank's
    /// loss is already weighted by its share of the global batch, so the sum is the gradient of the
    /// global batch's mean loss. An error stops the epoch and is returned as is.
    fn reduce_gradients(&mut self, grads: &[Tensor]) -> Result<()>;
    /// Sums statistics (float64 or float32 tensors: validation loss sums, latent sums, epoch
    /// metrics) over all ranks, in place.
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()>;
    /// Called after every optimiser step with the stage's variables (progress, stop requests,
    /// replica consistency checks); an error stops the epoch.
    fn after_step(&mut self, _params: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }
}

/// The single-process [`Replicas`]: nothing to combine.
#[derive(Debug, Default, Clone, Copy)]
pub struct Alone;

impl Replicas for Alone {
    fn reduce_gradients(&mut self, _grads: &[Tensor]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum(&mut self, _tensors: &[Tensor]) -> Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&[Tensor]) -> Result<()>> Replicas for F {
    fn reduce_gradients(&mut self, grads: &[Tensor]) -> Result<()> {
        self(grads)
    }
    fn all_reduce_sum(&mut self, _tensors: &[Tensor]) -> Result<()> {
        Ok(())
    }
}

/// Which rows of the dataset-wide training set this rank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Ranks in the job; the global batch is `world * batch_size` rows.
    pub world: usize,
    /// Rows in the dataset-wide training set (over all ranks).
    pub global_rows: usize,
    /// For each row of this rank's training table, its position `0..global_rows` in the
    /// dataset-wide training set (the same numbering on every rank).
    pub positions: Vec<usize>,
}

/// The model, its two optimisers and the schedule.
#[derive(Debug)]
pub struct Trainer {
    model: FlowModel,
    vae_opt: Adam,
    diffusion_opt: Adam,
    state: TrainState,
    train: TrainConfig,
    /// Data-parallel layout of the tables handed to [`Trainer::run_epoch`]; `None`: the table
    /// is the whole training set. (A [`RowSource`] carries its own.)
    partition: Option<Partition>,
    /// Class of every dataset-wide training position (gathered from all ranks once), for
    /// class-tempered epochs over a training set in memory; `None` until first needed.
    position_labels: Option<Vec<u32>>,
    /// Streaming: every group's training rows per class over all ranks (`[group][class]`,
    /// gathered once); `None` until first needed.
    group_counts: Option<Vec<Vec<usize>>>,
    /// Streaming: the rarest classes, held in memory through every window (see
    /// `everywhere_classes`), and the positions of their rows by class (gathered once).
    held: Option<Held>,
    /// Streaming: the plan of the pass the trainer is in, with its stage and number.
    plan: Option<(Stage, u64, PassPlan)>,
    /// The groups the row source has loaded for this trainer and where their rows sit.
    resident: Option<Resident>,
    /// Denoiser stage: the diffusion-space latents and class codes of the local training rows,
    /// each encoded the first time a batch draws it (the VAEs are frozen then, so every later
    /// epoch would encode the same numbers; rows never drawn are never encoded). `None` until
    /// the first denoiser epoch, dropped when an epoch trains the VAEs (joint epochs encode each
    /// batch themselves) or the model or partition changes.
    latents: Option<LatentCache>,
}

/// The rows a trainer works on: the groups its source has loaded, each global position's row
/// among them, and (streaming) the slot order of the window they make.
#[derive(Debug)]
struct Resident {
    groups: Vec<usize>,
    everywhere: Vec<u32>,
    local_of: HashMap<usize, u32>,
    order: Option<(WindowKey, Vec<usize>)>,
}

/// Streaming: the classes held in memory and their rows' positions (`members[c]`, empty for a
/// streamed class; `None` until gathered).
#[derive(Debug)]
struct Held {
    classes: Vec<u32>,
    members: Option<Vec<Vec<usize>>>,
}

/// Rows of the training set held in memory through every streaming window, at most (rarest
/// classes first): an eighth of the window.
const HELD_SHARE: usize = 8;

/// A streaming window: the `index`-th window of pass `pass` over the training set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WindowKey {
    pass: u64,
    index: usize,
}

/// Streaming: one pass over the training set.
#[derive(Debug)]
struct PassPlan {
    /// The windows in order, each its groups.
    windows: Vec<Vec<usize>>,
    /// `[window][class]`: slots of each class in each window.
    quotas: Vec<Vec<usize>>,
    /// Slots of each window (they sum to the training rows).
    lengths: Vec<usize>,
}

/// A stretch of an epoch drawn from one set of loaded groups.
#[derive(Debug)]
struct Segment {
    groups: Vec<usize>,
    /// Classes whose rows are loaded from every group (streaming; see [`Held`]).
    everywhere: Vec<u32>,
    slots: SegmentSlots,
    /// The epoch slot of this stretch's first row.
    first_slot: u64,
}

#[derive(Debug)]
enum SegmentSlots {
    /// The whole training set is loaded: the epoch's positions.
    Positions(Vec<usize>),
    /// Streaming: a range of a window's slot order (computed when the window is loaded).
    Window { key: WindowKey, range: Range<usize> },
}

/// [`Trainer::latents`] of a table of `N` rows.
#[derive(Debug)]
struct LatentCache {
    /// `[N, latent_dim]`; rows not yet encoded are zero.
    z: Tensor,
    /// `[N]` class codes (valid where `encoded`).
    label: Tensor,
    encoded: Vec<bool>,
}

/// One optimiser step's rows on this rank.
struct StepRows {
    /// Rows of this rank's training table.
    local: Vec<usize>,
    /// Each row's slot in the epoch order: keys its noise, so a row gets the same noise on
    /// whichever rank holds it, and a row drawn twice in an epoch gets two draws.
    slots: Vec<u64>,
    /// Rows in the whole global batch (all ranks).
    global: usize,
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
            partition: None,
            position_labels: None,
            group_counts: None,
            held: None,
            plan: None,
            resident: None,
            latents: None,
        })
    }

    pub fn model(&self) -> &FlowModel {
        &self.model
    }

    /// The model, to change (e.g. load weights into): drops the denoiser stage's encoded
    /// latents, which the change may make stale.
    pub fn model_mut(&mut self) -> &mut FlowModel {
        self.latents = None;
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

    /// Reopens the denoiser stage of a finished run (restored from its final checkpoint) so that
    /// a larger `diffusion_epochs` trains it further; a run that is not finished is unchanged.
    pub fn continue_diffusion(&mut self) {
        if self.state.stage == Stage::Done {
            self.state.stage = Stage::Diffusion;
        }
    }

    /// Makes this trainer one rank of a data-parallel job (see the module docs); `None` (the
    /// default) trains on the whole table alone. Positions out of range or repeated are refused.
    pub fn set_partition(&mut self, partition: Option<Partition>) -> Result<()> {
        if let Some(p) = &partition
            && (p.world == 0 || p.global_rows > u32::MAX as usize)
        {
            return Err(ModelError::TableLayout {
                reason: format!(
                    "partition of {} global rows over {} ranks is not supported",
                    p.global_rows, p.world
                ),
            });
        }
        self.partition = partition;
        self.forget_rows();
        Ok(())
    }

    /// Drops everything derived from the rows trained on (a new partition or source).
    fn forget_rows(&mut self) {
        self.position_labels = None;
        self.group_counts = None;
        self.held = None;
        self.plan = None;
        self.resident = None;
        self.latents = None;
    }

    /// `train` as a [`RowSource`] under this trainer's partition.
    fn table_source<'t>(&self, train: &'t Table) -> Result<TableSource<'t>> {
        match &self.partition {
            None => Ok(TableSource::alone(train)),
            Some(p) => TableSource::rank(train, p.positions.clone(), p.world, p.global_rows),
        }
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
    /// on `val`). For every global batch: zero gradients, this rank's weighted loss, backward,
    /// [`Replicas::reduce_gradients`] (it may modify them in place), then the optimiser step.
    /// Epoch metrics, the validation loss and the latent mean are summed over the replicas, so
    /// every rank reports and decides (beta) alike.
    pub fn run_epoch(
        &mut self,
        train: &Table,
        val: &Table,
        replicas: &mut dyn Replicas,
    ) -> Result<EpochReport> {
        let mut source = self.table_source(train)?;
        self.run_epoch_from(&mut source, val, replicas)
    }

    /// [`Trainer::run_epoch`] over the training rows of `train`, loaded through it as the epoch
    /// goes (see [`RowSource`] and `train.shuffle_window_rows`). Every rank of a data-parallel
    /// job must pass a source of the same groups.
    pub fn run_epoch_from(
        &mut self,
        train: &mut dyn RowSource,
        val: &Table,
        replicas: &mut dyn Replicas,
    ) -> Result<EpochReport> {
        if global_rows(train) == 0 {
            return Err(ModelError::EmptyData { what: "training" });
        }
        if self.settle_from(train, replicas)? == Stage::Done {
            return Err(ModelError::TrainingFinished);
        }
        let segments = self.epoch_segments(train, replicas)?;
        match self.state.stage {
            Stage::Vae => self.vae_epoch(train, val, segments, replicas),
            _ => self.diffusion_epoch(train, segments, replicas),
        }
    }

    /// Whether the next denoiser epoch trains the VAEs too (one of the last `joint_epochs`).
    fn joint_epoch(&self) -> bool {
        let total = self.stage_epochs(Stage::Diffusion);
        self.model.mode().has_vae()
            && self.state.stage == Stage::Diffusion
            && self.state.epoch_in_stage + self.train.joint_epochs.min(total) >= total
    }

    /// Epochs configured for `stage` (the data-space model has no VAE stage).
    pub fn stage_epochs(&self, stage: Stage) -> usize {
        match stage {
            Stage::Vae if self.model.mode().has_vae() => self.train.epochs,
            Stage::Vae | Stage::Done => 0,
            Stage::Diffusion => self.train.diffusion_epochs(),
        }
    }

    /// Does what must happen before the next epoch and returns the stage that epoch belongs to:
    /// fits the image layout before the first VAE epoch (multimodal) and skips a stage that has
    /// no epochs left (a stage of zero epochs, the data-space model's VAE stage). Called by
    /// [`Trainer::run_epoch`]; call it first to know which stage the next epoch trains. Every
    /// rank of a data-parallel job must call it alike (it may combine values with the others).
    pub fn settle(&mut self, train: &Table, replicas: &mut dyn Replicas) -> Result<Stage> {
        let mut source = self.table_source(train)?;
        self.settle_from(&mut source, replicas)
    }

    /// [`Trainer::settle`] for [`Trainer::run_epoch_from`].
    pub fn settle_from(
        &mut self,
        train: &mut dyn RowSource,
        replicas: &mut dyn Replicas,
    ) -> Result<Stage> {
        if self.state.stage == Stage::Vae && self.model.needs_image_layout() {
            let sums = self.scan(train, |model, batches| model.image_moments(batches))?;
            replicas.all_reduce_sum(&sums.tensors())?;
            self.model.fit_image_layout(&sums)?;
        }
        if self.state.stage == Stage::Vae
            && self.state.epoch_in_stage >= self.stage_epochs(Stage::Vae)
        {
            self.finish_vae(train, replicas)?;
        }
        if self.state.stage == Stage::Diffusion
            && self.state.epoch_in_stage >= self.stage_epochs(Stage::Diffusion)
        {
            self.state.stage = Stage::Done;
        }
        Ok(self.state.stage)
    }

    /// Whether `train` is streamed window by window rather than loaded whole.
    fn streaming(&self, train: &dyn RowSource) -> bool {
        self.train
            .streams(global_rows(train) as u64, train.group_rows().len())
    }

    /// The epoch's stretches of rows. A training set in memory: one, the epoch's positions.
    /// Streaming: the epoch is the next `rows_per_epoch` slots of an endless sequence of passes,
    /// each pass a seeded order of windows (see `epoch`), so consecutive epochs walk on through
    /// the windows and every row is drawn about equally often over the passes.
    fn epoch_segments(
        &mut self,
        train: &mut dyn RowSource,
        replicas: &mut dyn Replicas,
    ) -> Result<Vec<Segment>> {
        let all_rows = global_rows(train);
        let rows = self.train.rows_per_epoch(all_rows as u64) as usize;
        if !self.streaming(train) {
            let groups: Vec<usize> = (0..train.group_rows().len()).collect();
            self.enter(train, &groups, &[])?;
            let order = self.order(train, all_rows, replicas)?;
            return Ok(vec![Segment {
                groups,
                everywhere: Vec::new(),
                slots: SegmentSlots::Positions(order),
                first_slot: 0,
            }]);
        }
        let everywhere = self.held_classes(train, replicas)?;
        let epoch = self.state.epoch_in_stage as u64;
        let (start, end) = (epoch * rows as u64, (epoch + 1) * rows as u64);
        let mut segments = Vec::new();
        let mut s = start;
        while s < end {
            let (pass, offset) = (s / all_rows as u64, (s % all_rows as u64) as usize);
            let PassPlan {
                windows, lengths, ..
            } = self.pass_plan(train, pass, replicas)?;
            // The window holding slot `offset` of the pass (its lengths sum to `all_rows`).
            let mut window_start = 0usize;
            let found = lengths.iter().enumerate().find(|&(_, &len)| {
                window_start += len;
                offset < window_start
            });
            let Some((index, &len)) = found else {
                return Err(ModelError::TableLayout {
                    reason: format!("pass {pass} has fewer than {all_rows} slots"),
                });
            };
            let from = offset - (window_start - len);
            let take = ((end - s) as usize).min(len - from);
            segments.push(Segment {
                groups: windows[index].clone(),
                everywhere: everywhere.clone(),
                slots: SegmentSlots::Window {
                    key: WindowKey { pass, index },
                    range: from..from + take,
                },
                first_slot: s - start,
            });
            s += take as u64;
        }
        Ok(segments)
    }

    /// Streaming: the plan of pass `pass` of the current stage (kept until another is asked).
    fn pass_plan(
        &mut self,
        train: &mut dyn RowSource,
        pass: u64,
        replicas: &mut dyn Replicas,
    ) -> Result<&PassPlan> {
        let stage = self.state.stage;
        if self
            .plan
            .as_ref()
            .is_none_or(|(st, p, _)| *st != stage || *p != pass)
        {
            let key = self.pass_key(pass);
            let window = self.train.shuffle_window_rows as usize;
            let windows = pass_windows(derive(key, &[0]), train.group_rows(), window);
            let rows = global_rows(train);
            let balance = self.train.class_balance;
            let mut held = vec![false; self.model.classes()];
            for c in self.held_classes(train, replicas)? {
                held[c as usize] = true;
            }
            let counts = self.group_counts(train, replicas)?;
            let quotas = window_quotas(&windows, counts, &held, balance, rows);
            let lengths = quotas.iter().map(|q| q.iter().sum()).collect();
            let plan = PassPlan {
                windows,
                quotas,
                lengths,
            };
            self.plan = Some((stage, pass, plan));
        }
        match &self.plan {
            Some((_, _, plan)) => Ok(plan),
            None => Err(ModelError::TableLayout {
                reason: format!("no plan for pass {pass}"),
            }),
        }
    }

    /// Streaming: the classes held in memory (chosen once from the dataset-wide counts).
    fn held_classes(
        &mut self,
        train: &mut dyn RowSource,
        replicas: &mut dyn Replicas,
    ) -> Result<Vec<u32>> {
        if self.held.is_none() {
            let classes = self.model.classes();
            let counts = self.group_counts(train, replicas)?;
            let totals: Vec<usize> = (0..classes)
                .map(|c| counts.iter().map(|g| g[c]).sum())
                .collect();
            let budget = self.train.shuffle_window_rows as usize / HELD_SHARE;
            self.held = Some(Held {
                classes: everywhere_classes(&totals, budget),
                members: None,
            });
        }
        Ok(self
            .held
            .as_ref()
            .map(|h| h.classes.clone())
            .unwrap_or_default())
    }

    /// Streaming: gathers the positions of the held classes' rows, by class, from all ranks
    /// once (the loaded rows must include this rank's rows of those classes). Each rank writes
    /// its rows into a vector laid out by class, group and position, which the dataset-wide
    /// counts let every rank compute alike; a sum completes it.
    fn gather_held_members(
        &mut self,
        train: &dyn RowSource,
        replicas: &mut dyn Replicas,
    ) -> Result<()> {
        let Some(held) = &self.held else {
            return Ok(());
        };
        if held.members.is_some() {
            return Ok(());
        }
        let classes = self.model.classes();
        let counts = self.group_counts.as_deref().unwrap_or_default();
        let first = group_starts(train.group_rows());
        // slot_base[c][g]: where class c's rows of group g start in the gathered vector.
        let mut slot_base = vec![Vec::new(); classes];
        let mut sizes = vec![0usize; classes];
        let mut next = 0usize;
        for &c in &held.classes {
            let c = c as usize;
            slot_base[c] = counts
                .iter()
                .map(|g| {
                    let at = next;
                    next += g[c];
                    at
                })
                .collect();
            sizes[c] = next - slot_base[c].first().copied().unwrap_or(next);
        }
        let (table, positions) = train.loaded();
        let mut mine: Vec<(usize, usize)> = positions
            .iter()
            .zip(&table.labels)
            .filter(|(_, l)| held.classes.contains(l))
            .map(|(&p, &l)| (p, l as usize))
            .collect();
        mine.sort_unstable();
        let mut filled = vec![0f64; next];
        let mut taken: HashMap<(usize, usize), usize> = HashMap::new();
        for (p, c) in mine {
            let g = first.partition_point(|&f| f <= p) - 1;
            let j = taken.entry((g, c)).or_insert(0);
            let slot = slot_base[c].get(g).map(|b| b + *j);
            *j += 1;
            match slot.and_then(|s| filled.get_mut(s)) {
                Some(v) if *j <= counts[g][c] => *v = (p + 1) as f64,
                _ => {
                    return Err(ModelError::TableLayout {
                        reason: format!(
                            "group {g} holds more loaded rows of class {c} than it counts"
                        ),
                    });
                }
            }
        }
        let mut all = self
            .gather(replicas, filled, |i| format!("held row {i}"))?
            .into_iter();
        let members: Vec<Vec<usize>> = sizes
            .iter()
            .map(|&n| all.by_ref().take(n).collect())
            .collect();
        if let Some(h) = &mut self.held {
            h.members = Some(members);
        }
        Ok(())
    }

    fn pass_key(&self, pass: u64) -> u64 {
        derive(
            self.train.seed,
            &[tag::PERMUTATION, self.state.stage.key(), u64::MAX, pass],
        )
    }

    /// Streaming: [`Trainer::group_counts`], gathered from all ranks once.
    fn group_counts(
        &mut self,
        train: &mut dyn RowSource,
        replicas: &mut dyn Replicas,
    ) -> Result<&[Vec<usize>]> {
        if self.group_counts.is_none() {
            let classes = self.model.classes();
            let groups = train.group_rows().len();
            let local = train.local_class_counts(classes)?;
            if local.len() != groups || local.iter().any(|c| c.len() != classes) {
                return Err(ModelError::TableLayout {
                    reason: format!(
                        "the row source counted classes for {} groups, expected {groups} x {classes}",
                        local.len()
                    ),
                });
            }
            let flat: Vec<f64> = local.iter().flatten().map(|&n| n as f64).collect();
            let total = self.sum_over_replicas(replicas, &flat)?;
            let counts: Vec<Vec<usize>> = total
                .chunks(classes.max(1))
                .map(|c| c.iter().map(|&n| n as usize).collect())
                .collect();
            for (g, c) in counts.iter().enumerate() {
                if c.iter().sum::<usize>() != train.group_rows()[g] {
                    return Err(ModelError::TableLayout {
                        reason: format!(
                            "group {g} has {} training rows but the ranks hold {}",
                            train.group_rows()[g],
                            c.iter().sum::<usize>()
                        ),
                    });
                }
            }
            self.group_counts = Some(counts);
        }
        Ok(self.group_counts.as_deref().unwrap_or_default())
    }

    /// Makes `groups` the loaded rows (loading them unless they already are) and indexes them.
    fn enter(
        &mut self,
        train: &mut dyn RowSource,
        groups: &[usize],
        everywhere: &[u32],
    ) -> Result<()> {
        if self
            .resident
            .as_ref()
            .is_some_and(|r| r.groups == groups && r.everywhere == everywhere)
        {
            return Ok(());
        }
        self.resident = None;
        self.latents = None;
        train.load(groups, everywhere)?;
        let all_rows = global_rows(train);
        let (_, positions) = train.loaded();
        let mut local_of = HashMap::with_capacity(positions.len());
        for (i, &p) in positions.iter().enumerate() {
            if p >= all_rows || local_of.insert(p, i as u32).is_some() {
                return Err(ModelError::TableLayout {
                    reason: format!(
                        "partition position {p} is out of range (0..{all_rows}) or repeated"
                    ),
                });
            }
        }
        self.resident = Some(Resident {
            groups: groups.to_vec(),
            everywhere: everywhere.to_vec(),
            local_of,
            order: None,
        });
        Ok(())
    }

    /// Loads the segment's groups and cuts its slots into global batches: for each step, this
    /// rank's rows (of the loaded table) and their epoch slots.
    fn segment_batches(
        &mut self,
        train: &mut dyn RowSource,
        segment: Segment,
        replicas: &mut dyn Replicas,
    ) -> Result<Vec<StepRows>> {
        self.enter(train, &segment.groups, &segment.everywhere)?;
        let global_batch = self.train.batch_size * train.world();
        if let SegmentSlots::Window { key, .. } = &segment.slots {
            self.window_order(train, *key, replicas)?;
        }
        let Some(resident) = &self.resident else {
            return Ok(Vec::new());
        };
        let order: &[usize] = match &segment.slots {
            SegmentSlots::Positions(order) => order,
            SegmentSlots::Window { key, range } => {
                let window = resident.order.as_ref().map_or(&[][..], |(_, o)| o);
                window
                    .get(range.clone())
                    .ok_or_else(|| ModelError::TableLayout {
                        reason: format!(
                            "window {} of pass {} has {} slots, not {range:?}",
                            key.index,
                            key.pass,
                            window.len()
                        ),
                    })?
            }
        };
        Ok(order
            .chunks(global_batch)
            .enumerate()
            .map(|(k, chunk)| {
                let first = segment.first_slot + (k * global_batch) as u64;
                let mut rows = StepRows {
                    local: Vec::new(),
                    slots: Vec::new(),
                    global: chunk.len(),
                };
                for (j, p) in chunk.iter().enumerate() {
                    if let Some(&local) = resident.local_of.get(p) {
                        rows.local.push(local as usize);
                        rows.slots.push(first + j as u64);
                    }
                }
                rows
            })
            .collect())
    }

    /// Streaming: computes the slot order of the loaded window `key` into [`Resident::order`]
    /// (its rows' classes are gathered from all ranks), once per window.
    fn window_order(
        &mut self,
        train: &mut dyn RowSource,
        key: WindowKey,
        replicas: &mut dyn Replicas,
    ) -> Result<()> {
        let groups = match &self.resident {
            Some(r) if r.order.as_ref().is_some_and(|(k, _)| *k == key) => return Ok(()),
            Some(r) => r.groups.clone(),
            None => return Ok(()),
        };
        self.gather_held_members(train, replicas)?;
        self.pass_plan(train, key.pass, replicas)?;
        let group_rows = train.group_rows();
        let first = group_starts(group_rows);
        // Each group's offset among the window's positions.
        let mut offset_of = HashMap::new();
        let mut width = 0usize;
        for &g in &groups {
            offset_of.insert(g, width);
            width += group_rows.get(g).copied().unwrap_or(0);
        }
        let (table, positions) = train.loaded();
        let mut mine = vec![0f64; width];
        for (i, &p) in positions.iter().enumerate() {
            let g = first.partition_point(|&f| f <= p) - 1;
            // A held class's row from a group outside the window.
            let Some(o) = offset_of.get(&g) else {
                continue;
            };
            if let Some(slot) = mine.get_mut(o + p - first[g]) {
                *slot = f64::from(table.labels[i]) + 1.0;
            }
        }
        let window_positions: Vec<usize> = groups
            .iter()
            .flat_map(|&g| first[g]..first[g + 1])
            .collect();
        let labels = self.gather(replicas, mine, |k| {
            format!("training position {}", window_positions[k])
        })?;
        let (
            Some((_, _, plan)),
            Some(Held {
                members: Some(held_members),
                ..
            }),
        ) = (&self.plan, &self.held)
        else {
            return Err(ModelError::TableLayout {
                reason: "streaming state missing (pass plan or held rows)".into(),
            });
        };
        let classes = self.model.classes();
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
        for (&p, &c) in window_positions.iter().zip(&labels) {
            // Held classes are dealt from all their rows instead.
            match by_class.get_mut(c) {
                Some(_) if !held_members[c].is_empty() => {}
                Some(members) => members.push(p),
                None => {
                    return Err(ModelError::LabelOutOfRange {
                        label: c as u64,
                        classes,
                    });
                }
            }
        }
        let quotas = &plan.quotas;
        let quota = quotas.get(key.index).cloned().unwrap_or_default();
        // Where each held class's stretch of its pass-long sequence starts in this window.
        let starts: Vec<usize> = (0..classes)
            .map(|c| {
                quotas[..key.index.min(quotas.len())]
                    .iter()
                    .map(|q| q[c])
                    .sum()
            })
            .collect();
        let pass_key = self.pass_key(key.pass);
        let order = window_order(
            derive(pass_key, &[1, key.index as u64]),
            &by_class,
            &quota,
            derive(pass_key, &[2]),
            held_members,
            &starts,
        );
        if let Some(r) = &mut self.resident {
            r.order = Some((key, order));
        }
        Ok(())
    }

    /// Gives every variable of `opt` a zero gradient: a rank with no rows in a global batch
    /// still contributes (zeros) to the gradient sum.
    fn zero_gradients(opt: &Adam) -> Result<()> {
        let mut total: Option<Tensor> = None;
        for (_, p) in opt.params() {
            let z = p.f_sum(tch::Kind::Float)?.f_mul_scalar(0.0)?;
            total = Some(match total {
                None => z,
                Some(t) => t.f_add(&z)?,
            });
        }
        if let Some(t) = total {
            t.f_backward()?;
        }
        Ok(())
    }

    /// Completes a vector every rank fills in part: each rank writes `value + 1` into the slots
    /// it knows and leaves the others 0; the sum over replicas then holds every value, and a slot
    /// left 0 or filled twice (no whole number) is an error naming `what(slot)`. Values must be
    /// below 2^53 (exact in float64).
    fn gather(
        &self,
        replicas: &mut dyn Replicas,
        filled: Vec<f64>,
        what: impl Fn(usize) -> String,
    ) -> Result<Vec<usize>> {
        let total = self.sum_over_replicas(replicas, &filled)?;
        total
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                if v < 1.0 || v.fract() != 0.0 {
                    Err(ModelError::TableLayout {
                        reason: format!("{} is held by no rank, or by several", what(i)),
                    })
                } else {
                    Ok(v as usize - 1)
                }
            })
            .collect()
    }

    /// Sums `values` (float64) over the replicas.
    fn sum_over_replicas(&self, replicas: &mut dyn Replicas, values: &[f64]) -> Result<Vec<f64>> {
        let t = Tensor::f_from_slice(values)?.f_to_device(self.model.device())?;
        replicas.all_reduce_sum(std::slice::from_ref(&t))?;
        Ok(Vec::<f64>::try_from(t.f_to_device(Device::Cpu)?)?)
    }

    /// The epoch's row order (global positions) over a training set in memory: a permutation of
    /// all training rows, or with `class_balance` or `epoch_rows` set, a class-tempered draw
    /// (see `epoch`).
    fn order(
        &mut self,
        train: &dyn RowSource,
        global_rows: usize,
        replicas: &mut dyn Replicas,
    ) -> Result<Vec<usize>> {
        let rows = self.train.rows_per_epoch(global_rows as u64) as usize;
        let stage_key = derive(self.train.seed, &[tag::PERMUTATION, self.state.stage.key()]);
        let epoch = self.state.epoch_in_stage as u64;
        if self.train.class_balance == 0.0 && rows == global_rows {
            return Ok(permutation(derive(stage_key, &[epoch]), rows));
        }
        let classes = self.model.classes();
        let balance = self.train.class_balance;
        let labels = self.position_labels(train, global_rows, replicas)?;
        Ok(epoch_order(
            stage_key, epoch, labels, classes, balance, rows,
        ))
    }

    /// The class of every dataset-wide training position, gathered once from all ranks (each
    /// fills in the positions of its loaded rows; a sum over ranks completes the vector).
    fn position_labels(
        &mut self,
        train: &dyn RowSource,
        global_rows: usize,
        replicas: &mut dyn Replicas,
    ) -> Result<&[u32]> {
        if self.position_labels.is_none() {
            let (table, positions) = train.loaded();
            let mut mine = vec![0.0; global_rows];
            for (&p, &l) in positions.iter().zip(&table.labels) {
                mine[p] = f64::from(l) + 1.0;
            }
            let labels = self
                .gather(replicas, mine, |p| format!("training position {p}"))?
                .into_iter()
                .map(|l| l as u32)
                .collect();
            self.position_labels = Some(labels);
        }
        Ok(self.position_labels.as_deref().unwrap_or_default())
    }

    /// The diffusion-space latents `[B, latent_dim]` and class codes `[B]` of the rows `idx` of
    /// `train`, from [`Trainer::latents`], encoding the rows it does not hold yet.
    fn cached_latents(&mut self, train: &Table, idx: &[usize]) -> Result<(Tensor, Tensor)> {
        let device = self.model.device();
        let mut cache = match self.latents.take() {
            Some(c) if c.encoded.len() == train.rows() => c,
            _ => {
                let n = train.rows() as i64;
                LatentCache {
                    z: Tensor::f_zeros([n, self.model.latent_dim()], (Kind::Float, device))?,
                    label: Tensor::f_zeros([n], (Kind::Int64, device))?,
                    encoded: vec![false; train.rows()],
                }
            }
        };
        let index = |rows: &[usize]| -> Result<Tensor> {
            let rows: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
            Ok(Tensor::f_from_slice(&rows)?.f_to_device(device)?)
        };
        let mut missing: Vec<usize> = idx.iter().copied().filter(|&i| !cache.encoded[i]).collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let batch = self.encode_rows(train, &missing)?;
            let at = index(&missing)?;
            let _ = cache
                .z
                .f_index_copy_(0, &at, &self.model.encode_latent(&batch)?)?;
            let _ = cache.label.f_index_copy_(0, &at, &batch.label)?;
            for i in missing {
                cache.encoded[i] = true;
            }
        }
        let rows = index(idx)?;
        let picked = (
            cache.z.f_index_select(0, &rows)?,
            cache.label.f_index_select(0, &rows)?,
        );
        self.latents = Some(cache);
        Ok(picked)
    }

    /// The rows `idx` of `table`, preprocessed onto the model's device.
    fn encode_rows(&self, table: &Table, idx: &[usize]) -> Result<Batch> {
        encode_rows(&self.model, table, idx)
    }

    /// Runs `f` over every local training row once, preprocessed in chunks: over the loaded
    /// rows when they are the whole training set, else window by window in group order.
    fn scan<T>(
        &mut self,
        train: &mut dyn RowSource,
        f: impl FnOnce(&FlowModel, &mut dyn Iterator<Item = Result<Batch>>) -> Result<T>,
    ) -> Result<T> {
        let groups = train.group_rows().len();
        let streaming = self.streaming(train);
        let windows: Vec<Vec<usize>> = if streaming {
            // Forget the loaded window: the scan replaces it.
            self.resident = None;
            self.latents = None;
            let window = self.train.shuffle_window_rows as usize;
            cut_windows(0..groups, train.group_rows(), window)
        } else {
            let all: Vec<usize> = (0..groups).collect();
            self.enter(train, &all, &[])?;
            vec![all]
        };
        let model = &self.model;
        let mut window = 0usize;
        let mut next_row = 0usize;
        let mut loaded = !streaming;
        let mut batches = std::iter::from_fn(|| {
            loop {
                if loaded {
                    let (table, _) = train.loaded();
                    if next_row < table.rows() {
                        let end = (next_row + EVAL_CHUNK_ROWS).min(table.rows());
                        let idx: Vec<usize> = (next_row..end).collect();
                        next_row = end;
                        return Some(encode_rows(model, table, &idx));
                    }
                    window += 1;
                }
                let groups = windows.get(window)?;
                if let Err(e) = train.load(groups, &[]) {
                    window = windows.len();
                    return Some(Err(e));
                }
                loaded = true;
                next_row = 0;
            }
        });
        f(model, &mut batches)
    }

    fn vae_epoch(
        &mut self,
        source: &mut dyn RowSource,
        val: &Table,
        segments: Vec<Segment>,
        replicas: &mut dyn Replicas,
    ) -> Result<EpochReport> {
        let started = Instant::now();
        let beta = self.state.beta;
        let noise_key = derive(
            self.train.seed,
            &[tag::VAE_NOISE, self.state.epoch_in_stage as u64],
        );
        let (mut mse, mut ce, mut kl, mut image_mse, mut image_kl) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut steps = 0;
        let mut rows = 0;
        for segment in segments {
            let batches = self.segment_batches(source, segment, replicas)?;
            let (train, _) = source.loaded();
            for step in batches {
                let idx = &step.local;
                rows += step.global;
                self.vae_opt.zero_grad();
                if idx.is_empty() {
                    Self::zero_gradients(&self.vae_opt)?;
                } else {
                    let batch = self.encode_rows(train, idx)?;
                    let eps = self.model.vae_noise(noise_key, &step.slots)?;
                    let loss = self.model.vae_loss(&batch, beta, Some(&eps))?;
                    // This rank's share of the global batch's mean loss (exactly 1 when alone).
                    let share = idx.len() as f64 / step.global as f64;
                    loss.tabular.total.f_mul_scalar(share)?.f_backward()?;
                    let w = idx.len() as f64;
                    mse += loss.tabular.mse * w;
                    ce += loss.tabular.ce * w;
                    kl += loss.tabular.kl * w;
                    image_mse += loss.image_mse * w;
                    image_kl += loss.image_kl * w;
                }
                let grads = self.vae_opt.gradients()?;
                replicas.reduce_gradients(&grads)?;
                self.vae_opt.step()?;
                self.state.global_step += 1;
                steps += 1;
                replicas.after_step(self.vae_opt.params())?;
            }
        }
        let sums = self.sum_over_replicas(replicas, &[mse, ce, kl, image_mse, image_kl])?;
        let n = rows as f64;
        let [mse, ce, kl, image_mse, image_kl] = [0, 1, 2, 3, 4].map(|i| sums[i] / n);
        let (val_loss, coherence) = match self.validation_loss(val, replicas)? {
            (Some(v), c) => (v, c),
            (None, _) => (mse + ce + image_mse, self.coherence_over(source, replicas)?),
        };
        self.update_beta(val_loss);
        self.state.epoch_in_stage += 1;
        let epoch = self.state.epoch_in_stage;
        let finished = epoch >= self.stage_epochs(Stage::Vae);
        if finished {
            self.finish_vae(source, replicas)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(EpochReport {
            stage: Stage::Vae,
            epoch,
            steps,
            rows,
            loss: mse + ce + image_mse + beta * (kl + image_kl),
            mse,
            ce,
            kl,
            image_mse,
            image_kl,
            coherence,
            val_loss: Some(val_loss),
            beta: self.state.beta,
            seconds,
            rows_per_second: n / seconds.max(1e-9),
            stage_finished: finished,
        })
    }

    /// The first stage's reconstruction loss (mse + ce + image mse, with z = mu) over the
    /// validation rows of all replicas (`None` when there are none), and their cross-modal
    /// coherence (multimodal).
    fn validation_loss(
        &self,
        val: &Table,
        replicas: &mut dyn Replicas,
    ) -> Result<(Option<f64>, Option<f64>)> {
        let (mut sum, mut coherence) = (0.0, 0.0);
        let n = val.rows();
        {
            let _guard = tch::no_grad_guard();
            for idx in eval_chunks(n) {
                let batch = self.encode_rows(val, &idx)?;
                let loss = self.model.vae_loss(&batch, self.state.beta, None)?;
                let w = idx.len() as f64;
                sum += (loss.tabular.mse + loss.tabular.ce + loss.image_mse) * w;
                coherence += self
                    .model
                    .coherence_of_latents(&loss.latent)?
                    .unwrap_or(0.0)
                    * w;
            }
        }
        let total = self.sum_over_replicas(replicas, &[sum, coherence, n as f64])?;
        if total[2] <= 0.0 {
            return Ok((None, None));
        }
        let coherence = (self.model.mode() == ModelMode::Multimodal).then(|| total[1] / total[2]);
        Ok((Some(total[0] / total[2]), coherence))
    }

    /// Cross-modal coherence over the first loaded training rows of every replica (at most
    /// one evaluation chunk each; multimodal, `None` otherwise).
    fn coherence_over(
        &self,
        source: &dyn RowSource,
        replicas: &mut dyn Replicas,
    ) -> Result<Option<f64>> {
        if self.model.mode() != ModelMode::Multimodal {
            return Ok(None);
        }
        let (train, _) = source.loaded();
        let rows = EVAL_CHUNK_ROWS.min(train.rows());
        let idx: Vec<usize> = (0..rows).collect();
        let c = match rows {
            0 => 0.0,
            _ => self
                .model
                .coherence(&self.encode_rows(train, &idx)?)?
                .unwrap_or(0.0),
        };
        let total = self.sum_over_replicas(replicas, &[c * rows as f64, rows as f64])?;
        Ok((total[1] > 0.0).then(|| total[0] / total[1]))
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

    /// Ends the VAE stage: fits the latent mean over all training rows (of all replicas), enters
    /// the diffusion stage.
    fn finish_vae(&mut self, train: &mut dyn RowSource, replicas: &mut dyn Replicas) -> Result<()> {
        let (sum, rows) = self.scan(train, |model, batches| model.latent_sums(batches))?;
        let rows = Tensor::f_from_slice(&[rows as f64])?.f_to_device(self.model.device())?;
        replicas.all_reduce_sum(&[sum.shallow_clone(), rows.shallow_clone()])?;
        let rows = rows.f_double_value(&[0])?;
        if rows <= 0.0 {
            return Err(ModelError::EmptyData {
                what: "training (to fit the latent statistics)",
            });
        }
        self.model
            .set_latent_mean(&(sum / rows).f_to_kind(tch::Kind::Float)?)?;
        self.state.stage = Stage::Diffusion;
        self.state.epoch_in_stage = 0;
        self.state.best_val_loss = None;
        self.state.epochs_without_improvement = 0;
        Ok(())
    }

    fn diffusion_epoch(
        &mut self,
        source: &mut dyn RowSource,
        segments: Vec<Segment>,
        replicas: &mut dyn Replicas,
    ) -> Result<EpochReport> {
        let started = Instant::now();
        let device = self.model.device();
        let dim = self.model.latent_dim() as usize;
        let dropout = self.model.config().label_dropout;
        let epoch = self.state.epoch_in_stage as u64;
        let noise_key = derive(self.train.seed, &[tag::EDM_NOISE, epoch]);
        // End to end: the last `joint_epochs` denoiser epochs also train the VAEs, with the
        // denoiser's loss reaching the encoders through the latents.
        let joint = self.joint_epoch();
        let vae_noise_key = derive(
            self.train.seed,
            &[tag::VAE_NOISE, Stage::Diffusion.key(), epoch],
        );
        let beta = self.state.beta;
        if joint {
            self.latents = None;
        }
        let mut loss_sum = 0.0;
        let mut steps = 0;
        let mut rows = 0;
        for segment in segments {
            let batches = self.segment_batches(source, segment, replicas)?;
            let (train, _) = source.loaded();
            for step in batches {
                let idx = &step.local;
                rows += step.global;
                self.diffusion_opt.zero_grad();
                if joint {
                    self.vae_opt.zero_grad();
                }
                if idx.is_empty() {
                    Self::zero_gradients(&self.diffusion_opt)?;
                    if joint {
                        Self::zero_gradients(&self.vae_opt)?;
                    }
                } else {
                    let noise = EdmNoise::draw(noise_key, &step.slots, dim, dropout, device)?;
                    let (loss, total) = if joint {
                        // One encoder pass: the denoiser trains on the posterior means the VAE loss
                        // computed, so its gradient reaches the encoders through them.
                        let batch = self.encode_rows(train, idx)?;
                        let eps = self.model.vae_noise(vae_noise_key, &step.slots)?;
                        let vae = self.model.vae_loss(&batch, beta, Some(&eps))?;
                        let z = self.model.diffusion_latent(&vae.latent)?;
                        let edm = self.model.denoiser_loss(&z, &batch.label, &noise)?;
                        let total = &edm + vae.tabular.total;
                        (edm, total)
                    } else {
                        let (z, label) = self.cached_latents(train, idx)?;
                        let edm = self.model.denoiser_loss(&z, &label, &noise)?;
                        (edm.shallow_clone(), edm)
                    };
                    let share = idx.len() as f64 / step.global as f64;
                    total.f_mul_scalar(share)?.f_backward()?;
                    loss_sum += scalar(&loss.f_detach()?)? * idx.len() as f64;
                }
                let mut grads = self.diffusion_opt.gradients()?;
                if joint {
                    grads.extend(self.vae_opt.gradients()?);
                }
                replicas.reduce_gradients(&grads)?;
                self.diffusion_opt.step()?;
                if joint {
                    self.vae_opt.step()?;
                }
                self.state.global_step += 1;
                steps += 1;
                replicas.after_step(self.diffusion_opt.params())?;
            }
        }
        let loss_sum = self.sum_over_replicas(replicas, &[loss_sum])?[0];
        self.state.epoch_in_stage += 1;
        let epoch = self.state.epoch_in_stage;
        let finished = epoch >= self.stage_epochs(Stage::Diffusion);
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
            image_mse: 0.0,
            image_kl: 0.0,
            coherence: None,
            val_loss: None,
            beta: self.state.beta,
            seconds,
            rows_per_second: rows as f64 / seconds.max(1e-9),
            stage_finished: finished,
        })
    }
}

/// Each group's first position, and the total after the last group.
fn group_starts(group_rows: &[usize]) -> Vec<usize> {
    let mut first = Vec::with_capacity(group_rows.len() + 1);
    first.push(0usize);
    for &n in group_rows {
        first.push(first.last().copied().unwrap_or(0) + n);
    }
    first
}

/// Rows of the dataset-wide training set of `source` (over all ranks).
fn global_rows(source: &dyn RowSource) -> usize {
    source.group_rows().iter().sum()
}

/// The rows `idx` of `table`, preprocessed onto `model`'s device.
fn encode_rows(model: &FlowModel, table: &Table, idx: &[usize]) -> Result<Batch> {
    model
        .preprocessor()
        .encode(&table.select(idx), model.device())
}

/// Row indices `0..n` in chunks of [`EVAL_CHUNK_ROWS`] (evaluation passes without gradients).
fn eval_chunks(n: usize) -> impl Iterator<Item = Vec<usize>> {
    (0..n)
        .step_by(EVAL_CHUNK_ROWS)
        .map(move |start| (start..(start + EVAL_CHUNK_ROWS).min(n)).collect())
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
