//! What a worker does with an assignment: train (read its shards, run the two training stages,
//! commit checkpoints) or sample (generate its chunks, write Parquet parts).
//!
//! Both run on a blocking thread (libtorch computes synchronously); they talk to the async side
//! through a `watch` channel of progress (latest value wins) and a stop flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use flowsynth_common::checkpoint::{self, CheckpointMeta, LoadedCheckpoint, sha256_hex};
use flowsynth_common::config::JobConfig;
use flowsynth_common::dataset;
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::store::{Location, block_on};
use flowsynth_common::table::{self, Layout, Table};
use flowsynth_proto::{Assignment, Progress, SampleSpec, TrainSpec};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tch::{Device, Tensor};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::model::{FlowModel, Stage, TrainState, Trainer};

/// Rows per row group in sampled output.
const OUTPUT_ROW_GROUP_ROWS: usize = 65_536;

/// Shared between a running job and the worker loop.
#[derive(Clone)]
pub struct JobContext {
    pub progress: watch::Sender<Progress>,
    pub stop: Arc<AtomicBool>,
    /// Device preference of this worker (`auto`, `cpu`, `cuda`, `cuda:N`); a job config's
    /// explicit device wins.
    pub device: String,
}

impl JobContext {
    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }
}

/// What a finished job reports.
#[derive(Debug, Clone, Default)]
pub struct JobOutcome {
    pub result_url: String,
    /// Sampling: `path:rows:synthetic` per part written.
    pub outputs: Vec<String>,
    pub rows_written: u64,
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

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Vae => "vae",
        Stage::Diffusion => "diffusion",
        Stage::Done => "done",
    }
}

/// Reads the row groups assigned to this rank, verifying each part against the manifest.
fn read_shards(data: &Location, manifest: &DatasetManifest, a: &Assignment) -> Result<Table> {
    let layout = Layout::new(manifest)?;
    let mut table = Table::empty(&layout);
    for shard in &a.shards {
        let part = manifest
            .parts
            .iter()
            .find(|p| p.path == shard.part_path)
            .ok_or_else(|| Error::Assignment {
                reason: format!("part `{}` is not in the dataset manifest", shard.part_path),
            })?;
        let bytes = block_on(data.get(&part.path))?;
        if sha256_hex(&bytes) != part.sha256 {
            return Err(flowsynth_common::Error::InvalidPart {
                location: data.display(&part.path),
                reason: "content does not match its sha256 in dataset.json (modified or corrupt)"
                    .into(),
            }
            .into());
        }
        let groups = shard.row_groups.iter().map(|&g| g as usize).collect();
        let t = table::read_parquet(
            bytes,
            manifest,
            &layout,
            Some(groups),
            &data.display(&part.path),
        )?;
        table.append(&t);
    }
    Ok(table)
}

/// Splits rows into (train, validation) with a seeded shuffle, after an optional cap.
fn split_rows(table: &Table, cfg: &JobConfig, world: usize) -> (Table, Table) {
    let mut idx: Vec<usize> = (0..table.rows()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.train.seed ^ 0x5EED_DA7A);
    idx.shuffle(&mut rng);
    if cfg.train.max_rows > 0 {
        let cap = (cfg.train.max_rows as usize).div_ceil(world.max(1));
        idx.truncate(cap);
    }
    let n_val = ((idx.len() as f64) * cfg.train.validation_fraction).round() as usize;
    let n_val = n_val.min(idx.len().saturating_sub(1));
    let (val, train) = idx.split_at(n_val);
    let mut train = train.to_vec();
    // Keep the training rows in dataset order: the trainer shuffles per epoch itself.
    train.sort_unstable();
    (table.select(&train), table.select(val))
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
    job_id: &str,
) -> Result<String> {
    let state = trainer.state();
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
        job_id: job_id.to_string(),
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

/// Runs a training assignment to completion; returns the final checkpoint's URL.
pub fn train(a: &Assignment, spec: &TrainSpec, ctx: &JobContext) -> Result<JobOutcome> {
    let cfg = JobConfig::from_toml(&spec.config_toml, "job config")?;
    let device = pick_device(if cfg.train.device == "auto" {
        &ctx.device
    } else {
        &cfg.train.device
    })?;
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    if a.world_size != 1 {
        return Err(Error::Assignment {
            reason: format!(
                "this worker runs single-rank training only (world size {} requested)",
                a.world_size
            ),
        });
    }
    ctx.progress.send_replace(Progress {
        stage: "loading".into(),
        ..Default::default()
    });
    let data = Location::parse(&spec.data_url)?;
    let manifest = block_on(dataset::load_manifest(&data))?;
    let rows = read_shards(&data, &manifest, a)?;
    let (train_rows, val_rows) = split_rows(&rows, &cfg, a.world_size as usize);
    tracing::info!(
        "rank {} training on {} rows ({} held out) on {device:?}",
        a.rank,
        train_rows.rows(),
        val_rows.rows()
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
        restore(&mut trainer, &ck)?;
        tracing::info!(
            "resuming from {} (stage {}, step {})",
            ck.url,
            ck.manifest.meta.stage,
            ck.manifest.meta.step
        );
        if trainer.state().stage == Stage::Done {
            return Ok(JobOutcome {
                result_url: ck.url,
                ..Default::default()
            });
        }
    }

    let batch = cfg.train.batch_size.max(1);
    let steps_per_epoch = train_rows.rows().div_ceil(batch) as u64;
    let mut last_url = String::new();
    while trainer.state().stage != Stage::Done {
        let stage = trainer.state().stage;
        let epochs = match stage {
            Stage::Vae => cfg.train.epochs,
            _ => cfg.train.diffusion_epochs(),
        } as u32;
        let epoch = trainer.state().epoch_in_stage as u32 + 1;
        let started = Instant::now();
        let mut step = 0u64;
        let progress = ctx.progress.clone();
        let stop = ctx.stop.clone();
        let mut hook = |_grads: &[Tensor]| -> crate::model::Result<()> {
            step += 1;
            if stop.load(Ordering::Relaxed) {
                return Err(crate::model::ModelError::Interrupted);
            }
            progress.send_modify(|p| {
                p.stage = stage_name(stage).into();
                p.epoch = epoch;
                p.epochs = epochs;
                p.step = step;
                p.steps_per_epoch = steps_per_epoch;
                p.rows_per_second =
                    (step as f64 * batch as f64) / started.elapsed().as_secs_f64().max(1e-9);
            });
            Ok(())
        };
        let report = match trainer.run_epoch(&train_rows, &val_rows, &mut hook) {
            Err(crate::model::ModelError::Interrupted) => return Err(Error::Stopped),
            other => other?,
        };
        ctx.check_stop()?;
        ctx.progress.send_modify(|p| {
            p.stage = stage_name(stage).into();
            p.epoch = epoch;
            p.epochs = epochs;
            p.step = steps_per_epoch;
            p.steps_per_epoch = steps_per_epoch;
            p.loss = report.loss;
            p.rows_per_second = report.rows_per_second;
        });
        tracing::info!(
            "{} epoch {epoch}/{epochs}: loss {:.4} ({:.0} rows/s)",
            stage_name(stage),
            report.loss,
            report.rows_per_second
        );
        let stage_changed = trainer.state().stage != stage;
        let periodic = (epoch as usize).is_multiple_of(cfg.train.checkpoint_every);
        if a.rank == 0 && (stage_changed || periodic) {
            last_url =
                save_checkpoint(&trainer, &root, &cfg, &manifest, &spec.data_url, &a.job_id)?;
        }
    }
    Ok(JobOutcome {
        result_url: last_url,
        ..Default::default()
    })
}

/// Deletes the objects a failed sampling rank wrote (best effort: the job failed anyway).
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
    if result.is_err() {
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
    if ck.manifest.meta.stage == "vae" {
        return Err(Error::Checkpoint {
            location: ck.url.clone(),
            reason: "it was taken during VAE training and has no trained denoiser; sample from a later checkpoint".into(),
        });
    }
    let ds = ck.dataset()?;
    let layout = Layout::new(&ds)?;
    let cfg = JobConfig::from_toml(
        std::str::from_utf8(ck.file("config.toml")?).unwrap_or_default(),
        &format!("{}/config.toml", ck.url),
    )?;
    let device = pick_device(&ctx.device)?;
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    let mut model = FlowModel::new(&ds, &cfg.model, device, cfg.train.seed)?;
    let weights = read_safetensors(ck.file("weights.safetensors")?, "weights.safetensors")?;
    model.load_named_tensors(&weights)?;
    let classes = ds.classes()?;
    let steps = if spec.steps > 0 {
        spec.steps as usize
    } else {
        cfg.model.sampler_steps
    };
    let guidance = if spec.guidance_scale > 0.0 {
        spec.guidance_scale
    } else {
        cfg.model.guidance_scale
    };
    let total: u64 = a.chunks.iter().map(|c| c.count).sum();
    let mut done = 0u64;
    let started = Instant::now();
    for chunk in &a.chunks {
        ctx.check_stop()?;
        let code = classes
            .iter()
            .position(|c| c == &chunk.class_name)
            .ok_or_else(|| Error::Assignment {
                reason: format!(
                    "class `{}` is not in the checkpoint's data",
                    chunk.class_name
                ),
            })? as u32;
        let labels = vec![code; chunk.count as usize];
        let rows = model.sample(&labels, steps, guidance, chunk.seed)?;
        let flags = vec![true; rows.rows()];
        let bytes = table::write_parquet(&ds, &layout, &rows, &flags, OUTPUT_ROW_GROUP_ROWS)?;
        let name = format!("part-{:05}.parquet", chunk.index);
        block_on(out.put(&name, bytes))?;
        written.push(format!("{name}:{}:true", rows.rows()));
        done += chunk.count;
        ctx.progress.send_replace(Progress {
            stage: "sampling".into(),
            rows_done: done,
            rows_total: total,
            rows_per_second: done as f64 / started.elapsed().as_secs_f64().max(1e-9),
            ..Default::default()
        });
    }
    let mut real_rows = 0u64;
    if spec.with_real && a.rank == 0 {
        let data = Location::parse(&ck.manifest.meta.dataset_url)?;
        let current = block_on(dataset::load_manifest(&data))?;
        if current.content_hash != ds.content_hash {
            return Err(Error::Checkpoint {
                location: ck.url.clone(),
                reason: format!(
                    "its training data at {} has changed since training (content hash differs)",
                    ck.manifest.meta.dataset_url
                ),
            });
        }
        for (i, part) in ds.parts.iter().enumerate() {
            ctx.check_stop()?;
            let bytes = block_on(data.get(&part.path))?;
            let t = table::read_parquet(bytes, &ds, &layout, None, &data.display(&part.path))?;
            let flags = vec![false; t.rows()];
            let bytes = table::write_parquet(&ds, &layout, &t, &flags, OUTPUT_ROW_GROUP_ROWS)?;
            let name = format!("real-{i:05}.parquet");
            block_on(out.put(&name, bytes))?;
            written.push(format!("{name}:{}:false", t.rows()));
            real_rows += t.rows() as u64;
        }
    }
    Ok(JobOutcome {
        result_url: out.url().to_string(),
        outputs: written.clone(),
        rows_written: done + real_rows,
    })
}
