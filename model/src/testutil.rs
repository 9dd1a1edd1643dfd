//! Hand-made datasets for the model's tests: a manifest computed from an in-memory [`Table`]
//! the way `convert` would (quantiles at i/(n-1), vocabularies, class counts).

use std::collections::BTreeMap;

use flowsynth_common::config::{ModelConfig, ModelMode, TrainConfig};
use flowsynth_common::manifest::{
    ColumnInfo, ColumnRole, DType, DatasetManifest, MANIFEST_FORMAT_VERSION, NonFinitePolicy,
    NumericStats, PartInfo, RowDrops, SourceInfo,
};
use flowsynth_common::table::Table;

use super::rng::{Stream, derive};

/// numpy-style linear-interpolation quantiles at probabilities i/(n-1).
pub fn quantiles(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n_q = (values.len() / 30).clamp(10, 1000);
    (0..n_q)
        .map(|i| {
            let pos = i as f64 / (n_q - 1) as f64 * (sorted.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(sorted.len() - 1);
            sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
        })
        .collect()
}

/// A manifest describing `table`: numeric columns `n0..`, categorical `c0..` with `cat_sizes`
/// values each, and a label `label` with `classes` classes.
pub fn manifest_for(
    table: &Table,
    int_columns: &[usize],
    cat_sizes: &[usize],
    classes: usize,
) -> DatasetManifest {
    let mut columns = Vec::new();
    for (i, col) in table.numeric.iter().enumerate() {
        let n = col.len() as f64;
        let mean = col.iter().sum::<f64>() / n;
        let std = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let q = quantiles(col);
        columns.push(ColumnInfo {
            name: format!("n{i}"),
            source_name: format!("n{i}"),
            role: ColumnRole::Numeric,
            dtype: if int_columns.contains(&i) {
                DType::Int64
            } else {
                DType::Float64
            },
            stats: Some(NumericStats {
                whole_numbers: false,
                min: q[0],
                max: q[q.len() - 1],
                mean,
                std,
                distinct: 0,
                quantiles: q,
            }),
            vocabulary: None,
        });
    }
    for (i, &k) in cat_sizes.iter().enumerate() {
        columns.push(ColumnInfo {
            name: format!("c{i}"),
            source_name: format!("c{i}"),
            role: ColumnRole::Categorical,
            dtype: DType::String,
            stats: None,
            vocabulary: Some((0..k).map(|v| format!("v{v}")).collect()),
        });
    }
    let class_names: Vec<String> = (0..classes).map(|c| format!("class{c}")).collect();
    columns.push(ColumnInfo {
        name: "label".into(),
        source_name: "label".into(),
        role: ColumnRole::Label,
        dtype: DType::String,
        stats: None,
        vocabulary: Some(class_names.clone()),
    });
    let mut class_counts = BTreeMap::new();
    for &l in &table.labels {
        *class_counts
            .entry(class_names[l as usize].clone())
            .or_insert(0u64) += 1;
    }
    let rows = table.rows() as u64;
    DatasetManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        source: SourceInfo {
            preset: "generic".into(),
            files: Vec::new(),
            non_finite_policy: NonFinitePolicy::Drop,
            dedup: false,
            label_rewrites: BTreeMap::new(),
        },
        label_column: "label".into(),
        columns,
        dropped_columns: Vec::new(),
        class_counts,
        total_rows: rows,
        rows_dropped: RowDrops::default(),
        quantile_sample_rows: rows,
        parts: vec![PartInfo {
            path: "part-00000.parquet".into(),
            rows,
            bytes: 0,
            sha256: String::new(),
            row_groups: vec![rows],
        }],
        content_hash: String::new(),
    }
}

/// Two classes told apart by every feature: `n0` ~ N(0, 1) vs N(2, 1); `n1` an integer count
/// (many zeros) around 1 vs 6; `n2` uniform on [0, 10] for both; `c0` (3 values) mostly 0 for
/// class 0 and mostly 2 for class 1.
pub fn two_class_table(rows: usize, seed: u64) -> Table {
    let mut s = Stream::new(derive(seed, &[0xDA7A]));
    let mut t = Table {
        numeric: vec![Vec::new(); 3],
        categorical: vec![Vec::new(); 1],
        labels: Vec::new(),
    };
    for _ in 0..rows {
        let class = u32::from(s.uniform() < 0.5);
        let c = f64::from(class);
        t.numeric[0].push(s.normal() + 2.0 * c);
        t.numeric[1].push((s.normal() * 2.0 + 1.0 + 5.0 * c).max(0.0).round());
        t.numeric[2].push(s.uniform() * 10.0);
        let agree = s.uniform() < 0.85;
        let code = match (class, agree) {
            (0, true) => 0,
            (1, true) => 2,
            _ => 1,
        };
        t.categorical[0].push(code);
        t.labels.push(class);
    }
    t
}

/// The two-class table and its manifest.
pub fn two_class_dataset(rows: usize, seed: u64) -> (Table, DatasetManifest) {
    let t = two_class_table(rows, seed);
    let m = manifest_for(&t, &[1], &[3], 2);
    (t, m)
}

/// A small but real model configuration for CPU tests. Also makes libtorch single-threaded on
/// the calling thread (an OpenMP setting is per thread): models this small run an order of
/// magnitude faster without intra-op threads, and tests already run side by side.
pub fn tiny_model() -> ModelConfig {
    tch::set_num_threads(1);
    ModelConfig {
        d_token: 4,
        n_heads: 1,
        ffn_dim: 32,
        n_layers: 2,
        denoiser_width: 64,
        ..ModelConfig::default()
    }
}

/// [`tiny_model`] in `mode` (a small CNN VAE when multimodal).
pub fn tiny_model_in(mode: ModelMode) -> ModelConfig {
    ModelConfig {
        mode,
        image_latent: 6,
        image_channels: 4,
        ..tiny_model()
    }
}

pub fn tiny_train(epochs: usize, diffusion_epochs: usize) -> TrainConfig {
    TrainConfig {
        seed: 11,
        batch_size: 256,
        epochs,
        diffusion_epochs: Some(diffusion_epochs),
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

/// Mean of `values` over the rows where `labels == class`.
pub fn class_mean(values: &[f64], labels: &[u32], class: u32) -> f64 {
    let (sum, n) = values
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == class)
        .fold((0.0, 0usize), |(s, n), (v, _)| (s + v, n + 1));
    sum / n.max(1) as f64
}
