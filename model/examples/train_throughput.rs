//! Training throughput of the two stages on a converted dataset, for `bench/train_vs_pytorch.sh`.
//!
//! Runs the real [`Trainer`] (the code `flowsynth train` runs, alone, on the CPU) for
//! `--vae-epochs` VAE epochs and `--diffusion-epochs` denoiser epochs over the first `--rows` rows
//! of the dataset, every row once per epoch in a seeded random order, and prints one JSON line per
//! epoch (`stage`, `epoch`, `rows_per_second`, `seconds`, `loss`). With `--dump DIR` it first
//! writes the preprocessed rows and the model's sizes there, so that the PyTorch reference
//! (`bench/train_pytorch.py`) trains the same model on the same numbers.
//!
//! ```text
//! cargo run --release -p flowsynth-model --example train_throughput -- \
//!     --data DATASET_DIR [--rows 16384] [--batch 1024] [--threads 1] \
//!     [--vae-epochs 4] [--diffusion-epochs 4] [--dump DIR]
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};

use flowsynth_common::config::{ModelConfig, TrainConfig};
use flowsynth_common::manifest::{DatasetManifest, MANIFEST_NAME};
use flowsynth_common::store::{Location, block_on};
use flowsynth_common::table::{Layout, Table, read_parquet};
use flowsynth_model::{Alone, Stage, Trainer, reuse_freed_memory};
use tch::{Device, Tensor};

struct Args {
    data: String,
    rows: usize,
    batch: usize,
    threads: i32,
    vae_epochs: usize,
    diffusion_epochs: usize,
    dump: Option<PathBuf>,
}

fn args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        data: String::new(),
        rows: 16_384,
        batch: 1024,
        threads: 1,
        vae_epochs: 4,
        diffusion_epochs: 4,
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data" => a.data = value,
            "--rows" => a.rows = value.parse()?,
            "--batch" => a.batch = value.parse()?,
            "--threads" => a.threads = value.parse()?,
            "--vae-epochs" => a.vae_epochs = value.parse()?,
            "--diffusion-epochs" => a.diffusion_epochs = value.parse()?,
            "--dump" => a.dump = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if a.data.is_empty() {
        return Err("--data DATASET_DIR is required".into());
    }
    Ok(a)
}

/// Every part of the dataset at `dir`, in manifest order.
fn read_dataset(dir: &str) -> Result<(DatasetManifest, Table), Box<dyn Error>> {
    let loc = Location::parse(dir)?;
    let manifest = DatasetManifest::from_json(
        &block_on(loc.get(MANIFEST_NAME))?,
        &loc.display(MANIFEST_NAME),
    )?;
    let layout = Layout::new(&manifest)?;
    let mut table = Table::empty(&layout);
    for part in &manifest.parts {
        let bytes = block_on(loc.get(&part.path))?;
        table.append(&read_parquet(
            bytes,
            &manifest,
            &layout,
            None,
            &loc.display(&part.path),
        )?);
    }
    Ok((manifest, table))
}

/// Writes `t` as raw little-endian values (float32 or int64, as it is).
fn write_raw(path: &Path, t: &Tensor) -> Result<(), Box<dyn Error>> {
    let t = t.contiguous();
    let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, t.numel())?;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// The preprocessed rows (`num.f32`, `cat.i64`, `label.i64`) and `meta.json` for the reference.
fn dump(
    dir: &Path,
    trainer: &Trainer,
    table: &Table,
    train: &TrainConfig,
) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let model = trainer.model();
    let batch = model.preprocessor().encode(table, Device::Cpu)?;
    write_raw(&dir.join("num.f32"), &batch.num)?;
    write_raw(&dir.join("cat.i64"), &batch.cat)?;
    write_raw(&dir.join("label.i64"), &batch.label)?;
    let c = model.config();
    let meta = serde_json::json!({
        "rows": table.rows(),
        "n_num": model.preprocessor().n_num(),
        "cardinalities": model.preprocessor().cardinalities(),
        "classes": model.classes(),
        "d_token": c.d_token,
        "n_heads": c.n_heads,
        "ffn_dim": c.ffn_dim,
        "n_layers": c.n_layers,
        "vae_lr": c.vae_lr,
        "vae_weight_decay": c.vae_weight_decay,
        "beta": c.beta_max,
        "denoiser_width": c.denoiser_width,
        "diffusion_lr": c.diffusion_lr,
        "label_dropout": c.label_dropout,
        "batch": train.batch_size,
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let a = args()?;
    // As a worker does.
    reuse_freed_memory();
    tch::set_num_threads(a.threads);
    let (manifest, all) = read_dataset(&a.data)?;
    let rows = a.rows.min(all.rows());
    let table = all.select(&(0..rows).collect::<Vec<_>>());
    let train = TrainConfig {
        seed: 1,
        batch_size: a.batch,
        epochs: a.vae_epochs,
        diffusion_epochs: Some(a.diffusion_epochs),
        // Every row once per epoch in a random order: what the reference's randperm does.
        class_balance: 0.0,
        epoch_rows: 0,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&manifest, &train, &ModelConfig::default(), Device::Cpu)?;
    if let Some(dir) = &a.dump {
        dump(dir, &trainer, &table, &train)?;
    }
    let layout = Layout::new(&manifest)?;
    let val = Table::empty(&layout);
    while trainer.settle(&table, &mut Alone)? != Stage::Done {
        let r = trainer.run_epoch(&table, &val, &mut Alone)?;
        let stage = match r.stage {
            Stage::Vae => "vae",
            _ => "diffusion",
        };
        println!(
            "{}",
            serde_json::json!({
                "impl": "flowsynth",
                "stage": stage,
                "epoch": r.epoch,
                "rows": r.rows,
                "threads": a.threads,
                "seconds": r.seconds,
                "rows_per_second": r.rows_per_second,
                "loss": r.loss,
            })
        );
    }
    Ok(())
}
