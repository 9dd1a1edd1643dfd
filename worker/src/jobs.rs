//! What a worker does with an assignment: train (read its shards, run the two training stages,
//! commit checkpoints) or sample (generate its chunks, write Parquet parts).
//!
//! Both run on a blocking thread (libtorch computes synchronously); they talk to the async side
//! through a `watch` channel of progress (latest value wins) and a stop flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowsynth_common::checkpoint::{self, CheckpointMeta, LoadedCheckpoint};
use flowsynth_common::config::JobConfig;
use flowsynth_common::dataset;
use flowsynth_common::manifest::{DatasetManifest, ImageView};
use flowsynth_common::store::{Location, block_on};
use flowsynth_common::table::{self, Layout};
use flowsynth_proto::{Assignment, ChunkDone, Progress, SampleSpec, TrainSpec};
use tch::{Device, Tensor};
use tokio::sync::watch;

use crate::augment;
use crate::ddp::DataParallel;
use crate::error::{Error, Result};
use crate::shards::ShardRows;
use flowsynth_collective::{
    Collective, Membership, Nccl, NcclUniqueId, TcpConfig, TcpListenerHandle, TcpRing,
};
use flowsynth_model::RowSource;
use flowsynth_model::{FlowModel, SamplerOptions, Stage, TrainState, Trainer};

/// Rows per row group in sampled output.
const OUTPUT_ROW_GROUP_ROWS: usize = 65_536;

/// How a training rank reaches its peers, as settled by the rendezvous.
#[derive(Clone, Default)]
pub enum Peers {
    /// World size 1: nothing to reach.
    #[default]
    Alone,
    /// TCP ring: this worker's listener and every rank's collective address (by rank).
    Tcp {
        listener: Arc<TcpListenerHandle>,
        addresses: Vec<String>,
    },
    /// NCCL: the communicator's unique id (created by rank 0).
    Nccl { unique_id: Vec<u8> },
}

/// Shared between a running job and the worker loop.
#[derive(Clone)]
pub struct JobContext {
    pub progress: watch::Sender<Progress>,
    pub stop: Arc<AtomicBool>,
    /// Device preference of this worker (`auto`, `cpu`, `cuda`, `cuda:N`); a job config's
    /// explicit device wins.
    pub device: String,
    /// Training: how to reach the other ranks.
    pub peers: Peers,
    /// What goes with the next progress report.
    pub pending: Arc<Mutex<Pending>>,
    /// This rank's lease on its generation: checked before every write to storage.
    pub lease: Lease,
}

/// Things a running job tells the coordinator with its next progress report.
#[derive(Debug, Default)]
pub struct Pending {
    /// Events for the job's record (shown by `flowsynth status`).
    pub events: Vec<String>,
    /// Sampling: chunks finished (their parts written).
    pub chunks: Vec<ChunkDone>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.chunks.is_empty()
    }
}

impl JobContext {
    /// Records an event on the job (shown by `flowsynth status`).
    fn event(&self, text: String) {
        if let Ok(mut p) = self.pending.lock() {
            p.events.push(text);
        }
    }

    fn chunk_done(&self, chunk: ChunkDone) {
        if let Ok(mut p) = self.pending.lock() {
            p.chunks.push(chunk);
        }
    }

    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    /// Returns once this rank may write `what` to storage: its generation was confirmed by the
    /// coordinator (a heartbeat or progress answer) within the lease. Waits up to one lease for
    /// a confirmation, then refuses with [`Error::Fenced`] (retryable).
    fn hold_lease(&self, what: &str) -> Result<()> {
        let deadline = Instant::now() + self.lease.length();
        loop {
            self.check_stop()?;
            let silent = self.lease.silent();
            if silent.is_some_and(|s| s < self.lease.length()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let e = Error::Fenced {
                    what: what.to_string(),
                    silent_ms: silent.map_or(u64::MAX, |s| s.as_millis() as u64),
                    lease_ms: self.lease.length().as_millis() as u64,
                };
                // Said here: reporting it may wait for the network that cut this rank off.
                tracing::warn!("{e}");
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long a rank's generation stays confirmed after the coordinator last answered for it.
///
/// The coordinator hands a rank's work to others only after it has been silent for the
/// heartbeat timeout; a rank writes checkpoints and parts only within half of that since a call
/// (sent at a known instant) was answered for its generation. A rank cut off from the
/// coordinator therefore stops writing well before a newer generation can start writing: a
/// fence without a lock service, as long as clocks run at about the same rate.
#[derive(Clone, Debug)]
pub struct Lease(Arc<Mutex<LeaseState>>);

#[derive(Debug)]
struct LeaseState {
    length: Duration,
    /// When the newest confirmed call was sent.
    confirmed: Option<Instant>,
}

impl Lease {
    pub fn new(length: Duration) -> Self {
        Self(Arc::new(Mutex::new(LeaseState {
            length,
            confirmed: None,
        })))
    }

    /// A call sent at `sent` was answered: the generation ran then.
    pub fn confirm(&self, sent: Instant) {
        if let Ok(mut l) = self.0.lock()
            && l.confirmed.is_none_or(|c| c < sent)
        {
            l.confirmed = Some(sent);
        }
    }

    /// Starts over (a new assignment, or the length a new registration gave).
    pub fn reset(&self, length: Option<Duration>) {
        if let Ok(mut l) = self.0.lock() {
            l.confirmed = None;
            if let Some(length) = length {
                l.length = length;
            }
        }
    }

    fn length(&self) -> Duration {
        self.0
            .lock()
            .map(|l| l.length)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Time since the newest confirmed call was sent; `None` before the first.
    fn silent(&self) -> Option<Duration> {
        self.0
            .lock()
            .ok()
            .and_then(|l| l.confirmed)
            .map(|c| c.elapsed())
    }
}

/// What a finished job reports.
#[derive(Debug, Clone, Default)]
pub struct JobOutcome {
    pub result_url: String,
    /// Sampling: `path:rows:synthetic` per part written.
    pub outputs: Vec<String>,
    pub rows_written: u64,
    /// Sampling, multimodal: the generated rows' summed cross-modal coherence and their number.
    pub coherence: (f64, u64),
    /// Sampling, multimodal: the image layout as the sample manifest's `image_view` JSON.
    pub image_view: String,
    /// Sampling: seconds spent in the generator itself (see `DoneReport.generation_seconds`).
    pub generation_seconds: f64,
}

/// Resolves a device name; `auto` means the first CUDA device when libtorch sees one.
pub fn pick_device(name: &str) -> Result<Device> {
    match name {
        "" | "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0, name),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => cuda(n, name),
            None => Err(Error::Device {
                device: name.into(),
                reason: "expected auto, cpu, cuda or cuda:N".into(),
            }),
        },
    }
}

fn cuda(n: usize, name: &str) -> Result<Device> {
    if tch::Cuda::is_available() && n < tch::Cuda::device_count() as usize {
        Ok(Device::Cuda(n))
    } else {
        Err(Error::Device {
            device: name.into(),
            reason: "libtorch sees no such CUDA device".into(),
        })
    }
}

/// This process's peak resident memory so far (Linux `VmHWM`), for the training log; empty
/// where the kernel does not report it.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| format!("; peak memory {:.0} MiB", kb / 1024.0))
        .unwrap_or_default()
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Vae => "vae",
        Stage::Diffusion => "diffusion",
        Stage::Done => "done",
    }
}

/// Connects this rank to its peers with the collective the rendezvous chose; `None` alone.
fn open_collective(
    a: &Assignment,
    ctx: &JobContext,
    device: Device,
    cfg: &JobConfig,
) -> Result<Option<Box<dyn Collective>>> {
    let membership = Membership {
        job_id: a.job_id.clone(),
        auth_token: a.auth_token.clone(),
        generation: a.generation,
        rank: a.rank as usize,
        world_size: a.world_size as usize,
    };
    match &ctx.peers {
        Peers::Alone if a.world_size <= 1 => Ok(None),
        Peers::Alone => Err(Error::Assignment {
            reason: format!(
                "world size {} but the rendezvous gave no peers",
                a.world_size
            ),
        }),
        Peers::Tcp {
            listener,
            addresses,
        } => {
            let config = TcpConfig {
                io_timeout: std::time::Duration::from_secs(cfg.train.collective_timeout_s),
                ..TcpConfig::default()
            };
            let ring = TcpRing::connect(listener, membership, addresses, config, ctx.stop.clone())?;
            Ok(Some(Box::new(ring)))
        }
        Peers::Nccl { unique_id } => {
            let Device::Cuda(ordinal) = device else {
                return Err(Error::Device {
                    device: format!("{device:?}"),
                    reason: "the job uses NCCL, which needs a CUDA device".into(),
                });
            };
            let nccl = Nccl::new(membership, &NcclUniqueId(unique_id.clone()), ordinal)?;
            Ok(Some(Box::new(nccl)))
        }
    }
}

fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Bytes> {
    let dir = tempfile::tempdir().map_err(|e| Error::Io {
        context: "creating a temporary directory".into(),
        source: e,
    })?;
    let path = dir.path().join("t.safetensors");
    Tensor::write_safetensors(tensors, &path)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::Io {
        context: format!("reading {}", path.display()),
        source: e,
    })?;
    Ok(Bytes::from(bytes))
}

fn read_safetensors(bytes: &Bytes, what: &str) -> Result<Vec<(String, Tensor)>> {
    let dir = tempfile::tempdir().map_err(|e| Error::Io {
        context: "creating a temporary directory".into(),
        source: e,
    })?;
    let path = dir.path().join(what);
    std::fs::write(&path, bytes).map_err(|e| Error::Io {
        context: format!("writing {}", path.display()),
        source: e,
    })?;
    Ok(Tensor::read_safetensors(&path)?)
}

/// Writes the trainer's full state as a checkpoint (rank 0 only).
fn save_checkpoint(
    trainer: &Trainer,
    root: &Location,
    cfg: &JobConfig,
    manifest: &DatasetManifest,
    data_url: &str,
    a: &Assignment,
    ctx: &JobContext,
) -> Result<String> {
    let state = trainer.state();
    ctx.hold_lease(&format!("the checkpoint at step {}", state.global_step))?;
    let files = vec![
        (
            "weights.safetensors".to_string(),
            safetensors_bytes(&trainer.model().named_tensors())?,
        ),
        (
            "optimizer.safetensors".to_string(),
            safetensors_bytes(&trainer.state_tensors())?,
        ),
        ("dataset.json".to_string(), Bytes::from(manifest.to_json())),
        ("config.toml".to_string(), Bytes::from(cfg.to_toml())),
        (
            "state.json".to_string(),
            Bytes::from(serde_json::to_vec_pretty(&state).unwrap_or_default()),
        ),
    ];
    let meta = CheckpointMeta {
        step: state.global_step,
        stage: stage_name(state.stage).to_string(),
        epoch_in_stage: state.epoch_in_stage as u64,
        job_id: a.job_id.clone(),
        generation: a.generation,
        dataset_url: data_url.to_string(),
        dataset_content_hash: manifest.content_hash.clone(),
    };
    let url = block_on(checkpoint::commit(
        root,
        meta,
        files,
        cfg.train.keep_checkpoints,
    ))?;
    tracing::info!("committed checkpoint {url}");
    Ok(url)
}

fn restore(trainer: &mut Trainer, ck: &LoadedCheckpoint) -> Result<()> {
    let weights = read_safetensors(ck.file("weights.safetensors")?, "weights.safetensors")?;
    trainer.model_mut().load_named_tensors(&weights)?;
    let opt = read_safetensors(ck.file("optimizer.safetensors")?, "optimizer.safetensors")?;
    trainer.load_state_tensors(&opt)?;
    let state: TrainState =
        serde_json::from_slice(ck.file("state.json")?).map_err(|e| Error::Checkpoint {
            location: ck.url.clone(),
            reason: format!("state.json: {e}"),
        })?;
    trainer.set_state(state);
    Ok(())
}

/// The device a training job runs on: the job config's explicit device, else the worker's.
pub fn train_device(cfg: &JobConfig, worker_device: &str) -> Result<Device> {
    pick_device(if cfg.train.device == "auto" {
        worker_device
    } else {
        &cfg.train.device
    })
}

/// Runs a training assignment to completion; returns the final checkpoint's URL (rank 0).
pub fn train(a: &Assignment, spec: &TrainSpec, ctx: &JobContext) -> Result<JobOutcome> {
    let cfg = JobConfig::from_toml(&spec.config_toml, "job config")?;
    let device = train_device(&cfg, &ctx.device)?;
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    ctx.progress.send_replace(Progress {
        stage: "loading".into(),
        ..Default::default()
    });
    let data = Location::parse(&spec.data_url)?;
    let manifest = block_on(dataset::load_manifest(&data))?;
    let (mut train, val) = ShardRows::open(&data, &manifest, a, &cfg)?;
    let global_rows = train.global_rows();
    let world = a.world_size.max(1) as usize;
    let streamed = cfg
        .train
        .streams(global_rows as u64, train.group_rows().len());
    tracing::info!(
        "rank {}/{world} training on {global_rows} rows over all ranks ({} held out here; {}{}) on {device:?}",
        a.rank,
        val.rows(),
        if streamed {
            format!(
                "streamed by row group, {} rows at a time",
                cfg.train.shuffle_window_rows
            )
        } else {
            "all in memory".to_string()
        },
        peak_memory()
    );
    let root = Location::parse(&spec.checkpoints_url)?;
    let mut trainer = Trainer::new(&manifest, &cfg.train, &cfg.model, device)?;
    if let Some(ck) = block_on(checkpoint::latest(&root))? {
        if ck.manifest.meta.dataset_content_hash != manifest.content_hash {
            return Err(Error::Checkpoint {
                location: ck.url,
                reason: format!(
                    "it was trained on another dataset ({}); use a fresh --checkpoints location",
                    ck.manifest.meta.dataset_url
                ),
            });
        }
        let ck_cfg = JobConfig::from_checkpoint_toml(
            std::str::from_utf8(ck.file("config.toml")?).unwrap_or_default(),
            &format!("{}/config.toml", ck.url),
        )?;
        if ck_cfg.model.mode != cfg.model.mode {
            return Err(Error::Checkpoint {
                location: ck.url,
                reason: format!(
                    "it holds a {} model and this job trains a {} one; pass --mode {} to go on \
                     with it, or use a fresh --checkpoints location",
                    ck_cfg.model.mode, cfg.model.mode, ck_cfg.model.mode
                ),
            });
        }
        for s in &ck.skipped {
            ctx.event(format!("damaged checkpoint skipped: {s}"));
        }
        restore(&mut trainer, &ck)?;
        tracing::info!(
            "resuming from {} (stage {}, step {})",
            ck.url,
            ck.manifest.meta.stage,
            ck.manifest.meta.step
        );
        if trainer.state().stage == Stage::Done {
            let done = trainer.state().epoch_in_stage;
            if cfg.train.diffusion_epochs() <= done {
                return Err(Error::AlreadyTrained {
                    location: ck.url,
                    epochs: done,
                });
            }
            tracing::info!(
                "continuing the denoiser from epoch {done} to {}",
                cfg.train.diffusion_epochs()
            );
            trainer.continue_diffusion();
        }
    }

    let collective = open_collective(a, ctx, device, &cfg)?;
    let batch = cfg.train.batch_size.max(1);
    let steps_per_epoch =
        (cfg.train.rows_per_epoch(global_rows as u64) as usize).div_ceil(batch * world) as u64;
    // The running epoch (stage, number, of, start), for the per-step progress.
    let epoch_info = Arc::new(std::sync::Mutex::new((
        String::new(),
        0u32,
        0u32,
        Instant::now(),
    )));
    let on_step = {
        let progress = ctx.progress.clone();
        let stop = ctx.stop.clone();
        let info = epoch_info.clone();
        let mut step = 0u64;
        move || -> flowsynth_model::Result<()> {
            if stop.load(Ordering::Relaxed) {
                return Err(flowsynth_model::ModelError::Interrupted);
            }
            step += 1;
            if let Ok(info) = info.lock() {
                let (stage, epoch, epochs, started) = &*info;
                let in_epoch = (step - 1) % steps_per_epoch.max(1) + 1;
                progress.send_modify(|p| {
                    p.stage = stage.clone();
                    p.epoch = *epoch;
                    p.epochs = *epochs;
                    p.step = in_epoch;
                    p.steps_per_epoch = steps_per_epoch;
                    p.rows_per_second = (in_epoch as f64 * (batch * world) as f64)
                        / started.elapsed().as_secs_f64().max(1e-9);
                });
            }
            Ok(())
        }
    };
    let mut replicas = DataParallel::new(
        collective,
        (cfg.train.bucket_mb * 1024.0 * 1024.0) as usize,
        cfg.train.checksum_every,
        on_step,
    );
    let stopped = |e: flowsynth_model::ModelError| -> Error {
        if ctx.stop.load(Ordering::Relaxed) || matches!(e, flowsynth_model::ModelError::Interrupted)
        {
            Error::Stopped
        } else {
            e.into()
        }
    };
    // Seeded initialisation (or the same checkpoint) must give every rank the same state.
    replicas
        .verify_replicas(&trainer.model().named_tensors(), "at start")
        .map_err(stopped)?;

    let mut last_url = String::new();
    loop {
        let stage = trainer
            .settle_from(&mut train, &mut replicas)
            .map_err(stopped)?;
        if stage == Stage::Done {
            break;
        }
        let epochs = trainer.stage_epochs(stage) as u32;
        let epoch = trainer.state().epoch_in_stage as u32 + 1;
        if let Ok(mut info) = epoch_info.lock() {
            *info = (stage_name(stage).to_string(), epoch, epochs, Instant::now());
        }
        if epoch == 1 {
            // No loss of this stage yet: the last one shown belonged to the other stage.
            ctx.progress.send_modify(|p| p.loss = 0.0);
        }
        let report = trainer
            .run_epoch_from(&mut train, &val, &mut replicas)
            .map_err(stopped)?;
        ctx.check_stop()?;
        let when = format!("after {} epoch {epoch}", stage_name(stage));
        replicas
            .verify_replicas(&trainer.model().named_tensors(), &when)
            .map_err(stopped)?;
        ctx.progress.send_modify(|p| {
            p.stage = stage_name(stage).into();
            p.epoch = epoch;
            p.epochs = epochs;
            p.step = steps_per_epoch;
            p.steps_per_epoch = steps_per_epoch;
            p.loss = report.loss;
            p.rows_per_second = report.rows_per_second;
        });
        let in_collectives = replicas.take_collective_time().as_secs_f64();
        let coherence = report
            .coherence
            .map(|c| format!(", cross-modal coherence {c:.4}"))
            .unwrap_or_default();
        tracing::info!(
            "{} epoch {epoch}/{epochs}: loss {:.4}{coherence} ({:.0} rows/s over {world} rank(s); {:.1}% of {:.1} s in collectives{})",
            stage_name(stage),
            report.loss,
            report.rows_per_second,
            100.0 * in_collectives / report.seconds.max(1e-9),
            report.seconds,
            peak_memory(),
        );
        let stage_changed = trainer.state().stage != stage;
        let periodic = (epoch as usize).is_multiple_of(cfg.train.checkpoint_every);
        if a.rank == 0 && (stage_changed || periodic) {
            last_url = save_checkpoint(&trainer, &root, &cfg, &manifest, &spec.data_url, a, ctx)?;
        }
    }
    Ok(JobOutcome {
        result_url: last_url,
        ..Default::default()
    })
}

/// Deletes the objects a failed sampling rank wrote (best effort: the job fails anyway).
fn cleanup(out: &Location, written: &[String]) {
    for o in written {
        if let Some(path) = o.split(':').next() {
            let _ = block_on(out.delete(path));
        }
    }
}

/// Generates this rank's chunks (and, on rank 0 with `with_real`, copies the real rows).
pub fn sample(a: &Assignment, spec: &SampleSpec, ctx: &JobContext) -> Result<JobOutcome> {
    let out = Location::parse(&spec.out_url)?;
    let mut written = Vec::new();
    let result = sample_inner(a, spec, ctx, &out, &mut written);
    // A retryable failure keeps its parts: the job goes on as a new generation, which keeps
    // the finished chunks and may have rewritten them already (same names, same rows).
    if result.as_ref().is_err_and(|e| !e.is_retryable()) {
        cleanup(&out, &written);
    }
    result
}

fn sample_inner(
    a: &Assignment,
    spec: &SampleSpec,
    ctx: &JobContext,
    out: &Location,
    written: &mut Vec<String>,
) -> Result<JobOutcome> {
    ctx.progress.send_replace(Progress {
        stage: "loading".into(),
        ..Default::default()
    });
    let ck = block_on(checkpoint::resolve(&spec.checkpoint_url))?;
    for s in &ck.skipped {
        ctx.event(format!("damaged checkpoint skipped: {s}"));
    }
    if ck.manifest.meta.stage == "vae" {
        return Err(Error::Checkpoint {
            location: ck.url.clone(),
            reason: "it was taken during VAE training and has no trained denoiser; sample from a later checkpoint".into(),
        });
    }
    let ds = ck.dataset()?;
    let layout = Layout::new(&ds)?;
    let cfg = JobConfig::from_checkpoint_toml(
        std::str::from_utf8(ck.file("config.toml")?).unwrap_or_default(),
        &format!("{}/config.toml", ck.url),
    )?;
    let device = pick_device(&ctx.device)?;
    let threads = if spec.threads > 0 {
        spec.threads as usize
    } else {
        cfg.train.threads
    };
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    let mut model = FlowModel::new(&ds, &cfg.model, device, cfg.train.seed)?;
    let weights = read_safetensors(ck.file("weights.safetensors")?, "weights.safetensors")?;
    model.load_named_tensors(&weights)?;
    let classes = ds.classes()?;
    let mut opts = SamplerOptions::new(
        if spec.steps > 0 {
            spec.steps as usize
        } else {
            cfg.model.sampler_steps
        },
        if spec.guidance_scale > 0.0 {
            spec.guidance_scale
        } else {
            cfg.model.guidance_scale
        },
    );
    opts.strength = if spec.strength > 0.0 {
        spec.strength
    } else {
        cfg.model.sampler_strength
    };
    opts.residual = cfg.model.sampler_residual;
    let code_of = |name: &str| -> Result<u32> {
        classes
            .iter()
            .position(|c| c == name)
            .map(|i| i as u32)
            .ok_or_else(|| Error::Assignment {
                reason: format!("class `{name}` is not in the checkpoint's data"),
            })
    };
    let wanted = a
        .chunks
        .iter()
        .map(|c| code_of(&c.class_name))
        .collect::<Result<std::collections::HashSet<u32>>>()?;
    let needs_data = !wanted.is_empty() || (spec.with_real && a.rank == 0);
    let data = if needs_data {
        Some(augment::training_data(
            &ds,
            &ck.manifest.meta.dataset_url,
            &ck.url,
        )?)
    } else {
        None
    };
    let real = match &data {
        Some(data) if !wanted.is_empty() => augment::real_rows(
            &model,
            data,
            &ds,
            &wanted,
            opts.strength < 1.0,
            spec.seed,
            classes,
        )?,
        _ => augment::RealRows::default(),
    };
    let total: u64 = a.chunks.iter().map(|c| c.count).sum();
    let mut done = 0u64;
    let mut drawn_total = 0usize;
    let mut coherence = (0.0, 0u64);
    let started = Instant::now();
    let mut generating = Duration::ZERO;
    for chunk in &a.chunks {
        ctx.check_stop()?;
        let code = code_of(&chunk.class_name)?;
        let generation_started = Instant::now();
        let (rows, drawn, scores) = augment::new_rows(
            &model,
            code,
            chunk.count as usize,
            &real,
            &opts,
            chunk.seed,
            &chunk.class_name,
        )?;
        generating += generation_started.elapsed();
        drawn_total += drawn;
        let (coherence_sum, coherence_rows) = scores
            .map(|c| (c.iter().sum::<f64>(), c.len() as u64))
            .unwrap_or_default();
        coherence.0 += coherence_sum;
        coherence.1 += coherence_rows;
        let flags = vec![true; rows.rows()];
        let bytes = table::write_parquet(&ds, &layout, &rows, &flags, OUTPUT_ROW_GROUP_ROWS)?;
        let name = format!("part-{:05}.parquet", chunk.index);
        ctx.hold_lease(&out.display(&name))?;
        block_on(out.put(&name, bytes))?;
        let output = format!("{name}:{}:true", rows.rows());
        written.push(output.clone());
        ctx.chunk_done(ChunkDone {
            index: chunk.index,
            output,
            coherence_sum,
            coherence_rows,
        });
        done += chunk.count;
        ctx.progress.send_replace(Progress {
            stage: "sampling".into(),
            rows_done: done,
            rows_total: total,
            rows_per_second: done as f64 / started.elapsed().as_secs_f64().max(1e-9),
            ..Default::default()
        });
    }
    if total > 0 {
        tracing::info!(
            "generated {done} rows in {:.2} s ({:.0} rows/s; {} candidates drawn, the others copied training rows) at strength {}",
            generating.as_secs_f64(),
            done as f64 / generating.as_secs_f64().max(1e-9),
            drawn_total,
            opts.strength
        );
    }
    if coherence.1 > 0 {
        tracing::info!(
            "cross-modal coherence of the generated rows: {:.4}",
            coherence.0 / coherence.1 as f64
        );
    }
    let mut real_rows = 0u64;
    if let Some(data) = data.as_ref().filter(|_| spec.with_real && a.rank == 0) {
        for (i, part) in ds.parts.iter().enumerate() {
            ctx.check_stop()?;
            let bytes = block_on(data.get(&part.path))?;
            let t = table::read_parquet(bytes, &ds, &layout, None, &data.display(&part.path))?;
            let flags = vec![false; t.rows()];
            let bytes = table::write_parquet(&ds, &layout, &t, &flags, OUTPUT_ROW_GROUP_ROWS)?;
            let name = format!("real-{i:05}.parquet");
            ctx.hold_lease(&out.display(&name))?;
            block_on(out.put(&name, bytes))?;
            written.push(format!("{name}:{}:false", t.rows()));
            real_rows += t.rows() as u64;
        }
    }
    Ok(JobOutcome {
        result_url: out.url().to_string(),
        outputs: written.clone(),
        rows_written: done + real_rows,
        coherence,
        image_view: model
            .image_layout()
            .map(|l| {
                let pre = model.preprocessor();
                let view = ImageView {
                    side: l.side(),
                    pixels: pre
                        .feature_names()
                        .zip(l.pixel_of())
                        .map(|(n, &p)| (n.to_string(), p))
                        .collect(),
                };
                serde_json::to_string(&view).unwrap_or_default()
            })
            .unwrap_or_default(),
        generation_seconds: generating.as_secs_f64(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn context(lease: Lease) -> JobContext {
        JobContext {
            progress: watch::channel(Progress::default()).0,
            stop: Arc::default(),
            device: "cpu".into(),
            peers: Peers::Alone,
            pending: Arc::default(),
            lease,
        }
    }

    #[test]
    fn writes_wait_for_a_confirmed_generation_and_are_refused_once_the_lease_lapses() {
        let lease = Lease::new(Duration::from_millis(200));
        let ctx = context(lease.clone());
        // Never confirmed: refused after waiting one lease, retryable.
        let started = Instant::now();
        let err = ctx.hold_lease("part-00000.parquet").unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("part-00000.parquet"), "{err}");
        // Confirmed just now: allowed at once.
        lease.confirm(Instant::now());
        let started = Instant::now();
        ctx.hold_lease("x").unwrap();
        assert!(started.elapsed() < Duration::from_millis(100));
        // A confirmation arriving while the write waits lets it go on.
        std::thread::sleep(Duration::from_millis(250));
        let late = lease.clone();
        let confirmer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            late.confirm(Instant::now());
        });
        ctx.hold_lease("x").unwrap();
        confirmer.join().unwrap();
        // An older confirmation never moves the lease back; a stop ends the wait as stopped.
        lease.confirm(Instant::now() - Duration::from_secs(10));
        ctx.hold_lease("x").unwrap();
        lease.reset(None);
        ctx.stop.store(true, Ordering::Relaxed);
        assert!(matches!(ctx.hold_lease("x"), Err(Error::Stopped)));
    }
}
