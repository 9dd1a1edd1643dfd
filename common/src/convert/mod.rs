//! `flowsynth convert`: labelled flow CSVs (plain or gzip) to a Parquet dataset with a
//! `_dataset.json` manifest.
//!
//! The conversion streams, so memory stays flat whatever the input size (the bounded state is a
//! 100,000-row quantile sample, capped distinct-value sets, with `dedup` one 16-byte fingerprint
//! per kept row, and the parsed input itself up to [`ConvertOptions::memory_budget`]):
//!
//! The input is read in chunks of records on a thread of its own ([`chunks`]), and each chunk's
//! columns are parsed and converted by several threads side by side, with the same result as one
//! thread. An input whose parsed chunks fit the memory budget is read, decompressed and split
//! into fields once; pass 2 then works from memory. A larger one is read again.
//!
//! 1. **Pass 1** ([`scan`]) reads every input once and decides column types, which rows survive
//!    cleaning (empty label, NaN/Infinity, exact duplicates), and all statistics: min, max, mean,
//!    std, capped distinct counts, vocabularies, class counts, constant columns, and a seeded
//!    uniform row sample for the quantiles. Statistics are global, fitted once over the whole
//!    dataset, so every training worker applies the same transforms.
//! 2. **Pass 2** ([`write`]) goes over the records again, applies the same cleaning, and writes
//!    the kept columns with their final types into Parquet parts in a local temporary directory,
//!    hashing each part as it is written.
//! 3. **Publish**: only after both passes succeeded are the parts uploaded to the destination and
//!    `_dataset.json` written last; a failed upload removes what it uploaded. A dataset therefore
//!    exists exactly when its manifest does, and no manifest describes a partial dataset.
//!
//! Every cleaning decision is recorded in the manifest: dropped columns with their reason, rows
//! dropped by cause, rewritten label texts, per-file row counts.

mod chunks;
mod input;
mod plan;
mod scan;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::{
    ColumnInfo, ColumnRole, DType, DatasetManifest, DropReason, DroppedColumn,
    MANIFEST_FORMAT_VERSION, NonFinitePolicy, SourceInfo,
};
use crate::store::{Location, block_on};
use write::{Conv, OutColumn, WriteSpec};

/// Rows in the uniform sample the quantiles are computed from (the manifest's
/// `quantile_sample_rows` is the actual size, smaller for smaller datasets).
pub const QUANTILE_SAMPLE_ROWS: usize = 100_000;
/// Distinct values counted per numeric column; `NumericStats::distinct` equal to this means "at
/// least this many".
pub const DISTINCT_CAP: usize = 10_000;
/// Most distinct values a categorical column (or the label) may have. A text column beyond this
/// is almost always an identifier or free text, which a model cannot embed usefully; the
/// conversion stops and names it so the user can `--drop` it.
pub const VOCABULARY_CAP: usize = 10_000;

/// Input layout: which names, label and drops apply before any row is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// NSL-KDD `KDDTrain+.txt` / `KDDTest+.txt`: no header, 41 features, label, difficulty.
    NslKdd,
    /// CIC-IDS-2017 CICFlowMeter CSVs: the original MachineLearningCVE layout and the improved
    /// 91-column re-extraction (identifiers dropped, label dashes repaired).
    CicIds2017,
    /// CICIoT2023 CSVs (label `label_multiclass`, the other label column dropped).
    CicIot2023,
    /// Any labelled CSV with a header: types inferred, identifiers dropped.
    #[default]
    Generic,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::NslKdd,
        Preset::CicIds2017,
        Preset::CicIot2023,
        Preset::Generic,
    ];

    /// The name used on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Preset::NslKdd => "nsl-kdd",
            Preset::CicIds2017 => "cic-ids-2017",
            Preset::CicIot2023 => "ciciot2023",
            Preset::Generic => "generic",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    /// Accepts the canonical names and their spellings without dashes or in other case
    /// (`cicids2017`, `NSL_KDD`).
    fn from_str(s: &str) -> Result<Self> {
        let key: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        Preset::ALL
            .into_iter()
            .find(|p| p.name().replace('-', "") == key)
            .ok_or_else(|| Error::InvalidOptions {
                reason: format!(
                    "unknown preset `{s}`; expected one of {}",
                    Preset::ALL.map(Preset::name).join(", ")
                ),
            })
    }
}

/// How to convert. The CLI maps its flags onto this struct one to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    pub preset: Preset,
    /// Label column (trimmed header name). Defaults: nsl-kdd `label`, cic-ids-2017 `Label`,
    /// ciciot2023 `label_multiclass` (or `label`), generic a column named label/Label/class.
    pub label: Option<String>,
    /// Extra columns to drop (header names, trimmed); an unknown name is an error.
    pub drop: Vec<String>,
    /// Rows with NaN / Infinity / an empty field in a numeric column.
    pub non_finite: NonFinitePolicy,
    /// Drop exact duplicate rows (same text in every kept-by-name column and the same label).
    pub dedup: bool,
    pub rows_per_part: usize,
    /// Rows per Parquet row group: the unit the coordinator shards by.
    pub row_group_rows: usize,
    /// Replace a dataset already at the destination (else that is an error).
    pub overwrite: bool,
    /// Show a progress bar (bytes of input read) on stderr.
    pub progress: bool,
    /// Threads that parse and convert columns side by side (0: all cores). The result does not
    /// depend on it.
    pub threads: usize,
    /// Bytes of parsed input kept in memory between the passes. An input that fits is read and
    /// parsed once; a larger one is read again for pass 2, so memory stays bounded by this
    /// whatever the input size.
    pub memory_budget: usize,
}

/// Default [`ConvertOptions::memory_budget`]: 512 MiB, a few million flows of a wide
/// CICFlowMeter export.
pub const DEFAULT_MEMORY_BUDGET: usize = 512 << 20;

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            preset: Preset::Generic,
            label: None,
            drop: Vec::new(),
            non_finite: NonFinitePolicy::Drop,
            dedup: false,
            rows_per_part: 1_000_000,
            row_group_rows: 65_536,
            overwrite: false,
            progress: false,
            threads: 0,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

fn progress_bar(enabled: bool, total: u64, message: &'static str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg:24} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(total)
        .with_style(style)
        .with_message(message);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Converts `inputs` (one dataset; headers must match) into a Parquet dataset at `out`.
///
/// Returns the manifest that was written as `out/_dataset.json`. On any error nothing of this
/// conversion is left at `out` (an existing dataset is replaced only with `overwrite`, and only
/// once the new one has been fully built locally).
pub fn convert(
    inputs: &[PathBuf],
    out: &Location,
    opts: &ConvertOptions,
) -> Result<DatasetManifest> {
    let started = Instant::now();
    let first = inputs.first().ok_or_else(|| Error::InvalidOptions {
        reason: "no input files given".into(),
    })?;
    if opts.rows_per_part == 0 || opts.row_group_rows == 0 {
        return Err(Error::InvalidOptions {
            reason: "rows per part and rows per row group must be at least 1".into(),
        });
    }
    // Fail before two passes over the data, not after.
    if !opts.overwrite
        && let Some(existing) = block_on(crate::dataset::existing_manifest(out))?
    {
        return Err(Error::DatasetExists {
            location: out.display(existing),
        });
    }
    let mut total_bytes = 0u64;
    for path in inputs {
        let meta = std::fs::metadata(path).map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })?;
        total_bytes += meta.len();
    }

    let header = if opts.preset == Preset::NslKdd {
        None
    } else {
        let mut records = input::Records::open(first, &ProgressBar::hidden())?;
        Some(scan::read_header(&mut records)?)
    };
    let plan = plan::Plan::new(opts, first, header)?;

    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };

    // ---- pass 1 -------------------------------------------------------------------------------
    let bar = progress_bar(opts.progress, total_bytes, "pass 1/2: scanning");
    let mut kept = chunks::Kept::new(opts.memory_budget);
    let mut scanner = scan::Scanner::new(inputs, &plan, opts.non_finite, opts.dedup, None, threads);
    chunks::stream(inputs, &plan, &bar, |mut piece| {
        let values = scanner.feed(&piece, kept.keeping())?;
        if let chunks::Piece::Rows(chunk) = &mut piece {
            chunk.set_values(values);
        }
        kept.keep(piece);
        Ok(())
    })?;
    let mut s = scanner.finish();
    tracing::debug!("pass 1 done after {:.1?}", started.elapsed());
    if s.needs_rerun() {
        tracing::info!(
            "a column's type was only settled late in the input; scanning again with the types fixed"
        );
        let types = s.numeric_types();
        bar.reset();
        let mut again = scan::Scanner::new(
            inputs,
            &plan,
            opts.non_finite,
            opts.dedup,
            Some(&types),
            threads,
        );
        chunks::replay(&kept, inputs, &plan, &bar, |piece| {
            again.feed(piece, false).map(drop)
        })?;
        s = again.finish();
    }
    bar.finish_and_clear();
    if let Some(e) = s.non_finite_error(inputs, &plan) {
        return Err(e);
    }
    let rows_read: u64 = s.files.iter().map(|f| f.rows_read).sum();
    if s.kept == 0 {
        return Err(Error::AllRowsDropped {
            detail: format!(
                "{rows_read} rows read; {} with NaN/Infinity in a numeric column, {} duplicates, \
                 {} with an empty label",
                s.drops.non_finite, s.drops.duplicates, s.drops.empty_label
            ),
        });
    }

    // ---- schema ------------------------------------------------------------------------------
    let label_name = plan.name(plan.label).to_string();
    if s.labels_overflow {
        return Err(Error::TooManyCategories {
            column: label_name,
            cap: VOCABULARY_CAP,
        });
    }
    let numeric = s.numeric_types();
    let (label_vocab, class_counts, label_dtype) = label_classes(&s.labels);
    let mut columns: Vec<ColumnInfo> = Vec::new();
    let mut out_columns: Vec<OutColumn> = Vec::new();
    let mut dropped: Vec<DroppedColumn> = Vec::new();
    for c in 0..plan.width {
        let name = plan.name(c).to_string();
        let source_name = plan.source_names.get(c).cloned().unwrap_or_default();
        if c == plan.label {
            columns.push(ColumnInfo {
                name,
                source_name,
                role: ColumnRole::Label,
                dtype: label_dtype,
                stats: None,
                vocabulary: Some(label_vocab.clone()),
            });
            out_columns.push(OutColumn {
                source: c,
                conv: if label_dtype == DType::Int64 {
                    Conv::Int
                } else {
                    Conv::Str
                },
                is_label: true,
            });
            continue;
        }
        if let Some(reason) = plan.dropped.get(c).cloned().flatten() {
            dropped.push(DroppedColumn { name, reason });
            continue;
        }
        let Some(k) = s.features.iter().position(|&f| f == c) else {
            continue;
        };
        let (Some(col), Some(&is_numeric)) = (s.cols.get(k), numeric.get(k)) else {
            continue;
        };
        match feature_kind(col, is_numeric, s.kept, &name)? {
            FeatureKind::Constant(value) => dropped.push(DroppedColumn {
                name,
                reason: DropReason::Constant { value },
            }),
            FeatureKind::Kept {
                role,
                dtype,
                stats,
                vocabulary,
            } => {
                out_columns.push(OutColumn {
                    source: c,
                    conv: match dtype {
                        DType::Int64 => Conv::Int,
                        DType::Float64 => Conv::Float,
                        DType::String => Conv::Str,
                    },
                    is_label: false,
                });
                columns.push(ColumnInfo {
                    name,
                    source_name,
                    role,
                    dtype,
                    stats,
                    vocabulary,
                });
            }
        }
    }
    if !columns.iter().any(|c| c.role != ColumnRole::Label) {
        return Err(Error::NoFeatures);
    }

    let mut manifest = DatasetManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        source: SourceInfo {
            preset: opts.preset.name().to_string(),
            files: s.files.clone(),
            non_finite_policy: opts.non_finite,
            dedup: opts.dedup,
            label_rewrites: s.rewrites.clone(),
        },
        label_column: label_name,
        columns,
        dropped_columns: dropped,
        class_counts,
        total_rows: s.kept,
        rows_dropped: s.drops.clone(),
        quantile_sample_rows: s.reservoir.rows as u64,
        parts: Vec::new(),
        content_hash: String::new(),
    };
    tracing::debug!("schema and statistics done after {:.1?}", started.elapsed());
    // The quantile sample can be large; it is not needed any more.
    let features = s.features.clone();
    let files = s.files.clone();
    drop(s);

    // ---- pass 2 ------------------------------------------------------------------------------
    let tmp = tempfile::Builder::new()
        .prefix("flowsynth-convert-")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory for the parts", e))?;
    let bar = progress_bar(opts.progress, total_bytes, "pass 2/2: writing");
    let spec = WriteSpec {
        inputs,
        plan: &plan,
        features: &features,
        numeric: &numeric,
        columns: &out_columns,
        schema: manifest.arrow_schema(),
        policy: opts.non_finite,
        dedup: opts.dedup,
        rows_per_part: opts.rows_per_part,
        row_group_rows: opts.row_group_rows,
        threads,
        recheck_non_finite: kept.pieces().is_none() || manifest.rows_dropped.non_finite > 0,
    };
    let mut writer = write::PartsWriter::new(&spec, tmp.path());
    chunks::replay(&kept, inputs, &plan, &bar, |piece| writer.feed(piece))?;
    drop(kept);
    let (parts, kept_per_file) = writer.finish()?;
    tracing::debug!("pass 2 done after {:.1?}", started.elapsed());
    bar.finish_and_clear();
    for ((file, kept), path) in files.iter().zip(&kept_per_file).zip(inputs) {
        if file.rows_kept != *kept {
            return Err(Error::InputChanged {
                path: path.clone(),
                detail: format!(
                    "the first pass kept {} rows, the second {kept}",
                    file.rows_kept
                ),
            });
        }
    }
    let mut all = Sha256::new();
    for p in &parts {
        all.update(p.info.sha256.as_bytes());
    }
    manifest.content_hash = hex::encode(all.finalize());
    manifest.parts = parts.iter().map(|p| p.info.clone()).collect();

    // ---- publish -----------------------------------------------------------------------------
    block_on(write::publish(
        out,
        &parts,
        Bytes::from(manifest.to_json()),
        opts.overwrite,
    ))?;
    drop(tmp);

    tracing::info!(
        "converted {} rows ({} read; dropped {} non-finite, {} duplicate, {} empty-label) into {} \
         columns ({} dropped) and {} part(s) at {} in {:.1?}",
        manifest.total_rows,
        rows_read,
        manifest.rows_dropped.non_finite,
        manifest.rows_dropped.duplicates,
        manifest.rows_dropped.empty_label,
        manifest.columns.len(),
        manifest.dropped_columns.len(),
        manifest.parts.len(),
        out,
        started.elapsed()
    );
    Ok(manifest)
}

/// Label vocabulary (sorted), class counts and dtype: int64 when every label is an integer
/// literal (then the texts are canonical decimals, so `01` and `1` are one class), else string.
fn label_classes(
    labels: &std::collections::HashMap<String, u64>,
) -> (Vec<String>, BTreeMap<String, u64>, DType) {
    let ints: Option<Vec<(i64, u64)>> = labels
        .iter()
        .map(|(t, &n)| scan::int_literal(t).map(|v| (v, n)))
        .collect();
    match ints {
        Some(ints) if !ints.is_empty() => {
            let mut merged: BTreeMap<i64, u64> = BTreeMap::new();
            for (v, n) in ints {
                *merged.entry(v).or_insert(0) += n;
            }
            let vocab = merged.keys().map(i64::to_string).collect();
            let counts = merged
                .into_iter()
                .map(|(v, n)| (v.to_string(), n))
                .collect();
            (vocab, counts, DType::Int64)
        }
        _ => {
            let counts: BTreeMap<String, u64> =
                labels.iter().map(|(t, &n)| (t.clone(), n)).collect();
            (counts.keys().cloned().collect(), counts, DType::String)
        }
    }
}

enum FeatureKind {
    Constant(String),
    Kept {
        role: ColumnRole,
        dtype: DType,
        stats: Option<crate::manifest::NumericStats>,
        vocabulary: Option<Vec<String>>,
    },
}

/// Role, dtype and statistics of a feature column from what pass 1 saw over the kept rows.
fn feature_kind(
    col: &scan::ColumnScan,
    is_numeric: bool,
    rows: u64,
    name: &str,
) -> Result<FeatureKind> {
    if is_numeric {
        let acc = &col.num;
        if acc.distinct.len() <= 1 {
            let value = if acc.all_int {
                format!("{}", acc.min as i64)
            } else {
                format!("{}", acc.min)
            };
            return Ok(FeatureKind::Constant(value));
        }
        if acc.all_int && acc.is_zero_one() {
            // A 0/1 integer column is a binary flag: modelled as a two-way category.
            return Ok(FeatureKind::Kept {
                role: ColumnRole::Categorical,
                dtype: DType::Int64,
                stats: None,
                vocabulary: Some(vec!["0".into(), "1".into()]),
            });
        }
        return Ok(FeatureKind::Kept {
            role: ColumnRole::Numeric,
            dtype: if acc.all_int {
                DType::Int64
            } else {
                DType::Float64
            },
            stats: Some(scan::numeric_stats(col, rows)),
            vocabulary: None,
        });
    }
    if col.texts_overflow {
        return Err(Error::TooManyCategories {
            column: name.to_string(),
            cap: VOCABULARY_CAP,
        });
    }
    let mut vocab: Vec<String> = col.texts.iter().map(|t| t.to_string()).collect();
    if vocab.len() <= 1 {
        return Ok(FeatureKind::Constant(vocab.pop().unwrap_or_default()));
    }
    vocab.sort();
    Ok(FeatureKind::Kept {
        role: ColumnRole::Categorical,
        dtype: DType::String,
        stats: None,
        vocabulary: Some(vocab),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_from_their_names_and_common_spellings() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!("CICIDS2017".parse::<Preset>().unwrap(), Preset::CicIds2017);
        assert_eq!("nsl_kdd".parse::<Preset>().unwrap(), Preset::NslKdd);
        let err = "kdd99".parse::<Preset>().unwrap_err().to_string();
        assert!(err.contains("kdd99") && err.contains("ciciot2023"), "{err}");
    }

    #[test]
    fn integer_labels_are_canonical_and_merged_text_labels_sorted() {
        let labels = [
            ("1".to_string(), 3),
            ("01".into(), 2),
            ("-4".into(), 1),
            ("10".into(), 1),
        ]
        .into();
        let (vocab, counts, dtype) = label_classes(&labels);
        assert_eq!(dtype, DType::Int64);
        assert_eq!(vocab, ["-4", "1", "10"]);
        assert_eq!(
            counts,
            [("-4".to_string(), 1), ("1".into(), 5), ("10".into(), 1)].into()
        );
        let labels = [
            ("b".to_string(), 1),
            ("B".into(), 1),
            ("1.0".into(), 2),
            ("a".into(), 1),
        ]
        .into();
        let (vocab, _, dtype) = label_classes(&labels);
        assert_eq!(dtype, DType::String);
        assert_eq!(vocab, ["1.0", "B", "a", "b"]);
    }

    #[test]
    fn options_default_to_the_documented_values() {
        let o = ConvertOptions::default();
        assert_eq!((o.rows_per_part, o.row_group_rows), (1_000_000, 65_536));
        assert_eq!(o.non_finite, NonFinitePolicy::Drop);
        assert!(!o.dedup && !o.overwrite && o.label.is_none());
    }
}
