//! The image view on every real dataset of `../shared/data`: the fitted layout gives each
//! feature its own pixel, and reading a rendered image back returns the preprocessed row
//! exactly (numeric normal scores bit for bit, categorical codes after rounding).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use flowsynth_common::convert::{ConvertOptions, Preset, convert};
use flowsynth_common::store::{Location, block_on};
use flowsynth_common::table::{Layout, read_parquet};
use flowsynth_model::Preprocessor;
use flowsynth_model::image::{ImageLayout, MomentSums, features, pixels_to_codes};
use tch::Device;

fn data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel);
    assert!(p.exists(), "real data not found at {}", p.display());
    p
}

fn check(rel: &str, preset: Preset) {
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
    let cards = pre.cardinalities().to_vec();
    let n = pre.n_num() + pre.n_cat();
    let mut sums = MomentSums::new(n as i64, Device::Cpu).unwrap();
    let mut batches = Vec::new();
    for part in &manifest.parts {
        let bytes = block_on(out.get(&part.path)).unwrap();
        let table = read_parquet(bytes, &manifest, &layout, None, &part.path).unwrap();
        let batch = pre.encode(&table, Device::Cpu).unwrap();
        let features = features(&batch.num, &batch.cat, &cards).unwrap();
        sums.add(&features).unwrap();
        batches.push((batch, features));
    }
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
