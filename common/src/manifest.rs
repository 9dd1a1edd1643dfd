//! The dataset manifest (`_dataset.json`): the contract between `convert` and everything after it.
//!
//! A dataset is a directory (or object-store prefix) holding Parquet part files and this manifest.
//! The manifest is written last, so a dataset exists only once it is complete. Everything the
//! model needs to preprocess the data identically on every worker lives here: statistics are
//! fitted once over the whole dataset, never per shard.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the manifest object inside a dataset prefix. The leading underscore makes Parquet
/// readers that open the folder as a dataset (pyarrow, pandas, polars, DuckDB, Spark) skip it, as
/// they skip `_SUCCESS` and `_sample.json`.
pub const MANIFEST_NAME: &str = "_dataset.json";
/// The manifest's name before it was `_dataset.json`; datasets written under it are still read
/// (and replaced by `convert --overwrite`).
pub const LEGACY_MANIFEST_NAME: &str = "dataset.json";
/// Version of the manifest layout; bumped on incompatible changes.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Name of the boolean column that `sample` adds to mark generated rows.
pub const SYNTHETIC_COLUMN: &str = "synthetic";

/// What a kept column is to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnRole {
    /// Continuous or count feature; modelled through the normal-quantile transform.
    Numeric,
    /// Discrete feature; modelled through an ordinal code into `vocabulary`.
    Categorical,
    /// The class label (exactly one per dataset); the model is conditioned on it.
    Label,
}

/// Physical type of a column in the Parquet parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    Int64,
    Float64,
    String,
}

impl DType {
    pub fn arrow(self) -> DataType {
        match self {
            DType::Int64 => DataType::Int64,
            DType::Float64 => DataType::Float64,
            DType::String => DataType::Utf8,
        }
    }
}

/// Statistics of a numeric column, fitted over the whole dataset (after row cleaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Number of distinct values seen, capped at `distinct_cap` (then "at least").
    pub distinct: u64,
    /// Empirical quantiles at probabilities `i / (n-1)`, `i = 0..n`, with
    /// `n = clamp(rows / 30, 10, 1000)` (the QuantileTransformer rule TabSyn uses). Non-decreasing;
    /// the first is `min` and the last is `max`. Computed from a uniform row sample of at most
    /// `quantile_sample_rows` rows (see [`DatasetManifest::quantile_sample_rows`]).
    pub quantiles: Vec<f64>,
    /// Every value is a whole number, also in a `float64` column whose source writes `592.0`
    /// (CICIoT2023 does): generated values of such a column are rounded. Absent in manifests
    /// written before this field existed (read as false).
    #[serde(default)]
    pub whole_numbers: bool,
}

/// One kept column, in Parquet column order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Column name in the Parquet parts (the source header, trimmed; de-duplicated with a
    /// `_2`, `_3`, ... suffix when the source repeats a name).
    pub name: String,
    /// The header exactly as the source wrote it (or the preset's standard name when the source
    /// has no header).
    pub source_name: String,
    pub role: ColumnRole,
    pub dtype: DType,
    /// Numeric columns only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<NumericStats>,
    /// Categorical and label columns: the distinct values in sorted order (as text; an `int64`
    /// categorical's values are decimal integers). The ordinal code of a value is its index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<Vec<String>>,
}

/// Why a source column is not in the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DropReason {
    /// The user named it in `--drop`.
    User,
    /// The preset knows it is not a feature (difficulty score, identifiers, the unused label).
    Preset { why: String },
    /// An identifier (IP address, port, flow id, timestamp) that a model must not learn.
    Identifier,
    /// Every kept row holds the same value.
    Constant { value: String },
    /// A second label column that was not chosen as the label.
    OtherLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedColumn {
    pub name: String,
    pub reason: DropReason,
}

/// One Parquet part file of the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// Path relative to the dataset prefix, e.g. `part-00000.parquet`.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
    /// Rows in each row group (row groups are the unit of sharding).
    pub row_groups: Vec<u64>,
}

/// What to do with a row whose numeric field is NaN or +-Infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Drop the row and count it (the default: such rows are extractor artefacts).
    #[default]
    Drop,
    /// Replace the value with 0.
    Zero,
    /// Stop with an error naming file, line and column.
    Error,
}

/// Rows removed during cleaning, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDrops {
    pub non_finite: u64,
    pub duplicates: u64,
    /// Rows with an empty label field.
    pub empty_label: u64,
}

/// One input file of the conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub rows_read: u64,
    pub rows_kept: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Preset name: `nsl-kdd`, `cic-ids-2017`, `ciciot2023` or `generic`.
    pub preset: String,
    pub files: Vec<SourceFile>,
    pub non_finite_policy: NonFinitePolicy,
    pub dedup: bool,
    /// Label values rewritten during normalisation (e.g. mis-decoded dashes), source -> kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_rewrites: BTreeMap<String, String>,
}

/// The `dataset.json` manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub format_version: u32,
    pub source: SourceInfo,
    /// Name of the label column (its original name, trimmed).
    pub label_column: String,
    /// Kept columns in Parquet order; exactly one has role `Label`.
    pub columns: Vec<ColumnInfo>,
    pub dropped_columns: Vec<DroppedColumn>,
    /// Rows per label value after cleaning.
    pub class_counts: BTreeMap<String, u64>,
    pub total_rows: u64,
    pub rows_dropped: RowDrops,
    /// Size of the uniform row sample the quantiles were computed from.
    pub quantile_sample_rows: u64,
    pub parts: Vec<PartInfo>,
    /// Hex sha256 over the parts' sha256 values in order: identifies the dataset's content.
    pub content_hash: String,
}

impl DatasetManifest {
    /// The label column's entry.
    pub fn label(&self) -> Result<&ColumnInfo> {
        self.columns
            .iter()
            .find(|c| c.role == ColumnRole::Label)
            .ok_or_else(|| Error::InvalidManifest {
                reason: "no column has role `label`".into(),
            })
    }

    /// Label vocabulary (class names) in code order.
    pub fn classes(&self) -> Result<&[String]> {
        let label = self.label()?;
        label
            .vocabulary
            .as_deref()
            .ok_or_else(|| Error::InvalidManifest {
                reason: format!("label column `{}` has no vocabulary", label.name),
            })
    }

    /// Feature columns (numeric and categorical) in Parquet order.
    pub fn features(&self) -> impl Iterator<Item = &ColumnInfo> {
        self.columns.iter().filter(|c| c.role != ColumnRole::Label)
    }

    /// Arrow schema of the part files.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.dtype.arrow(), false))
                .collect::<Vec<_>>(),
        ))
    }

    /// Arrow schema of sampled output: the dataset's columns plus the boolean `synthetic` flag.
    pub fn sample_arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.dtype.arrow(), false))
            .collect();
        fields.push(Field::new(SYNTHETIC_COLUMN, DataType::Boolean, false));
        Arc::new(Schema::new(fields))
    }

    /// Parses and checks a manifest (`source` names where it came from, for errors).
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self> {
        let m: DatasetManifest =
            serde_json::from_slice(bytes).map_err(|e| Error::ManifestParse {
                location: source.to_string(),
                source: e,
            })?;
        m.validate().map_err(|reason| Error::InvalidManifest {
            reason: format!("{source}: {reason}"),
        })?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data structures to a Vec cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "manifest format version {} is not supported (this build reads {})",
                self.format_version, MANIFEST_FORMAT_VERSION
            ));
        }
        let labels = self
            .columns
            .iter()
            .filter(|c| c.role == ColumnRole::Label)
            .count();
        if labels != 1 {
            return Err(format!("expected exactly one label column, found {labels}"));
        }
        for c in &self.columns {
            match c.role {
                ColumnRole::Numeric => {
                    let s = c
                        .stats
                        .as_ref()
                        .ok_or_else(|| format!("numeric column `{}` has no stats", c.name))?;
                    if s.quantiles.len() < 2 || s.quantiles.windows(2).any(|w| w[0] > w[1]) {
                        return Err(format!("numeric column `{}` has invalid quantiles", c.name));
                    }
                    if c.dtype == DType::String {
                        return Err(format!("numeric column `{}` has dtype string", c.name));
                    }
                }
                ColumnRole::Categorical | ColumnRole::Label => {
                    let v = c
                        .vocabulary
                        .as_ref()
                        .ok_or_else(|| format!("column `{}` has no vocabulary", c.name))?;
                    if v.is_empty() {
                        return Err(format!("column `{}` has an empty vocabulary", c.name));
                    }
                    if c.dtype == DType::Float64 {
                        return Err(format!("categorical column `{}` has dtype float64", c.name));
                    }
                }
            }
        }
        let part_rows: u64 = self.parts.iter().map(|p| p.rows).sum();
        if part_rows != self.total_rows {
            return Err(format!(
                "parts hold {part_rows} rows but total_rows is {}",
                self.total_rows
            ));
        }
        Ok(())
    }
}

/// Name of the manifest a sampling job writes next to its parts. The leading underscore makes
/// directory readers (pyarrow, pandas, Spark, DuckDB globs of the folder) skip it, so the output
/// folder reads as one Parquet dataset.
pub const SAMPLE_MANIFEST_NAME: &str = "_sample.json";
/// Success marker of a sampling job, written after the manifest.
pub const SUCCESS_MARKER: &str = "_SUCCESS";

/// One part file of sampled output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplePart {
    pub path: String,
    pub rows: u64,
    /// `true` for parts holding generated rows, `false` for parts of real training rows.
    pub synthetic: bool,
}

/// `sample.json`: what a sampling job wrote. Its parts all share the dataset's columns plus the
/// boolean `synthetic` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleManifest {
    pub format_version: u32,
    pub job_id: String,
    /// The checkpoint the rows were generated from.
    pub checkpoint_url: String,
    pub seed: u64,
    /// Requested synthetic rows per class, in request order.
    pub classes: Vec<(String, u64)>,
    pub with_real: bool,
    pub synthetic_rows: u64,
    pub real_rows: u64,
    pub label_column: String,
    /// The training dataset's columns (names, roles, dtypes, vocabularies).
    pub columns: Vec<ColumnInfo>,
    pub parts: Vec<SamplePart>,
    /// Multimodal model: the generated rows' mean cross-modal coherence (squared difference
    /// between the image decoder's picture and the picture of the decoded row, over the feature
    /// pixels; 0 = the two views agree). Absent for the other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_modal_coherence: Option<f64>,
    /// Multimodal model: the image layout it renders rows with (eval draws mean images per
    /// class with it). Absent for the other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_view: Option<ImageView>,
    /// Wall-clock seconds of generation: the slowest rank's time in the generator itself
    /// (denoising, decoding, the copy check), without loading the checkpoint or writing Parquet,
    /// so `synthetic_rows / generation_seconds` is the sampler's own speed. Absent when no rows
    /// were generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_seconds: Option<f64>,
}

/// Where a multimodal model draws each feature in a row's `side x side` image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageView {
    pub side: usize,
    /// (feature column name, pixel index in row-major order), one entry per feature.
    pub pixels: Vec<(String, usize)>,
}
