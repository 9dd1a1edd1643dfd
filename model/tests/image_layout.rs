//! The image view on every real dataset of `../shared/data`: the fitted layout gives each
//! feature its own pixel, and reading a rendered image back returns the preprocessed row
//! exactly (numeric normal scores bit for bit, categorical codes after rounding).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use flowsynth_common::config::{ModelConfig, ModelMode};
use flowsynth_common::convert::{ConvertOptions, Preset, convert};
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::store::{Location, block_on};
use flowsynth_common::table::{Layout, read_parquet};
use flowsynth_model::image::{ImageLayout, MomentSums, features, pixels_to_codes};
use flowsynth_model::{Adam, AdamConfig, Batch, FlowModel, Preprocessor};
use tch::{Device, Kind, Tensor};

fn data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel);
    assert!(p.exists(), "real data not found at {}", p.display());
    p
}

/// Converts a real file and returns its manifest and the preprocessed batch of each part.
fn converted(rel: &str, preset: Preset) -> (DatasetManifest, Preprocessor, Vec<Batch>) {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let out = Location::parse(dir.path().to_str().unwrap()).unwrap();
    let manifest = convert(
        &[data(rel)],
        &out,
        &ConvertOptions {
            preset,
            ..ConvertOptions::default()
        },
    )
    .unwrap();
    let layout = Layout::new(&manifest).unwrap();
    let pre = Preprocessor::new(&manifest).unwrap();
    let batches = manifest
        .parts
        .iter()
        .map(|part| {
            let bytes = block_on(out.get(&part.path)).unwrap();
            let table = read_parquet(bytes, &manifest, &layout, None, &part.path).unwrap();
            pre.encode(&table, Device::Cpu).unwrap()
        })
        .collect();
    (manifest, pre, batches)
}

fn check(rel: &str, preset: Preset) {
    let (_, pre, batches) = converted(rel, preset);
    let cards = pre.cardinalities().to_vec();
    let n = pre.n_num() + pre.n_cat();
    let mut sums = MomentSums::new(n as i64, Device::Cpu).unwrap();
    let batches: Vec<(Batch, Tensor)> = batches
        .into_iter()
        .map(|batch| {
            let features = features(&batch.num, &batch.cat, &cards).unwrap();
            sums.add(&features).unwrap();
            (batch, features)
        })
        .collect();
    let image = ImageLayout::fit(&sums.correlation().unwrap(), n).unwrap();
    assert_eq!(image.n_features(), n);
    assert_eq!(image.side(), ImageLayout::side_for(n));
    assert!(image.side() * image.side() >= n && (image.side() - 1).pow(2) < n);
    let mut seen = vec![false; image.side() * image.side()];
    for &p in image.pixel_of() {
        assert!(!seen[p], "{rel}: pixel {p} holds two features");
        seen[p] = true;
    }
    for (batch, features) in &batches {
        let back = image.read_back(&image.render(features).unwrap()).unwrap();
        let n_num = pre.n_num() as i64;
        assert!(
            back.narrow(1, 0, n_num).equal(&batch.num),
            "{rel}: numeric values changed"
        );
        let codes = pixels_to_codes(&back.narrow(1, n_num, pre.n_cat() as i64), &cards).unwrap();
        assert!(codes.equal(&batch.cat), "{rel}: categorical codes changed");
    }
}

#[test]
fn nsl_kdd_images_read_back_exactly() {
    check("nsl-kdd/KDDTrain+.txt.gz", Preset::NslKdd);
}

#[test]
fn cic_ids_2017_images_read_back_exactly() {
    check(
        "cic-ids-2017/cicids2017_improved_rnd5000.csv.gz",
        Preset::CicIds2017,
    );
    check(
        "cic-ids-2017/Friday-WorkingHours-Afternoon-DDos.pcap_ISCX.head9998.csv.gz",
        Preset::CicIds2017,
    );
}

#[test]
fn ciciot2023_images_read_back_exactly() {
    check("ciciot2023/CICIoT2023_sample.csv.gz", Preset::CicIot2023);
}

#[test]
fn the_cnn_vae_learns_real_nsl_kdd_images() {
    let (manifest, _, batches) = converted("nsl-kdd/KDDTrain+.txt.gz", Preset::NslKdd);
    let cfg = ModelConfig {
        mode: ModelMode::Multimodal,
        image_channels: 8,
        ..ModelConfig::default()
    };
    let mut model = FlowModel::new(&manifest, &cfg, Device::Cpu, 0).unwrap();
    let sums = model
        .image_moments(&mut batches.iter().map(|b| {
            Ok(Batch {
                num: b.num.shallow_clone(),
                cat: b.cat.shallow_clone(),
                label: b.label.shallow_clone(),
            })
        }))
        .unwrap();
    model.fit_image_layout(&sums).unwrap();
    let subset = batches[0]
        .select(&Tensor::arange(2000, (Kind::Int64, Device::Cpu)))
        .unwrap();
    let images = model.render(&subset.num, &subset.cat).unwrap();
    let mask = model.image_layout().unwrap().mask(Device::Cpu).unwrap();
    let cnn = model.cnn().unwrap();
    let params = model
        .vae_params()
        .into_iter()
        .filter(|(n, _)| n.starts_with("image.cnn."))
        .collect();
    let mut opt = Adam::new(params, AdamConfig::new(1e-3, 0.0)).unwrap();
    let mut mse = |train: bool| {
        opt.zero_grad();
        let loss = cnn.loss(&images, &mask, 1e-2, None).unwrap();
        if train {
            loss.total.backward();
            opt.step().unwrap();
        }
        loss.mse.double_value(&[])
    };
    let before = mse(false);
    for _ in 0..40 {
        mse(true);
    }
    let after = mse(false);
    assert!(after < 0.6 * before, "pixel MSE {before} -> {after}");
}
