//! Pass 1: one streaming read of every input that decides column types, which rows survive
//! cleaning, and every statistic the manifest carries.
//!
//! Type inference looks at every row that has a label (before non-finite and duplicate rows are
//! removed), so one text value anywhere makes a column categorical. Row cleaning, however, needs
//! the types while streaming: a NaN in a numeric column drops the row, a NaN in a text column is
//! just a category. The scan therefore decides with the types known *so far* and notes when such
//! a decision could have been wrong (a column that dropped rows turned out to be text, or a
//! column held an empty value before its first number). Only then is the scan repeated with
//! the types fixed from the first run, so ordinary files take two passes in total and unusual
//! ones three, and the result is always exact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::input::{Records, Row};
use super::plan::{Label, Plan, normalise_label};
use super::{DISTINCT_CAP, QUANTILE_SAMPLE_ROWS, VOCABULARY_CAP};
use crate::error::{Error, Result};
use crate::manifest::{NonFinitePolicy, NumericStats, RowDrops, SourceFile};

/// Seed of the quantile reservoir: fixed, so converting the same input twice gives the same
/// manifest.
const RESERVOIR_SEED: u64 = 0x666c_6f77_7379_6e74; // "flowsynt"

/// A field as the converter sees it (after trimming whitespace).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cell {
    /// A finite number; `int` when written as an integer literal (`12`, `-1`, not `1.0`).
    Finite { v: f64, int: bool },
    /// `NaN`, `Infinity`, `-Infinity` (any case, as Rust and pandas spell them): a number, but
    /// not one a model can use.
    NonFinite,
    /// An empty field. In a numeric column it is a missing value, treated like NaN (as pandas
    /// reads it); it is no evidence that a column is numeric, so an all-empty column (a trailing
    /// comma) is a constant text column rather than a reason to drop every row.
    Missing,
    /// Anything else.
    Text,
}

impl Cell {
    /// A value the non-finite policy applies to, in a numeric column.
    pub(super) fn is_non_finite(self) -> bool {
        matches!(self, Cell::NonFinite | Cell::Missing)
    }
}

pub(super) fn classify(s: &str) -> Cell {
    if s.is_empty() {
        return Cell::Missing;
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Cell::Finite {
            v,
            int: is_int_literal(s),
        },
        Ok(_) => Cell::NonFinite,
        Err(_) => Cell::Text,
    }
}

/// The value of an integer literal (`12`, `-1`, `+3`; not `1.0`, not beyond i64).
pub(super) fn int_literal(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

fn is_int_literal(s: &str) -> bool {
    int_literal(s).is_some()
}

/// Trimmed UTF-8 text of field `c`, or the error naming file, line and column.
pub(super) fn field_text<'r>(
    rec: Row<'r>,
    c: usize,
    plan: &Plan,
    path: &Path,
    line: u64,
) -> Result<&'r str> {
    // ASCII trimming on bytes is much cheaper than `str::trim` and covers what CSV writers pad
    // with (spaces, tabs, the CR of CRLF).
    let raw = rec.get(c).unwrap_or_default().trim_ascii();
    std::str::from_utf8(raw).map_err(|_| Error::NotUtf8 {
        path: path.to_path_buf(),
        line,
        column: plan.name(c).to_string(),
    })
}

/// 128-bit fingerprint of a row's kept-by-name fields (trimmed) and normalised label, for
/// exact-duplicate removal. Two independent 64-bit SipHashes make a collision between distinct
/// rows negligible even for 10^9 rows.
pub(super) fn row_key(rec: Row<'_>, features: &[usize], label: &str) -> u128 {
    let mut a = std::hash::DefaultHasher::new();
    let mut b = std::hash::DefaultHasher::new();
    b.write_u64(0x9e37_79b9_7f4a_7c15);
    let mut add = |bytes: &[u8]| {
        a.write_usize(bytes.len());
        a.write(bytes);
        b.write_usize(bytes.len());
        b.write(bytes);
    };
    add(label.as_bytes());
    for &c in features {
        add(rec.get(c).unwrap_or_default().trim_ascii());
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Checks a record's width and reads its normalised label; errors name file, line and column.
pub(super) fn row_label<'r>(
    rec: Row<'r>,
    plan: &Plan,
    path: &Path,
    line: u64,
) -> Result<Label<'r>> {
    check_width(rec, plan, path, line)?;
    normalise_label(rec.get(plan.label).unwrap_or_default(), plan.repair_labels).ok_or_else(|| {
        Error::NotUtf8 {
            path: path.to_path_buf(),
            line,
            column: plan.name(plan.label).to_string(),
        }
    })
}

/// Checks a record's width.
pub(super) fn check_width(rec: Row<'_>, plan: &Plan, path: &Path, line: u64) -> Result<()> {
    if rec.len() != plan.width {
        return Err(Error::RaggedRow {
            path: path.to_path_buf(),
            line,
            expected: plan.width,
            found: rec.len(),
        });
    }
    Ok(())
}

/// Opens a file and reads past its header (checking it against the plan), so that the next
/// record is the first data row.
pub(super) fn open_rows(
    path: &Path,
    first: &Path,
    plan: &Plan,
    bar: &ProgressBar,
) -> Result<Records> {
    let mut records = Records::open(path, bar)?;
    if plan.header {
        let header = read_header(&mut records)?;
        plan.check_header(path, first, &header)?;
    }
    Ok(records)
}

/// Reads the first non-blank record as the header row.
pub(super) fn read_header(records: &mut Records) -> Result<Vec<String>> {
    let Some(line) = records.next_record()? else {
        return Err(Error::EmptyFile {
            path: records.path().to_path_buf(),
        });
    };
    records
        .record()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            String::from_utf8(f.to_vec()).map_err(|_| Error::NotUtf8 {
                path: records.path().to_path_buf(),
                line,
                column: format!("header field {}", i + 1),
            })
        })
        .collect()
}

/// Running statistics of a column's numeric values over kept rows.
#[derive(Debug, Clone)]
pub(super) struct NumAcc {
    pub n: u64,
    mean: f64,
    m2: f64,
    pub min: f64,
    pub max: f64,
    /// Every value was an integer literal (or a non-finite value replaced by 0).
    pub all_int: bool,
    /// Every value was a whole number, however written (`592.0` counts).
    pub whole: bool,
    /// Distinct values (bit patterns, -0 folded into 0), at most `DISTINCT_CAP`.
    pub distinct: HashSet<u64>,
    last: Option<u64>,
}

impl Default for NumAcc {
    fn default() -> Self {
        Self {
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            all_int: true,
            whole: true,
            distinct: HashSet::new(),
            last: None,
        }
    }
}

impl NumAcc {
    fn push(&mut self, v: f64, int: bool) {
        // Welford's update: stable for the large magnitudes of byte and microsecond counters.
        self.n += 1;
        let delta = v - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (v - self.mean);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.all_int &= int;
        self.whole &= v.fract() == 0.0;
        let bits = if v == 0.0 {
            0f64.to_bits()
        } else {
            v.to_bits()
        };
        // Flags and counters repeat values row after row; skip the hash for a repeat.
        if self.last != Some(bits) {
            self.last = Some(bits);
            if self.distinct.len() < DISTINCT_CAP {
                self.distinct.insert(bits);
            }
        }
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).max(0.0).sqrt()
        }
    }

    /// True when the distinct values are exactly {0, 1}.
    pub fn is_zero_one(&self) -> bool {
        self.distinct.len() == 2
            && self.distinct.contains(&0f64.to_bits())
            && self.distinct.contains(&1f64.to_bits())
    }
}

/// What pass 1 learns about one feature column.
#[derive(Debug, Default)]
pub(super) struct ColumnScan {
    /// Some labelled row holds text that is not a number: the column is categorical.
    pub text_seen: bool,
    /// Some labelled row holds a number (finite or not).
    pub number_seen: bool,
    /// A non-finite value was kept because the column's type was still unknown (Drop policy).
    unresolved_non_finite: bool,
    /// Rows were dropped because of a non-finite value here while it looked numeric.
    caused_drops: bool,
    /// First non-finite value (file index, line, text), for the Error policy.
    pub first_non_finite: Option<(usize, u64, String)>,
    pub num: NumAcc,
    /// Distinct trimmed texts over kept rows, at most `VOCABULARY_CAP`.
    pub texts: HashSet<Box<str>>,
    pub texts_overflow: bool,
    last_text: Option<Box<str>>,
}

impl ColumnScan {
    /// The inferred type: numeric when no labelled row holds text and at least one holds a
    /// number, NaN and Infinity included (an all-empty column is text and ends up constant).
    pub fn is_numeric(&self) -> bool {
        !self.text_seen && self.number_seen
    }

    fn add_text(&mut self, text: &str) {
        if self.texts_overflow || self.last_text.as_deref() == Some(text) {
            return;
        }
        if !self.texts.contains(text) {
            if self.texts.len() >= VOCABULARY_CAP {
                self.texts_overflow = true;
                self.texts = HashSet::new();
                self.last_text = None;
                return;
            }
            self.texts.insert(text.into());
        }
        self.last_text = Some(text.into());
    }
}

/// Uniform sample of kept rows (Algorithm R), the numeric values of every feature column.
#[derive(Debug)]
pub(super) struct Reservoir {
    pub rows: Vec<Box<[f64]>>,
    seen: u64,
    rng: StdRng,
}

impl Reservoir {
    fn new() -> Self {
        Self {
            rows: Vec::new(),
            seen: 0,
            rng: StdRng::seed_from_u64(RESERVOIR_SEED),
        }
    }

    /// Where the next row goes, if it is sampled.
    fn slot(&mut self) -> Option<usize> {
        self.seen += 1;
        if self.rows.len() < QUANTILE_SAMPLE_ROWS {
            return Some(self.rows.len());
        }
        let j = self.rng.random_range(0..self.seen);
        usize::try_from(j)
            .ok()
            .filter(|&j| j < QUANTILE_SAMPLE_ROWS)
    }

    fn put(&mut self, slot: usize, row: &[f64]) {
        if let Some(r) = self.rows.get_mut(slot) {
            r.copy_from_slice(row);
        } else {
            self.rows.push(row.into());
        }
    }

    /// Sorted finite sample values of feature `k`.
    pub fn column(&self, k: usize) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .rows
            .iter()
            .filter_map(|r| r.get(k).copied())
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// Everything pass 1 learned.
#[derive(Debug)]
pub(super) struct Scan {
    /// Source indices of the feature columns; `cols` is parallel to it.
    pub features: Vec<usize>,
    pub cols: Vec<ColumnScan>,
    /// Kept rows per normalised label text.
    pub labels: HashMap<String, u64>,
    pub labels_overflow: bool,
    pub rewrites: BTreeMap<String, String>,
    pub files: Vec<SourceFile>,
    pub drops: RowDrops,
    pub kept: u64,
    pub reservoir: Reservoir,
    /// Types were guessed while streaming (no fixed types were given).
    tentative: bool,
    policy: NonFinitePolicy,
}

impl Scan {
    /// The inferred type of each feature column (numeric or not).
    pub fn numeric_types(&self) -> Vec<bool> {
        self.cols.iter().map(ColumnScan::is_numeric).collect()
    }

    /// True when a streaming decision may have been wrong and the scan must be repeated with the
    /// types now known.
    pub fn needs_rerun(&self) -> bool {
        self.tentative
            && self.policy == NonFinitePolicy::Drop
            && self.cols.iter().any(|c| {
                (c.is_numeric() && c.unresolved_non_finite) || (!c.is_numeric() && c.caused_drops)
            })
    }

    /// Under the Error policy, the first non-finite value in a numeric column.
    pub fn non_finite_error(&self, inputs: &[PathBuf], plan: &Plan) -> Option<Error> {
        if self.policy != NonFinitePolicy::Error {
            return None;
        }
        self.cols
            .iter()
            .zip(&self.features)
            .filter(|(c, _)| c.is_numeric())
            .filter_map(|(c, &src)| c.first_non_finite.as_ref().map(|f| (f, src)))
            .min_by_key(|((file, line, _), _)| (*file, *line))
            .map(|((file, line, value), src)| Error::NonFinite {
                path: inputs.get(*file).cloned().unwrap_or_default(),
                line: *line,
                column: plan.name(src).to_string(),
                value: value.clone(),
            })
    }
}

/// Pass 1 over all inputs. `fixed` gives the feature types (numeric or not) when they are known
/// from an earlier run.
pub(super) fn scan(
    inputs: &[PathBuf],
    plan: &Plan,
    policy: NonFinitePolicy,
    dedup: bool,
    fixed: Option<&[bool]>,
    bar: &ProgressBar,
) -> Result<Scan> {
    let features = plan.features();
    let nf = features.len();
    let mut s = Scan {
        features: features.clone(),
        cols: (0..nf).map(|_| ColumnScan::default()).collect(),
        labels: HashMap::new(),
        labels_overflow: false,
        rewrites: BTreeMap::new(),
        files: Vec::with_capacity(inputs.len()),
        drops: RowDrops::default(),
        kept: 0,
        reservoir: Reservoir::new(),
        tentative: fixed.is_none(),
        policy,
    };
    let mut seen: Option<HashSet<u128>> = dedup.then(HashSet::new);
    let mut cells = vec![Cell::Text; nf];
    let mut values = vec![f64::NAN; nf];
    let mut culprits: Vec<usize> = Vec::new();
    let first = inputs
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new(""));

    for (file_idx, path) in inputs.iter().enumerate() {
        let mut records = open_rows(path, first, plan, bar)?;
        let (mut rows_read, mut rows_kept) = (0u64, 0u64);
        while let Some(line) = records.next_record()? {
            let rec = records.record();
            let label = row_label(rec, plan, path, line)?;
            rows_read += 1;
            let labelled = !label.text.is_empty();

            // Classify every feature field (UTF-8 is checked on every row, dropped or not) and
            // update the type evidence from labelled rows.
            let mut non_finite_drop = false;
            culprits.clear();
            let mut texts: Vec<&str> = Vec::with_capacity(nf);
            for (k, &c) in features.iter().enumerate() {
                let text = field_text(rec, c, plan, path, line)?;
                texts.push(text);
                let cell = classify(text);
                cells[k] = cell;
                if !labelled {
                    continue;
                }
                let Some(col) = s.cols.get_mut(k) else {
                    continue;
                };
                match cell {
                    Cell::Text => col.text_seen = true,
                    Cell::Finite { .. } => col.number_seen = true,
                    Cell::NonFinite | Cell::Missing => {
                        if cell == Cell::NonFinite {
                            col.number_seen = true;
                        }
                        let numeric_now = match fixed {
                            Some(types) => types.get(k).copied().unwrap_or(false),
                            None => col.is_numeric(),
                        };
                        match policy {
                            NonFinitePolicy::Drop if numeric_now => {
                                non_finite_drop = true;
                                culprits.push(k);
                            }
                            NonFinitePolicy::Drop => {
                                if !col.text_seen {
                                    col.unresolved_non_finite = true;
                                }
                            }
                            NonFinitePolicy::Error => {
                                if !col.text_seen && col.first_non_finite.is_none() {
                                    col.first_non_finite = Some((file_idx, line, text.to_string()));
                                }
                            }
                            NonFinitePolicy::Zero => {}
                        }
                    }
                }
            }
            if !labelled {
                s.drops.empty_label += 1;
                continue;
            }
            if let Some(from) = label.rewritten_from.as_ref()
                && s.rewrites.len() < VOCABULARY_CAP
                && !s.rewrites.contains_key(from)
            {
                s.rewrites.insert(from.clone(), label.text.to_string());
            }
            if non_finite_drop {
                s.drops.non_finite += 1;
                for &k in &culprits {
                    if let Some(col) = s.cols.get_mut(k) {
                        col.caused_drops = true;
                    }
                }
                continue;
            }
            if let Some(seen) = seen.as_mut()
                && !seen.insert(row_key(rec, &features, &label.text))
            {
                s.drops.duplicates += 1;
                continue;
            }

            // The row is kept: accumulate statistics.
            rows_kept += 1;
            s.kept += 1;
            if let Some(n) = s.labels.get_mut(label.text.as_ref()) {
                *n += 1;
            } else if s.labels.len() < VOCABULARY_CAP {
                s.labels.insert(label.text.into_owned(), 1);
            } else {
                s.labels_overflow = true;
            }
            for (k, &text) in texts.iter().enumerate() {
                let (Some(col), Some(&cell), Some(value)) =
                    (s.cols.get_mut(k), cells.get(k), values.get_mut(k))
                else {
                    continue;
                };
                *value = f64::NAN;
                if !col.text_seen {
                    match cell {
                        Cell::Finite { v, int } => {
                            col.num.push(v, int);
                            *value = v;
                        }
                        Cell::NonFinite | Cell::Missing if policy == NonFinitePolicy::Zero => {
                            col.num.push(0.0, true);
                            *value = 0.0;
                        }
                        _ => {}
                    }
                }
                if !col.texts_overflow {
                    col.add_text(text);
                }
            }
            if let Some(slot) = s.reservoir.slot() {
                s.reservoir.put(slot, &values);
            }
        }
        if rows_read == 0 {
            return Err(if plan.header {
                Error::NoRows { path: path.clone() }
            } else {
                Error::EmptyFile { path: path.clone() }
            });
        }
        s.files.push(SourceFile {
            path: path.display().to_string(),
            rows_read,
            rows_kept,
        });
    }
    Ok(s)
}

/// Quantiles at probabilities `i / (n-1)` of a sorted sample, linear interpolation between
/// order statistics (numpy's default), with the ends pinned to the exact column `min` and `max`
/// and forced non-decreasing.
pub(super) fn quantiles(sorted: &[f64], n: usize, min: f64, max: f64) -> Vec<f64> {
    let n = n.max(2);
    let m = sorted.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let q = if m == 0 {
            min + (max - min) * i as f64 / (n - 1) as f64
        } else {
            let pos = i as f64 / (n - 1) as f64 * (m - 1) as f64;
            let lo = (pos.floor() as usize).min(m - 1);
            let hi = (lo + 1).min(m - 1);
            let frac = pos - lo as f64;
            let (a, b) = (
                sorted.get(lo).copied().unwrap_or(min),
                sorted.get(hi).copied().unwrap_or(max),
            );
            a + (b - a) * frac
        };
        out.push(q.clamp(min, max));
    }
    if let Some(f) = out.first_mut() {
        *f = min;
    }
    if let Some(l) = out.last_mut() {
        *l = max;
    }
    for i in 1..out.len() {
        if out[i] < out[i - 1] {
            out[i] = out[i - 1];
        }
    }
    out
}

/// `n_quantiles = clamp(rows / 30, 10, 1000)`, the rule TabSyn's QuantileTransformer uses.
pub(super) fn quantile_count(rows: u64) -> usize {
    (rows / 30).clamp(10, 1000) as usize
}

/// Numeric statistics of feature `k` from its accumulator and the reservoir.
pub(super) fn numeric_stats(
    acc: &NumAcc,
    reservoir: &Reservoir,
    k: usize,
    rows: u64,
) -> NumericStats {
    let sample = reservoir.column(k);
    NumericStats {
        min: acc.min,
        max: acc.max,
        mean: acc.mean(),
        std: acc.std(),
        distinct: acc.distinct.len() as u64,
        quantiles: quantiles(&sample, quantile_count(rows), acc.min, acc.max),
        whole_numbers: acc.whole,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_classified_like_pandas_reads_them() {
        assert_eq!(classify("12"), Cell::Finite { v: 12.0, int: true });
        assert_eq!(classify("-1"), Cell::Finite { v: -1.0, int: true });
        assert_eq!(classify("1.0"), Cell::Finite { v: 1.0, int: false });
        assert_eq!(
            classify("1e3"),
            Cell::Finite {
                v: 1000.0,
                int: false
            }
        );
        assert_eq!(
            classify("99999999999999999999"),
            Cell::Finite {
                v: 1e20,
                int: false
            }
        );
        for nf in ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e400"] {
            assert_eq!(classify(nf), Cell::NonFinite, "{nf}");
        }
        assert_eq!(classify(""), Cell::Missing);
        for t in ["tcp", "1,5", "0x10", "--1", "+"] {
            assert_eq!(classify(t), Cell::Text, "{t}");
        }
    }

    #[test]
    fn quantiles_interpolate_like_numpy_and_pin_the_ends() {
        // numpy.quantile([1, 2, 3, 4], [0, 1/3, 2/3, 1]) = [1, 2, 3, 4];
        // numpy.quantile([0, 10], [0, .25, .5, .75, 1]) = [0, 2.5, 5, 7.5, 10]
        assert_eq!(
            quantiles(&[1.0, 2.0, 3.0, 4.0], 4, 1.0, 4.0),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(
            quantiles(&[0.0, 10.0], 5, 0.0, 10.0),
            [0.0, 2.5, 5.0, 7.5, 10.0]
        );
        // The sample may miss the extremes; the ends are the exact column min and max.
        let q = quantiles(&[2.0, 3.0], 3, -5.0, 9.0);
        assert_eq!(q, [-5.0, 2.5, 9.0]);
        assert_eq!(quantiles(&[7.0], 10, 7.0, 7.0), vec![7.0; 10]);
        assert_eq!(quantile_count(100), 10);
        assert_eq!(quantile_count(43_419), 1000);
        assert_eq!(quantile_count(9_000), 300);
    }

    #[test]
    fn welford_matches_two_pass_mean_and_population_std() {
        let xs = [1e9 + 1.0, 1e9 + 2.0, 1e9 + 3.0, 1e9 + 4.0];
        let mut acc = NumAcc::default();
        for x in xs {
            acc.push(x, true);
        }
        assert!((acc.mean() - (1e9 + 2.5)).abs() < 1e-6);
        assert!((acc.std() - 1.25f64.sqrt()).abs() < 1e-6);
        assert_eq!(
            (acc.min, acc.max, acc.distinct.len()),
            (1e9 + 1.0, 1e9 + 4.0, 4)
        );
        let mut flags = NumAcc::default();
        for x in [0.0, 1.0, -0.0, 1.0] {
            flags.push(x, true);
        }
        assert!(flags.is_zero_one());
    }

    #[test]
    fn reservoir_is_deterministic_and_bounded() {
        let run = || {
            let mut r = Reservoir::new();
            for i in 0..(QUANTILE_SAMPLE_ROWS as u64 + 5_000) {
                if let Some(slot) = r.slot() {
                    r.put(slot, &[i as f64]);
                }
            }
            r.column(0)
        };
        let a = run();
        assert_eq!(a.len(), QUANTILE_SAMPLE_ROWS);
        assert_eq!(a, run());
        assert!(
            a.iter().any(|&x| x >= QUANTILE_SAMPLE_ROWS as f64),
            "later rows get sampled"
        );
    }
}
