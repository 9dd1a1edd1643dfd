//! Downstream utility: does adding the synthetic rows help a detector more than the classic
//! oversamplers do?
//!
//! Every detector is trained, per seed, on four versions of the real training split and scored on
//! the untouched real test split:
//!
//! | setting          | training rows                                                      |
//! |------------------|--------------------------------------------------------------------|
//! | `real`           | the real training rows                                             |
//! | `real+synthetic` | + every synthetic row                                              |
//! | `real+ros`       | + random oversampling: real rows of each class drawn with replacement |
//! | `real+smote`     | + SMOTE-NC rows interpolated between real rows of each class       |
//!
//! The three augmented settings add the same number of rows of each class, `n_c` = the synthetic
//! rows of class `c`, so they differ only in where the rows come from. ROS and SMOTE are drawn
//! afresh for every seed; within a seed all four settings use the same detector seed, so their
//! differences are not seed noise.
//!
//! Detectors: a random forest (smartcore trees, [`forest`]), gradient-boosted trees (hessboost,
//! [`boosting`]) and an MLP (tch, [`mlp`]). The tree models see numerics raw and categoricals as
//! codes; the MLP sees log-standardized numerics and one-hot categoricals, scaled on the real
//! training rows. Scores are scikit-learn's, over the classes present in the test split (see
//! [`metrics`]).

mod boosting;
mod forest;
mod metrics;
mod mlp;
mod smote;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use boosting::BoostingOptions;
pub use forest::ForestOptions;
pub use mlp::MlpOptions;
pub use smote::SmoteOptions;

use crate::error::{Error, Result};
use crate::frame::{Encoder, Frame, Matrix, Scaling, Schema, Values, ordinal_matrix};
use crate::report::{ClassResult, DetectorResult, Downstream, SettingResult, Stat};
use crate::stats::par_map;
use metrics::Scores;
use smote::Oversampler;

/// Setting names, in report order.
pub const SETTINGS: [&str; 4] = ["real", "real+synthetic", "real+ros", "real+smote"];

/// A detector family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    #[serde(alias = "rf")]
    RandomForest,
    #[serde(alias = "gbt")]
    GradientBoosting,
    Mlp,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 3] = [
        DetectorKind::RandomForest,
        DetectorKind::GradientBoosting,
        DetectorKind::Mlp,
    ];

    fn stream(self) -> u64 {
        match self {
            DetectorKind::RandomForest => 0,
            DetectorKind::GradientBoosting => 1,
            DetectorKind::Mlp => 2,
        }
    }

    /// The name used in the report and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::RandomForest => "random_forest",
            DetectorKind::GradientBoosting => "gradient_boosting",
            DetectorKind::Mlp => "mlp",
        }
    }
}

impl fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DetectorKind {
    type Err = Error;

    /// Accepts the report names plus the short forms `rf`, `gbt` / `xgb`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "random_forest" | "rf" | "forest" => Ok(DetectorKind::RandomForest),
            "gradient_boosting" | "gbt" | "gbm" | "xgb" | "boosting" => {
                Ok(DetectorKind::GradientBoosting)
            }
            "mlp" => Ok(DetectorKind::Mlp),
            other => Err(Error::Config(format!(
                "unknown detector `{other}` (expected random_forest, gradient_boosting or mlp)"
            ))),
        }
    }
}

/// What to run and how. With the defaults, the 60 fits (3 detectors x 4 settings x 5 seeds) on
/// all of NSL-KDD (126k training rows, 23 classes, 41 features) plus 20k synthetic rows take
/// about 130 CPU-seconds: 85 s on two idle cores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DownstreamOptions {
    /// Repetitions with different seeds; the report gives mean and sample std over them.
    pub seeds: usize,
    /// Seed of the first repetition (repetition `i` uses `seed + i`).
    pub seed: u64,
    pub detectors: Vec<DetectorKind>,
    /// Threads for the forest and the booster. The MLP always trains on one libtorch thread (see
    /// `run`).
    pub threads: usize,
    pub forest: ForestOptions,
    pub boosting: BoostingOptions,
    pub mlp: MlpOptions,
    pub smote: SmoteOptions,
}

impl Default for DownstreamOptions {
    fn default() -> Self {
        DownstreamOptions {
            seeds: 5,
            seed: 0,
            detectors: DetectorKind::ALL.to_vec(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            forest: ForestOptions::default(),
            boosting: BoostingOptions::default(),
            mlp: MlpOptions::default(),
            smote: SmoteOptions::default(),
        }
    }
}

/// The result of [`run`]: the report section plus what a reader must know to interpret it
/// (classes SMOTE or ROS could not serve), for `Report::notes`.
#[derive(Debug, Clone)]
pub struct DownstreamOutput {
    pub downstream: Downstream,
    pub notes: Vec<String>,
}

/// Trains every detector of `opts` on the four settings for every seed and scores them on `test`.
///
/// `synthetic` holds only generated rows, already restricted to the classes to add; its class
/// counts are the `n_c` every augmented setting adds. All frames are coded against `schema`.
pub fn run(
    schema: &Schema,
    train: &Frame,
    test: &Frame,
    synthetic: &Frame,
    opts: &DownstreamOptions,
) -> Result<DownstreamOutput> {
    validate(opts)?;
    for (name, frame) in [
        ("training data", train),
        ("test data", test),
        ("synthetic data", synthetic),
    ] {
        check_frame(schema, name, frame)?;
    }
    for (name, frame) in [("training data", train), ("test data", test)] {
        if frame.rows() == 0 {
            return Err(Error::Empty {
                dataset: name.to_string(),
                detail: " (the downstream test needs both splits)".to_string(),
            });
        }
    }
    let detectors = dedup(&opts.detectors);
    let n_classes = schema.classes.len();
    let per_class = synthetic.class_counts(n_classes);
    let oversampler = Oversampler::new(schema, train, &opts.smote);

    let mut notes = Vec::new();
    for (c, &n) in per_class.iter().enumerate() {
        let name = &schema.classes[c];
        match (n, oversampler.class_rows(c)) {
            (0, _) => {}
            (n, 0) => notes.push(format!(
                "downstream: class `{name}` has no real training rows, so real+ros and real+smote \
                 add none of its {n} rows (real+synthetic adds all of them)"
            )),
            (_, 1) => notes.push(format!(
                "downstream: class `{name}` has a single real training row; SMOTE cannot \
                 interpolate and duplicates it, as ROS does"
            )),
            _ => {}
        }
    }
    let test_counts = test.class_counts(n_classes);
    let eval_classes: Vec<u32> = (0..n_classes as u32)
        .filter(|&c| test_counts[c as usize] > 0)
        .collect();

    let trees = detectors.iter().any(|d| *d != DetectorKind::Mlp);
    let neural = detectors.contains(&DetectorKind::Mlp);
    let ordinal = trees.then(|| Features::new(train, synthetic, test, ordinal_matrix));
    let encoder = neural.then(|| Encoder::fit(schema, train, Scaling::LogStandard));
    let encoded = encoder
        .as_ref()
        .map(|e| Features::new(train, synthetic, test, |f| e.encode(f)));
    // The MLP's matrix products are small (batches of 512 rows): libtorch's OpenMP pool gains
    // little from a second thread on an idle machine and, because its threads spin at every
    // barrier, runs more than ten times slower when another process holds a core (measured on two
    // cores: 2.2 s single-threaded, 1.9 to 33 s with two threads). One thread it is, restored
    // afterwards since the setting is process-wide.
    let _torch_threads = neural.then(|| {
        let restore = TorchThreads(tch::get_num_threads());
        tch::set_num_threads(1);
        restore
    });

    // runs[detector][setting] = (scores, fit seconds) per seed.
    let mut runs: Vec<Vec<Vec<(Scores, f64)>>> =
        vec![vec![Vec::new(); SETTINGS.len()]; detectors.len()];
    let started = Instant::now();
    for s in 0..opts.seeds {
        let base = opts.seed.wrapping_add(s as u64);
        let t = Instant::now();
        let ros = oversampler.random_oversample(&per_class, derive_seed(base, 1));
        let smote = oversampler.smote(schema, &per_class, derive_seed(base, 2), opts.threads);
        tracing::info!(
            seed = s,
            rows = smote.rows(),
            seconds = format!("{:.2}", t.elapsed().as_secs_f64()),
            "downstream: ROS and SMOTE rows drawn"
        );
        let labels = setting_labels(train, synthetic, &ros, &smote);
        let ordinal_sets = ordinal
            .as_ref()
            .map(|f| f.settings(&ros, &ordinal_matrix(&smote)));
        let encoded_sets = match (&encoded, &encoder) {
            (Some(f), Some(e)) => Some(f.settings(&ros, &e.encode(&smote))),
            _ => None,
        };
        // The seed's fits (detector x setting) are independent: they run side by side, each on
        // one thread (up to `threads` at once), which keeps every core busy through the
        // single-threaded MLP fits and the serial parts of the others, and makes each fit's
        // result independent of the thread count.
        let mut fits = Vec::new();
        for (d, &kind) in detectors.iter().enumerate() {
            let (sets, features) = match kind {
                DetectorKind::Mlp => (encoded_sets.as_ref(), encoded.as_ref()),
                _ => (ordinal_sets.as_ref(), ordinal.as_ref()),
            };
            if let (Some(sets), Some(features)) = (sets, features) {
                fits.extend((0..SETTINGS.len()).map(|k| (d, kind, sets, features, k)));
            }
        }
        let done: Vec<Result<(Scores, f64)>> = par_map(fits.len(), opts.threads, |i| {
            let (_, kind, sets, features, k) = fits[i];
            let setting = SETTINGS[k];
            // One stream per detector kind, whichever detectors are chosen; the same for all four
            // settings of a seed.
            let seed = derive_seed(base, 10 + kind.stream());
            let t = Instant::now();
            let (pred, secs) = fit_predict(kind, &sets[k], &labels[k], &features.test, opts, seed)
                .map_err(|reason| Error::Detector {
                    detector: kind.name().to_string(),
                    setting: setting.to_string(),
                    reason,
                })?;
            let scores = metrics::score(&test.labels, &pred, &eval_classes);
            tracing::info!(
                detector = kind.name(),
                setting,
                seed = s,
                rows = labels[k].len(),
                fit_s = format!("{secs:.2}"),
                predict_s = format!("{:.2}", t.elapsed().as_secs_f64() - secs),
                macro_f1 = format!("{:.4}", scores.macro_f1),
                accuracy = format!("{:.4}", scores.accuracy),
                "downstream fit"
            );
            Ok((scores, secs))
        });
        for (&(d, _, _, _, k), result) in fits.iter().zip(done) {
            runs[d][k].push(result?);
        }
    }
    tracing::info!(
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        fits = opts.seeds * detectors.len() * SETTINGS.len(),
        "downstream done"
    );

    let class_name = |c: u32| schema.classes[c as usize].clone();
    // The augmented classes the test split can score (positions in `eval_classes`).
    let rare: Vec<usize> = eval_classes
        .iter()
        .enumerate()
        .filter(|(_, c)| per_class[**c as usize] > 0)
        .map(|(i, _)| i)
        .collect();
    let detectors_out = detectors
        .iter()
        .zip(&runs)
        .map(|(kind, per_setting)| DetectorResult {
            detector: kind.name().to_string(),
            settings: SETTINGS
                .iter()
                .zip(per_setting)
                .map(|(setting, seeds)| {
                    summarize(setting, seeds, &eval_classes, &rare, &class_name)
                })
                .collect(),
        })
        .collect();
    let mut config = BTreeMap::new();
    for kind in &detectors {
        let text = match kind {
            DetectorKind::RandomForest => opts.forest.describe(),
            DetectorKind::GradientBoosting => opts.boosting.describe(),
            DetectorKind::Mlp => opts.mlp.describe(),
        };
        config.insert(kind.name().to_string(), text);
    }
    config.insert(
        "smote".into(),
        format!(
            "SMOTE-NC (imbalanced-learn SMOTENC semantics): k={} nearest same-class neighbours in \
             standardized numeric space, categorical mismatch adds median(std)^2/2; categoricals \
             = neighbours' mode; neighbour search over at most {} random rows per class",
            opts.smote.k, opts.smote.max_candidates
        ),
    );
    config.insert(
        "ros".into(),
        "uniform draws with replacement from the real rows of each class".into(),
    );
    config.insert(
        "seeds".into(),
        format!(
            "{} (first {}), threads {}",
            opts.seeds, opts.seed, opts.threads
        ),
    );
    config.insert(
        "metrics".into(),
        "scikit-learn precision/recall/F1 with zero_division=0 over the classes present in the \
         test split; macro = unweighted mean, weighted = support-weighted mean"
            .into(),
    );
    Ok(DownstreamOutput {
        downstream: Downstream {
            settings: SETTINGS.iter().map(|s| s.to_string()).collect(),
            added_per_class: schema.named_counts(&per_class),
            classes: eval_classes.iter().map(|&c| class_name(c)).collect(),
            rare_classes: rare.iter().map(|&i| class_name(eval_classes[i])).collect(),
            detectors: detectors_out,
            config,
        },
        notes,
    })
}

/// Restores libtorch's process-wide thread count when dropped (also on an early error return).
struct TorchThreads(i32);

impl Drop for TorchThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

/// Training labels of the four settings, in [`SETTINGS`] order: the rows of each setting are the
/// real rows followed by the added ones, as [`Features::settings`] stacks them.
fn setting_labels(train: &Frame, synthetic: &Frame, ros: &[usize], smote: &Frame) -> [Vec<u32>; 4] {
    let ros_labels: Vec<u32> = ros.iter().map(|&i| train.labels[i]).collect();
    [
        train.labels.clone(),
        [train.labels.as_slice(), &synthetic.labels].concat(),
        [train.labels.as_slice(), &ros_labels].concat(),
        [train.labels.as_slice(), &smote.labels].concat(),
    ]
}

/// One feature representation of the inputs: the real training rows, the real + synthetic rows
/// (the same for every seed), and the test rows.
struct Features {
    train: Matrix,
    with_synthetic: Matrix,
    test: Matrix,
}

impl Features {
    fn new(
        train: &Frame,
        synthetic: &Frame,
        test: &Frame,
        encode: impl Fn(&Frame) -> Matrix,
    ) -> Self {
        let train_m = encode(train);
        let with_synthetic = train_m.vstack(&encode(synthetic));
        Features {
            train: train_m,
            with_synthetic,
            test: encode(test),
        }
    }

    /// The four settings' training matrices for one seed, in [`SETTINGS`] order, given that seed's
    /// ROS row indices and its encoded SMOTE rows.
    fn settings(&self, ros: &[usize], smote: &Matrix) -> AugmentedSets<'_> {
        AugmentedSets {
            real: &self.train,
            with_synthetic: &self.with_synthetic,
            with_ros: self.train.vstack(&self.train.select(ros)),
            with_smote: self.train.vstack(smote),
        }
    }
}

struct AugmentedSets<'a> {
    real: &'a Matrix,
    with_synthetic: &'a Matrix,
    with_ros: Matrix,
    with_smote: Matrix,
}

impl std::ops::Index<usize> for AugmentedSets<'_> {
    type Output = Matrix;

    fn index(&self, k: usize) -> &Matrix {
        match k {
            0 => self.real,
            1 => self.with_synthetic,
            2 => &self.with_ros,
            _ => &self.with_smote,
        }
    }
}

/// Fits one detector and predicts the test rows; returns class codes and the fit's seconds.
///
/// Detectors see dense class indices over the classes present in this training set, so classes
/// only the test split has cost no trees or output units; with one class present the prediction
/// is that class.
/// Trains the random forest of `opts` on `train` (ordinal features, as the downstream forest)
/// and predicts the class codes of every frame in `queries`.
pub fn forest_predictions(
    train: &Frame,
    queries: &[Frame],
    opts: &DownstreamOptions,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    let mut all = train.select(&[]);
    for q in queries {
        all.append(q);
    }
    let (pred, _) = fit_predict(
        DetectorKind::RandomForest,
        &ordinal_matrix(train),
        &train.labels,
        &ordinal_matrix(&all),
        opts,
        seed,
    )
    .map_err(|reason| Error::Detector {
        detector: DetectorKind::RandomForest.name().to_string(),
        setting: "class agreement (trained on real rows)".to_string(),
        reason,
    })?;
    let mut rest = pred.as_slice();
    Ok(queries
        .iter()
        .map(|q| {
            let (head, tail) = rest.split_at(q.rows().min(rest.len()));
            rest = tail;
            head.to_vec()
        })
        .collect())
}

fn fit_predict(
    kind: DetectorKind,
    x: &Matrix,
    y: &[u32],
    test: &Matrix,
    opts: &DownstreamOptions,
    seed: u64,
) -> std::result::Result<(Vec<u32>, f64), String> {
    let mut present: Vec<u32> = y.to_vec();
    present.sort_unstable();
    present.dedup();
    let Some(&only) = present.first() else {
        return Err("no training rows".into());
    };
    if present.len() == 1 {
        return Ok((vec![only; test.rows], 0.0));
    }
    let dense_of = |c: u32| present.binary_search(&c).unwrap_or(0) as u32;
    let yd: Vec<u32> = y.iter().map(|&c| dense_of(c)).collect();
    let k = present.len();
    // One thread per fit: `run` runs the fits side by side.
    let threads = 1;
    let started = Instant::now();
    let (pred, secs) = match kind {
        DetectorKind::RandomForest => {
            let model = forest::fit(x, &yd, k, &opts.forest, seed, threads)?;
            let secs = started.elapsed().as_secs_f64();
            (model.predict(test, threads)?, secs)
        }
        DetectorKind::GradientBoosting => {
            let model = boosting::fit(x, &yd, k, &opts.boosting, seed, threads)?;
            let secs = started.elapsed().as_secs_f64();
            (model.predict(test)?, secs)
        }
        DetectorKind::Mlp => {
            let model = mlp::fit(x, &yd, k, &opts.mlp, seed)?;
            let secs = started.elapsed().as_secs_f64();
            (model.predict(test)?, secs)
        }
    };
    let codes = pred
        .into_iter()
        .map(|d| {
            present
                .get(d as usize)
                .copied()
                .ok_or_else(|| format!("predicted class index {d} of {k}"))
        })
        .collect::<std::result::Result<Vec<u32>, String>>()?;
    Ok((codes, secs))
}

fn summarize(
    setting: &str,
    seeds: &[(Scores, f64)],
    classes: &[u32],
    rare: &[usize],
    class_name: &impl Fn(u32) -> String,
) -> SettingResult {
    let stat = |f: &dyn Fn(&Scores) -> f64| Stat::new(seeds.iter().map(|(s, _)| f(s)).collect());
    SettingResult {
        setting: setting.to_string(),
        macro_f1: stat(&|s| s.macro_f1),
        rare_f1: (!rare.is_empty())
            .then(|| stat(&|s| rare.iter().map(|&i| s.f1[i]).sum::<f64>() / rare.len() as f64)),
        weighted_f1: stat(&|s| s.weighted_f1),
        accuracy: stat(&|s| s.accuracy),
        per_class: classes
            .iter()
            .enumerate()
            .map(|(i, &c)| ClassResult {
                class: class_name(c),
                support: seeds.first().map_or(0, |(s, _)| s.support[i]),
                precision: stat(&|s| s.precision[i]),
                recall: stat(&|s| s.recall[i]),
                f1: stat(&|s| s.f1[i]),
            })
            .collect(),
        train_seconds: if seeds.is_empty() {
            0.0
        } else {
            seeds.iter().map(|(_, t)| t).sum::<f64>() / seeds.len() as f64
        },
    }
}

fn validate(opts: &DownstreamOptions) -> Result<()> {
    let bad = |what: &str| Err(Error::Config(format!("downstream: {what}")));
    if opts.seeds == 0 {
        return bad("--seeds must be at least 1");
    }
    if opts.detectors.is_empty() {
        return bad("no detector chosen (random_forest, gradient_boosting, mlp)");
    }
    if opts.threads == 0 {
        return bad("threads must be at least 1");
    }
    if opts.forest.trees == 0 || opts.forest.max_samples == 0 {
        return bad("the forest needs at least one tree and one row per tree");
    }
    if opts.boosting.rounds == 0 {
        return bad("gradient boosting needs at least one round");
    }
    if opts.mlp.epochs == 0 || opts.mlp.batch_size == 0 || opts.mlp.hidden.contains(&0) {
        return bad("the MLP needs at least one epoch, a non-zero batch size and non-empty layers");
    }
    if opts.smote.k == 0 {
        return bad("SMOTE needs k >= 1");
    }
    Ok(())
}

/// The frame agrees with the schema: one column of the right kind per schema column, all of the
/// same length as the labels, and label codes inside the class list.
fn check_frame(schema: &Schema, name: &str, frame: &Frame) -> Result<()> {
    let broken = |why: String| Err(Error::Config(format!("downstream: {name}: {why}")));
    if frame.columns.len() != schema.columns.len() {
        return broken(format!(
            "{} columns, the schema has {}",
            frame.columns.len(),
            schema.columns.len()
        ));
    }
    for (spec, values) in schema.columns.iter().zip(&frame.columns) {
        if spec.is_numeric() != matches!(values, Values::Numeric(_)) || values.len() != frame.rows()
        {
            return broken(format!(
                "column `{}` does not match the schema or the row count",
                spec.name
            ));
        }
    }
    if let Some(&c) = frame
        .labels
        .iter()
        .find(|&&c| c as usize >= schema.classes.len())
    {
        return broken(format!(
            "label code {c} outside the {} classes",
            schema.classes.len()
        ));
    }
    Ok(())
}

fn dedup(kinds: &[DetectorKind]) -> Vec<DetectorKind> {
    let mut out: Vec<DetectorKind> = Vec::new();
    for &k in kinds {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// A seed for stream `stream` of repetition seed `seed` (SplitMix64 of the pair), so that the
/// oversamplers, the detectors and the forest's trees draw independent numbers.
pub(crate) fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
