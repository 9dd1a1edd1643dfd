//! `report.json`: every figure `flowsynth eval` computes, in one serialisable structure. The HTML
//! report and the plots are rendered from it (plus the raw columns for the distribution plots).
//!
//! Scores follow SDMetrics / synthcity conventions: 1.0 is best for `shape`, `trend`, column and
//! pair scores, `detection` and validity; `alpha_precision` and `beta_recall` are the Delta
//! summaries (1.0 = the synthetic data covers the real data's quantile regions exactly);
//! `authenticity` is the share of synthetic rows that are not copies-in-effect of a training row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format_version: u32,
    pub inputs: Inputs,
    /// The answer a user needs first, in plain words: do the synthetic rows help the rare-class
    /// detection, and do they beat SMOTE? (`None` without the downstream stage.)
    pub verdict: Option<Verdict>,
    /// SDMetrics QualityReport "Column Shapes" on (real training data, synthetic data) as they
    /// are, the label column included: the mean of the defined column scores.
    pub shape: Option<f64>,
    /// SDMetrics QualityReport "Column Pair Trends" on the same two tables: the mean of the
    /// defined pair scores.
    pub trend: Option<f64>,
    /// The column scores behind `shape` (the label column included).
    pub columns: Vec<ColumnScore>,
    /// The pair scores behind `trend`.
    pub pairs: Vec<PairScore>,
    /// Shape and trend against real rows drawn per class in the synthetic proportions (`None`
    /// when the class mixes already agree): the flows compared, not the class mix.
    pub class_matched: Option<ClassMatched>,
    /// Per class of the synthetic set: fidelity, class agreement and copies, each next to what
    /// real held-out rows of the class score.
    pub per_class: Vec<ClassFidelity>,
    /// Columns left out of `shape`/`trend` and why (constant in the real data, ...).
    pub skipped: Vec<Skipped>,
    pub alpha_precision: Option<f64>,
    pub beta_recall: Option<f64>,
    pub authenticity: Option<f64>,
    /// The alpha / beta curves behind the two Delta scores.
    pub quality_curves: Option<QualityCurves>,
    pub detection: Option<Detection>,
    pub dcr: Option<Dcr>,
    pub validity: Validity,
    pub downstream: Option<Downstream>,
    /// A multimodal model's rows as its images: mean image per class, real vs synthetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_view: Option<crate::image_view::ImageViewReport>,
    /// Subsampling and other choices a reader must know to interpret the numbers.
    pub notes: Vec<String>,
    /// Wall-clock seconds per stage.
    pub timings: BTreeMap<String, f64>,
}

/// Fidelity against a class-matched real reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassMatched {
    pub shape: Option<f64>,
    pub trend: Option<f64>,
    /// Real rows in the reference.
    pub reference_rows: usize,
    /// Total variation between the real and the synthetic class mix before matching.
    pub mix_difference: f64,
    /// What remains after matching (classes with too few real rows).
    pub remaining_mix_difference: f64,
}

/// One class of the synthetic set against the real rows of the same class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassFidelity {
    pub class: String,
    pub train_rows: usize,
    pub synthetic_rows: usize,
    /// Real held-out rows of the class (test split or `--holdout`).
    pub holdout_rows: usize,
    /// Shape / trend of the synthetic rows of the class against its real training rows.
    pub shape: Option<f64>,
    pub trend: Option<f64>,
    /// LogisticDetection score (1 = indistinguishable) and mean AUC, synthetic vs real rows of
    /// the class.
    pub detection: Option<f64>,
    pub detection_auc: Option<f64>,
    /// The same figures for the real held-out rows of the class: the ceiling a generator can
    /// reach.
    pub holdout_shape: Option<f64>,
    pub holdout_trend: Option<f64>,
    pub holdout_detection: Option<f64>,
    pub holdout_detection_auc: Option<f64>,
    /// Share of the synthetic rows of the class that a random forest trained on real training
    /// rows assigns to the class, and the same share for its real held-out rows.
    pub agreement: Option<f64>,
    pub holdout_agreement: Option<f64>,
    /// Share of the synthetic rows of the class that equal a real training row feature for
    /// feature, and the same share for its real held-out rows (captures full of duplicates have
    /// a high baseline).
    pub copy_rate: Option<f64>,
    pub holdout_copy_rate: Option<f64>,
}

/// The headline verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// True when real+synthetic beats real-only and real+SMOTE on the rare-class F1 for every
    /// detector.
    pub helps: bool,
    /// One sentence per detector, then the overall advice.
    pub lines: Vec<String>,
}

/// The three datasets and what was used of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inputs {
    pub train: DatasetInfo,
    pub test: DatasetInfo,
    pub synthetic: DatasetInfo,
    /// Classes the synthetic data was restricted to (`--augment-only`), empty = all.
    pub augment_only: Vec<String>,
    pub seeds: usize,
    pub label_column: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub url: String,
    /// Rows used (for the synthetic set: generated rows only, after `--augment-only`).
    pub rows: usize,
    /// Rows per class name.
    pub class_counts: BTreeMap<String, usize>,
}

/// One column's marginal-distribution score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnScore {
    pub column: String,
    /// `KSComplement` or `TVComplement`.
    pub metric: String,
    /// None (JSON null) when the metric is undefined (see `Report::skipped`).
    pub score: Option<f64>,
}

/// One column pair's dependence score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairScore {
    pub a: String,
    pub b: String,
    /// `CorrelationSimilarity` or `ContingencySimilarity`.
    pub metric: String,
    pub score: Option<f64>,
    /// Pearson r on the real / synthetic data (CorrelationSimilarity only).
    pub real: Option<f64>,
    pub synthetic: Option<f64>,
    /// The real data's dependence: |Pearson r| or Cramér's V.
    pub real_association: Option<f64>,
    /// Whether the pair counts in `trend`: its real dependence exceeds QualityReport's threshold
    /// (|r| > 0.5, Cramér's V > 0.3).
    pub counted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub column: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QualityCurves {
    pub alphas: Vec<f64>,
    pub alpha_precision: Vec<f64>,
    pub beta_recall: Vec<f64>,
    /// Rows of each side the curves were computed on (after subsampling).
    pub real_rows: usize,
    pub synthetic_rows: usize,
}

/// Classifier two-sample test (SDMetrics LogisticDetection).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Detection {
    /// 1 - (2 * max(AUC, 0.5) - 1), averaged over folds: 1.0 = indistinguishable.
    pub score: f64,
    pub auc_per_fold: Vec<f64>,
    pub folds: usize,
    pub real_rows: usize,
    pub synthetic_rows: usize,
}

/// Distance to closest record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dcr {
    /// Share of synthetic rows strictly closer to a training row than to any holdout row (ties
    /// count half). About 0.5 when the generator did not memorise its training data.
    pub share_closer_to_train: f64,
    /// SDMetrics DCROverfittingProtection: min(1, 2 * (1 - share)).
    pub score: f64,
    /// Median distance of a synthetic row to its closest training row.
    pub median_dcr_train: f64,
    /// Median distance of a synthetic row to its closest holdout row.
    pub median_dcr_holdout: f64,
    pub synthetic_rows: usize,
    pub reference_rows: usize,
    /// Where the holdout came from.
    pub holdout: String,
}

/// Domain validity of the synthetic rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validity {
    /// Share of synthetic rows that satisfy every constraint.
    pub share_valid_rows: f64,
    /// Same share measured on the real training rows (1.0 by construction unless a constraint
    /// tolerates rare real exceptions).
    pub real_share_valid_rows: f64,
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Constraint {
    /// `non_negative`, `integer`, `binary_flag`, `unit_interval`, `known_category`, `ordered`.
    pub kind: String,
    pub columns: Vec<String>,
    /// Human-readable statement, e.g. "`Fwd Packet Length Min` <= `Fwd Packet Length Mean`".
    pub description: String,
    /// Share of synthetic rows satisfying it.
    pub synthetic_share: f64,
    pub real_share: f64,
}

/// Mean and sample standard deviation over seeds, plus the per-seed values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub values: Vec<f64>,
}

impl Stat {
    pub fn new(values: Vec<f64>) -> Stat {
        let n = values.len() as f64;
        let mean = if values.is_empty() {
            f64::NAN
        } else {
            values.iter().sum::<f64>() / n
        };
        let std = if values.len() < 2 {
            0.0
        } else {
            (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Stat { mean, std, values }
    }
}

/// Downstream detection utility.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Downstream {
    /// Setting names in report order: `real`, `real+synthetic`, `real+ros`, `real+smote`.
    pub settings: Vec<String>,
    /// Rows added per class name in every augmented setting (the same for all of them).
    pub added_per_class: BTreeMap<String, usize>,
    /// Classes scored: those present in the test split, in schema order.
    pub classes: Vec<String>,
    /// The augmented classes that the test split holds: the rare-class F1 is their mean F1.
    pub rare_classes: Vec<String>,
    pub detectors: Vec<DetectorResult>,
    /// Hyper-parameters and encodings of the detectors, for the record.
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorResult {
    /// `random_forest`, `gradient_boosting`, `mlp`.
    pub detector: String,
    pub settings: Vec<SettingResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingResult {
    pub setting: String,
    pub macro_f1: Stat,
    /// Mean test F1 of `Downstream::rare_classes` (per seed, then mean and std); `None` when the
    /// test split holds none of them.
    pub rare_f1: Option<Stat>,
    pub weighted_f1: Stat,
    pub accuracy: Stat,
    pub per_class: Vec<ClassResult>,
    /// Mean training seconds per seed.
    pub train_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassResult {
    pub class: String,
    /// Rows of this class in the test split.
    pub support: usize,
    pub precision: Stat,
    pub recall: Stat,
    pub f1: Stat,
}

/// Version of the `report.json` layout.
pub const REPORT_FORMAT_VERSION: u32 = 2;
