//! Typed job configuration. A TOML job file (`--config job.toml`) and the CLI flags fill the same
//! structs; flags override the file. Every key has a working default, so an empty file is valid.
//!
//! ```toml
//! [train]
//! epochs = 30            # VAE epochs
//! diffusion_epochs = 60  # denoiser epochs (default: 2 x epochs)
//! batch_size = 512       # per worker
//! seed = 0
//!
//! [model]
//! d_token = 4
//! denoiser_width = 256
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Training schedule and run-time settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed for weight initialisation, data order, noise and label dropout. Same seed, same data,
    /// same config => same checkpoint (on CPU).
    pub seed: u64,
    /// Rows per optimisation step on one worker (the global batch is workers x batch_size).
    pub batch_size: usize,
    /// Epochs of VAE training (stage 1).
    pub epochs: usize,
    /// Epochs of denoiser training on the frozen VAE's latents (stage 2). Default: 2 x `epochs`.
    pub diffusion_epochs: Option<usize>,
    /// Write a checkpoint every this many epochs of each stage (and always at the end).
    pub checkpoint_every: usize,
    /// Committed checkpoints kept in the checkpoint location; older ones are deleted.
    pub keep_checkpoints: usize,
    /// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Intra-op threads for libtorch on CPU; 0 = libtorch's default (all cores).
    pub threads: usize,
    /// Use at most this many rows of the dataset (a uniform subset chosen by the seed); for quick
    /// runs and tests. 0 = all rows.
    pub max_rows: u64,
    /// Share of the rows held out to measure VAE validation loss (drives the beta schedule).
    pub validation_fraction: f64,
    /// At most this many held-out rows (0 = no cap): the validation loss only steers the beta
    /// schedule, and every worker keeps its held-out rows in memory, so a fraction of a
    /// billion-row dataset would be both useless and unaffordable.
    pub max_validation_rows: u64,
    /// Training rows (over all workers) held in memory at a time. A training set up to this
    /// size is loaded once and every epoch draws from all of it; a larger one is streamed: each
    /// pass over the data visits the row groups in a seeded random order, a window of about this
    /// many rows at a time, and epochs draw from the window in memory (a shuffle buffer), so a
    /// worker's memory does not grow with the dataset. 0 = always load everything.
    pub shuffle_window_rows: u64,
    /// How each epoch draws its rows across classes, in both stages: 0 = in the data's own
    /// proportions (every row once per epoch), 1 = the same number of rows from every class; in
    /// between, class c gets a share proportional to `n_c^(1 - class_balance)` (tempered
    /// sampling). A class's rows are drawn without replacement until all were used, so rare
    /// classes are repeated and large ones thinned. Rare classes need it: at 0, a class with 50
    /// of 100,000 rows sees 0.05% of the gradient steps and the generator ignores its label.
    pub class_balance: f64,
    /// Rows drawn per epoch (both stages): at most this many, fewer when the training set is
    /// smaller; 0 = as many as there are training rows. With `class_balance` > 0 an epoch is a
    /// sample, so its length is a budget rather than a pass: the default keeps a default run of
    /// 30 + 60 epochs within about ten minutes on two CPU cores whatever the dataset's size.
    pub epoch_rows: u64,
    /// End-to-end training: the last this many denoiser epochs also train the VAEs, the
    /// denoiser's loss reaching the encoders through the latents (MAGE-ID's joint VAE +
    /// diffusion training); 0 = the VAEs stay frozen after their stage. Not in data space.
    pub joint_epochs: usize,
    /// Data-parallel training: gradients are summed across workers in buckets of at most this
    /// many MiB (one collective call each; PyTorch DDP's default is 25).
    pub bucket_mb: f64,
    /// Data-parallel training: compare a checksum of all parameters across workers every this
    /// many steps (and at every epoch end); 0 = only at start and epoch ends.
    pub checksum_every: u64,
    /// Data-parallel training: seconds a worker waits for its peers in one collective before the
    /// job fails (a peer may be busy writing a checkpoint meanwhile).
    pub collective_timeout_s: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 512,
            epochs: 30,
            diffusion_epochs: None,
            checkpoint_every: 10,
            keep_checkpoints: 3,
            device: "auto".into(),
            threads: 0,
            max_rows: 0,
            validation_fraction: 0.05,
            max_validation_rows: 16_384,
            shuffle_window_rows: 262_144,
            class_balance: 1.0,
            epoch_rows: 16_384,
            joint_epochs: 0,
            bucket_mb: 25.0,
            checksum_every: 100,
            collective_timeout_s: 600,
        }
    }
}

impl TrainConfig {
    pub fn diffusion_epochs(&self) -> usize {
        self.diffusion_epochs.unwrap_or(2 * self.epochs)
    }

    /// How a dataset of `total_rows` rows splits: `(used, held_out)`, where `used` honours
    /// `max_rows` and `held_out` (validation) is `validation_fraction` of it (at most
    /// `max_validation_rows`), always leaving at
    /// least one training row. The workers pick which rows; everyone agrees on how many.
    pub fn split_sizes(&self, total_rows: u64) -> (u64, u64) {
        let used = if self.max_rows > 0 {
            total_rows.min(self.max_rows)
        } else {
            total_rows
        };
        let mut held_out = ((used as f64) * self.validation_fraction).round() as u64;
        if self.max_validation_rows > 0 {
            held_out = held_out.min(self.max_validation_rows);
        }
        (used, held_out.min(used.saturating_sub(1)))
    }

    /// Whether a training set of `train_rows` rows in `groups` row groups is streamed window by
    /// window (see `shuffle_window_rows`) rather than held in memory whole.
    pub fn streams(&self, train_rows: u64, groups: usize) -> bool {
        self.shuffle_window_rows > 0 && groups > 1 && train_rows > self.shuffle_window_rows
    }

    /// Rows one epoch draws from `train_rows` training rows (see `epoch_rows`).
    pub fn rows_per_epoch(&self, train_rows: u64) -> u64 {
        if self.epoch_rows > 0 {
            self.epoch_rows.min(train_rows)
        } else {
            train_rows
        }
    }
}

/// Model sizes and optimisation hyper-parameters. Defaults follow TabSyn's published code where
/// that is affordable on a laptop CPU (d_token, heads, FFN, beta schedule, EDM constants) and are
/// smaller where it is not (denoiser width: TabSyn uses 1024).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The space the denoiser learns (the papers' model and its two ablations): `tabular`, the
    /// latent of the Transformer VAE over the columns (TabSyn-like); `multimodal`, that latent
    /// joined with a CNN VAE's latent of each row's image view (MAGE-ID); `data-space`, the
    /// preprocessed row itself, categoricals one-hot, with no VAE (TabDDPM-like baseline).
    pub mode: ModelMode,
    /// Width of each column token in the tabular VAE.
    pub d_token: i64,
    /// Attention heads in the VAE's Transformer blocks.
    pub n_heads: i64,
    /// Hidden width of the Transformer feed-forward blocks.
    pub ffn_dim: i64,
    /// Transformer blocks in each of the encoder (mu, logvar) and the decoder.
    pub n_layers: i64,
    pub vae_lr: f64,
    pub vae_weight_decay: f64,
    /// KL weight at the start of VAE training.
    pub beta_max: f64,
    /// Floor of the KL weight.
    pub beta_min: f64,
    /// Factor applied to beta when validation loss has not improved for `beta_patience` epochs.
    pub beta_decay: f64,
    pub beta_patience: usize,
    /// Width of the denoiser MLP (its blocks are width, 2 x width, 2 x width, width).
    pub denoiser_width: i64,
    pub diffusion_lr: f64,
    /// Probability of replacing the class label by the "no label" token in denoiser training
    /// (classifier-free guidance).
    pub label_dropout: f64,
    /// EDM Heun sampler steps (each step but the last is two network evaluations).
    pub sampler_steps: usize,
    /// Classifier-free guidance scale: 1.0 = plain conditional sampling.
    pub guidance_scale: f64,
    /// How far samples may move from the real rows of their class, in (0, 1]: each sample
    /// starts between a real row of the class and one of its nearest neighbours (in latent
    /// space), is noised to the point of the schedule this share from its end and denoised
    /// conditioned on the class (neighbourhood sampling). 1 = generation from pure noise.
    pub sampler_strength: f64,
    /// Neighbourhood sampling keeps the real rows' values and adds only the model's change (the
    /// decoded sample minus the decoded start), so the VAE's reconstruction error cancels; false
    /// takes the decoded sample as it is.
    pub sampler_residual: bool,
    /// Multimodal mode: width of the CNN VAE's image latent.
    pub image_latent: i64,
    /// Multimodal mode: channels of the CNN VAE's first convolution (the second has twice as
    /// many).
    pub image_channels: i64,
}

/// See [`ModelConfig::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelMode {
    #[default]
    Tabular,
    Multimodal,
    DataSpace,
}

impl ModelMode {
    pub const ALL: [ModelMode; 3] = [
        ModelMode::Tabular,
        ModelMode::Multimodal,
        ModelMode::DataSpace,
    ];

    /// The name a job file uses.
    pub fn name(self) -> &'static str {
        match self {
            ModelMode::Tabular => "tabular",
            ModelMode::Multimodal => "multimodal",
            ModelMode::DataSpace => "data-space",
        }
    }

    /// Whether the mode trains a VAE stage before the denoiser.
    pub fn has_vae(self) -> bool {
        self != ModelMode::DataSpace
    }
}

impl std::fmt::Display for ModelMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("model mode `{s}` is not one of tabular, multimodal, data-space")
            })
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            d_token: 4,
            n_heads: 1,
            ffn_dim: 128,
            n_layers: 2,
            vae_lr: 1e-3,
            vae_weight_decay: 0.0,
            beta_max: 1e-2,
            beta_min: 1e-5,
            beta_decay: 0.7,
            beta_patience: 10,
            denoiser_width: 256,
            diffusion_lr: 1e-3,
            label_dropout: 0.1,
            sampler_steps: 20,
            guidance_scale: 1.0,
            sampler_strength: 0.15,
            sampler_residual: true,
            mode: ModelMode::default(),
            image_latent: 16,
            image_channels: 16,
        }
    }
}

/// A job file: `[train]` and `[model]` tables.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    pub train: TrainConfig,
    pub model: ModelConfig,
}

impl JobConfig {
    /// Parses a TOML job file; `location` names it in errors.
    pub fn from_toml(text: &str, location: &str) -> Result<Self> {
        let cfg: JobConfig = toml::from_str(text).map_err(|e| Error::Config {
            location: location.to_string(),
            message: describe_toml_error(text, &e),
        })?;
        cfg.validate().map_err(|message| Error::Config {
            location: location.to_string(),
            message: with_key_line(text, message),
        })?;
        Ok(cfg)
    }

    /// Parses the `config.toml` of a checkpoint. Checkpoints written before `model.mode`
    /// existed hold a tabular model: a missing mode means that, whatever today's default.
    pub fn from_checkpoint_toml(text: &str, location: &str) -> Result<Self> {
        let mut cfg = Self::from_toml(text, location)?;
        let has_mode = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("model")?.as_table()?.get("mode").cloned())
            .is_some();
        if !has_mode {
            cfg.model.mode = ModelMode::Tabular;
        }
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks value ranges; returns a message naming the offending key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        let m = &self.model;
        if t.batch_size == 0 {
            return Err("train.batch_size must be at least 1".into());
        }
        if t.epochs == 0 {
            return Err("train.epochs must be at least 1".into());
        }
        if t.checkpoint_every == 0 {
            return Err("train.checkpoint_every must be at least 1".into());
        }
        if t.keep_checkpoints == 0 {
            return Err("train.keep_checkpoints must be at least 1".into());
        }
        if !(t.bucket_mb.is_finite() && t.bucket_mb > 0.0) {
            return Err("train.bucket_mb must be a positive number".into());
        }
        if t.collective_timeout_s == 0 {
            return Err("train.collective_timeout_s must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&t.class_balance) {
            return Err("train.class_balance must be in [0, 1]".into());
        }
        if !(0.0..0.5).contains(&t.validation_fraction) {
            return Err("train.validation_fraction must be in [0, 0.5)".into());
        }
        if !matches!(t.device.as_str(), "auto" | "cpu" | "cuda") && !t.device.starts_with("cuda:") {
            return Err(format!(
                "train.device `{}` is not one of auto, cpu, cuda, cuda:N",
                t.device
            ));
        }
        for (key, v) in [
            ("model.d_token", m.d_token),
            ("model.n_heads", m.n_heads),
            ("model.ffn_dim", m.ffn_dim),
            ("model.n_layers", m.n_layers),
            ("model.denoiser_width", m.denoiser_width),
            ("model.image_latent", m.image_latent),
            ("model.image_channels", m.image_channels),
        ] {
            if v < 1 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if m.d_token % m.n_heads != 0 {
            return Err("model.d_token must be a multiple of model.n_heads".into());
        }
        if !(0.0..1.0).contains(&m.label_dropout) {
            return Err("model.label_dropout must be in [0, 1)".into());
        }
        if m.sampler_steps < 2 {
            return Err("model.sampler_steps must be at least 2".into());
        }
        if !(m.sampler_strength > 0.0 && m.sampler_strength <= 1.0) {
            return Err("model.sampler_strength must be in (0, 1]".into());
        }
        for (key, v) in [
            ("model.vae_lr", m.vae_lr),
            ("model.diffusion_lr", m.diffusion_lr),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("{key} must be a positive number"));
            }
        }
        if !(m.beta_min > 0.0 && m.beta_min <= m.beta_max) {
            return Err("model.beta_min must be positive and at most model.beta_max".into());
        }
        Ok(())
    }
}

/// One line naming the key and the line of a TOML error (`train.epochs` at line 2: invalid
/// type: ...), rather than toml's multi-line excerpt without the table.
/// A validation message that starts with a key path (`train.batch_size must be ...`), with the
/// line where the file sets that key; unchanged when the file does not set it (a default).
fn with_key_line(text: &str, message: String) -> String {
    let Some((table, key)) = message
        .split_whitespace()
        .next()
        .and_then(|path| path.split_once('.'))
    else {
        return message;
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        } else if current == table
            && let Some((k, _)) = l.split_once('=')
            && k.trim() == key
        {
            return format!("{message} (line {})", i + 1);
        }
    }
    message
}

fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match line.split_once('=') {
        Some((key, _)) if !line.trim_start().starts_with('[') => {
            let key = key.trim();
            let path = match table {
                Some(t) => format!("{t}.{key}"),
                None => key.to_string(),
            };
            format!("`{path}` (line {line_no}): {}", e.message())
        }
        _ => format!("line {line_no}: {}", e.message()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(JobConfig::from_toml("", "t").unwrap(), JobConfig::default());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = JobConfig::from_toml("[train]\nepochz = 3\n", "job.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("job.toml") && msg.contains("epochz"), "{msg}");
    }

    #[test]
    fn a_checkpoint_config_without_a_mode_is_tabular() {
        let old = "[train]\nepochs = 3\n\n[model]\nd_token = 4\n";
        let cfg = JobConfig::from_checkpoint_toml(old, "ck/config.toml").unwrap();
        assert_eq!(cfg.model.mode, ModelMode::Tabular);
        let new = JobConfig {
            model: ModelConfig {
                mode: ModelMode::Multimodal,
                ..ModelConfig::default()
            },
            ..JobConfig::default()
        };
        let back = JobConfig::from_checkpoint_toml(&new.to_toml(), "ck/config.toml").unwrap();
        assert_eq!(back, new);
        let err = JobConfig::from_toml("[model]\nmode = \"pixels\"\n", "job.toml").unwrap_err();
        assert!(err.to_string().contains("model.mode"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_file_the_key_and_the_line() {
        let err = JobConfig::from_toml(
            "[model]\nd_token = 4\n\n[train]\nepochs = \"ten\"\n",
            "job.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("job.toml")
                && err.contains("`train.epochs` (line 5)")
                && err.contains("expected usize"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn out_of_range_value_names_the_key() {
        let err = JobConfig::from_toml("[train]\nbatch_size = 0\n", "job.toml").unwrap_err();
        assert!(err.to_string().contains("train.batch_size"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = JobConfig::default();
        c.train.epochs = 7;
        c.model.denoiser_width = 64;
        assert_eq!(JobConfig::from_toml(&c.to_toml(), "t").unwrap(), c);
    }
}
