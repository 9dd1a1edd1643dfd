//! Pass 1: one streaming read of every input that decides column types, which rows survive
//! cleaning, and every statistic the manifest carries.
//!
//! Type inference looks at every row that has a label (before non-finite and duplicate rows are
//! removed), so one text value anywhere makes a column categorical. Row cleaning, however, needs
//! the types while streaming: a NaN in a numeric column drops the row, a NaN in a text column is
//! just a category. The scan therefore decides with the types known *so far* and notes when such
//! a decision could have been wrong (a column that dropped rows turned out to be text, or a
//! column held an empty value before its first number). Likewise a column's distinct texts
//! (its vocabulary, if it is categorical) are collected only once it has shown text, so a column
//! whose first text comes after kept rows also needs the second look. Only then is the scan
//! repeated with the types fixed from the first run, so ordinary files take two passes in total
//! and unusual ones three, and the result is always exact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::ops::Range;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::chunks::{Chunk, GroupError, Piece, Row, all_ok, on_groups, ranges, split_by};
use super::input::Records;
use super::plan::{Label, Plan, normalise_label};
use super::{DISTINCT_CAP, QUANTILE_SAMPLE_ROWS, VOCABULARY_CAP};
use crate::error::{Error, Result};
use crate::manifest::{NonFinitePolicy, NumericStats, RowDrops, SourceFile};

/// Hash sets of the scan: a fixed-seed fast hash (the sets only count and collect values, so
/// neither their order nor resistance to crafted collisions matters).
type FastSet<T> = HashSet<T, foldhash::fast::FixedState>;

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
    if let Some(cell) = plain_decimal(s) {
        return cell;
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

/// Exact powers of ten as `f64` (10^22 is the largest that is).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The fast path of [`classify`] for what flow exports mostly hold: `-?digits(.digits)?` with at
/// most 15 digits (`0.05`, `1234`, `-3`). The digits form an integer `m < 2^53` and the value is
/// `m / 10^k` with both exact in `f64`, so one correctly rounded division gives exactly what the
/// full float parser gives (Clinger's fast path). Anything else returns `None`.
fn plain_decimal(s: &str) -> Option<Cell> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = match body.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (body, None),
    };
    let frac_digits = frac.map_or("", |f| f);
    let digits = whole.len() + frac_digits.len();
    // `1.` and `.5` parse as floats too but are rare; the full parser handles them.
    if whole.is_empty() || frac.is_some_and(str::is_empty) || digits > 15 {
        return None;
    }
    let mut m: u64 = 0;
    for b in whole.bytes().chain(frac_digits.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        m = m * 10 + u64::from(b - b'0');
    }
    let magnitude = match POW10.get(frac_digits.len()) {
        Some(&p) if frac.is_some() => m as f64 / p,
        _ => m as f64,
    };
    // Negated as a float so that `-0` stays -0.0, as the float parser reads it.
    let v = if negative { -magnitude } else { magnitude };
    Some(Cell::Finite {
        v,
        int: frac.is_none(),
    })
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

/// Trimmed UTF-8 text of feature field `k` (source column `c`, which errors name), or the error
/// naming file, line and column.
pub(super) fn field_text<'r>(
    rec: Row<'r>,
    k: usize,
    c: usize,
    plan: &Plan,
    path: &Path,
    line: u64,
) -> Result<&'r str> {
    // ASCII trimming is much cheaper than `str::trim` and covers what CSV writers pad with
    // (spaces, tabs, the CR of CRLF).
    if let Some(text) = rec.feature_str(k) {
        return Ok(text.trim_ascii());
    }
    let raw = rec.feature(k).unwrap_or_default().trim_ascii();
    std::str::from_utf8(raw).map_err(|_| Error::NotUtf8 {
        path: path.to_path_buf(),
        line,
        column: plan.name(c).to_string(),
    })
}

/// 128-bit fingerprint of a row's kept-by-name fields (trimmed) and normalised label, for
/// exact-duplicate removal. Two independent 64-bit SipHashes make a collision between distinct
/// rows negligible even for 10^9 rows.
pub(super) fn row_key(rec: Row<'_>, label: &str) -> u128 {
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
    for k in 0..rec.features() {
        add(rec.feature(k).unwrap_or_default().trim_ascii());
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// A record's normalised label; the error names file, line and column.
fn row_label<'r>(rec: Row<'r>, plan: &Plan, path: &Path, line: u64) -> Result<Label<'r>> {
    normalise_label(rec.label(), plan.repair_labels).ok_or_else(|| Error::NotUtf8 {
        path: path.to_path_buf(),
        line,
        column: plan.name(plan.label).to_string(),
    })
}

/// The normalised labels of a chunk's records up to the first that is not UTF-8, and that one's
/// error (which comes after any error of an earlier record).
pub(super) fn chunk_labels<'c>(
    chunk: &'c Chunk,
    plan: &Plan,
    path: &Path,
) -> (Vec<Label<'c>>, Option<Error>) {
    let mut labels = Vec::with_capacity(chunk.len());
    for (r, &line) in chunk.lines.iter().enumerate() {
        match row_label(chunk.row(r), plan, path, line) {
            Ok(l) => labels.push(l),
            Err(e) => return (labels, Some(e)),
        }
    }
    (labels, None)
}

/// Checks a record's width (`found` fields).
pub(super) fn check_width(found: usize, plan: &Plan, path: &Path, line: u64) -> Result<()> {
    if found != plan.width {
        return Err(Error::RaggedRow {
            path: path.to_path_buf(),
            line,
            expected: plan.width,
            found,
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
    pub distinct: FastSet<u64>,
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
            distinct: FastSet::default(),
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
        // Whole without `fract` (a libm call on baseline x86-64): every float from 2^52 up is
        // whole, and below that the truncating conversion round-trips exactly when it is.
        self.whole &= v.abs() >= 4_503_599_627_370_496.0 || (v as i64) as f64 == v;
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
    /// Kept rows whose text was not collected because the column looked numeric then (the
    /// texts are only needed for a categorical column; see [`Scan::needs_rerun`]).
    untracked_texts: bool,
    /// First non-finite value (file index, line, text), for the Error policy.
    pub first_non_finite: Option<(usize, u64, String)>,
    pub num: NumAcc,
    /// Distinct trimmed texts over kept rows, at most `VOCABULARY_CAP`; collected only while the
    /// column may be categorical (complete when `!untracked_texts` or the types were fixed).
    pub texts: FastSet<Box<str>>,
    pub texts_overflow: bool,
    /// The previous kept row's text (a buffer reused row after row): repeats skip the set.
    last_text: Option<String>,
    /// This column's values in the quantile sample (row `i` of the sample at index `i`; NaN
    /// where the value was not a finite number).
    sample: Vec<f64>,
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
                self.texts = FastSet::default();
                self.last_text = None;
                return;
            }
            self.texts.insert(text.into());
        }
        let last = self.last_text.get_or_insert_with(String::new);
        last.clear();
        last.push_str(text);
    }

    /// Puts this column's value of a sampled row at `slot` of the quantile sample.
    fn sample_at(&mut self, slot: usize, value: f64) {
        if let Some(v) = self.sample.get_mut(slot) {
            *v = value;
        } else {
            self.sample.push(value);
        }
    }

    /// Sorted finite values of the quantile sample.
    pub fn sorted_sample(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .sample
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        // Unstable is fine: values equal under the total order are identical.
        v.sort_unstable_by(f64::total_cmp);
        v
    }
}

/// Which kept rows make up the uniform quantile sample (Algorithm R); the sampled values
/// themselves live with their columns ([`ColumnScan`]), so column groups fill them in parallel.
#[derive(Debug)]
pub(super) struct Reservoir {
    /// Rows in the sample.
    pub rows: usize,
    seen: u64,
    rng: StdRng,
}

impl Reservoir {
    fn new() -> Self {
        Self {
            rows: 0,
            seen: 0,
            rng: StdRng::seed_from_u64(RESERVOIR_SEED),
        }
    }

    /// Where the next kept row goes in the sample, if it is sampled.
    fn slot(&mut self) -> Option<usize> {
        self.seen += 1;
        if self.rows < QUANTILE_SAMPLE_ROWS {
            self.rows += 1;
            return Some(self.rows - 1);
        }
        let j = self.rng.random_range(0..self.seen);
        usize::try_from(j)
            .ok()
            .filter(|&j| j < QUANTILE_SAMPLE_ROWS)
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
        let drops_may_be_wrong = self.policy == NonFinitePolicy::Drop
            && self.cols.iter().any(|c| {
                (c.is_numeric() && c.unresolved_non_finite) || (!c.is_numeric() && c.caused_drops)
            });
        // Texts are collected only once a column shows text (a numeric column, by far the most
        // common, needs none, and collecting them cost a quarter of the scan); a column whose
        // first text came after kept rows lacks those rows' texts.
        let texts_incomplete = self
            .cols
            .iter()
            .any(|c| !c.is_numeric() && c.untracked_texts);
        self.tentative && (drops_may_be_wrong || texts_incomplete)
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

/// What every column group of one chunk shares.
struct ChunkCtx<'c> {
    chunk: &'c Chunk,
    /// Whether each record to process has a label (the records before the first label error).
    labelled: &'c [bool],
    plan: &'c Plan,
    path: &'c Path,
    policy: NonFinitePolicy,
}

/// A column group: a contiguous range of the feature columns with their state.
struct Group<'s> {
    /// Position of the range's first column among the features.
    first: usize,
    cols: &'s mut [ColumnScan],
    sources: &'s [usize],
    fixed: Option<&'s [bool]>,
}

/// Phase 1 of a chunk for one group: every cell classified (row-major, the group's width per
/// record), and which records a non-finite value of this group drops.
struct Classified<'c> {
    cells: Vec<(Cell, &'c str)>,
    drops: Vec<bool>,
}

/// Splits the columns into groups over `ranges`.
fn groups<'s>(
    cols: &'s mut [ColumnScan],
    sources: &'s [usize],
    fixed: Option<&'s [bool]>,
    ranges: &[Range<usize>],
) -> Vec<Group<'s>> {
    split_by(cols, ranges)
        .into_iter()
        .zip(ranges)
        .map(|(cols, r)| Group {
            first: r.start,
            cols,
            sources: sources.get(r.clone()).unwrap_or_default(),
            fixed: fixed.and_then(|f| f.get(r.clone())),
        })
        .collect()
}

/// Phase 1: classifies the group's cells and updates the type evidence from labelled records.
/// Errors carry their (row, column) position so the earliest across groups can be reported.
fn classify_group<'c>(
    ctx: &ChunkCtx<'c>,
    g: Group<'_>,
) -> std::result::Result<Classified<'c>, GroupError> {
    let rows = ctx.labelled.len();
    let mut cells = Vec::with_capacity(rows * g.cols.len());
    let mut drops = vec![false; rows];
    for (r, (drop, (&line, &labelled))) in drops
        .iter_mut()
        .zip(ctx.chunk.lines.iter().zip(ctx.labelled))
        .enumerate()
    {
        let rec = ctx.chunk.row(r);
        for (j, (col, &c)) in g.cols.iter_mut().zip(g.sources).enumerate() {
            let k = g.first + j;
            let text = field_text(rec, k, c, ctx.plan, ctx.path, line).map_err(|e| (r, k, e))?;
            let cell = classify(text);
            cells.push((cell, text));
            if !labelled {
                continue;
            }
            match cell {
                Cell::Text => col.text_seen = true,
                Cell::Finite { .. } => col.number_seen = true,
                Cell::NonFinite | Cell::Missing => {
                    if cell == Cell::NonFinite {
                        col.number_seen = true;
                    }
                    let numeric_now = match g.fixed {
                        Some(types) => types.get(j).copied().unwrap_or(false),
                        None => col.is_numeric(),
                    };
                    match ctx.policy {
                        NonFinitePolicy::Drop if numeric_now => {
                            // A labelled record with a culprit is always dropped for it.
                            *drop = true;
                            col.caused_drops = true;
                        }
                        NonFinitePolicy::Drop => {
                            if !col.text_seen {
                                col.unresolved_non_finite = true;
                            }
                        }
                        NonFinitePolicy::Error => {
                            if !col.text_seen && col.first_non_finite.is_none() {
                                col.first_non_finite =
                                    Some((ctx.chunk.file, line, text.to_string()));
                            }
                        }
                        NonFinitePolicy::Zero => {}
                    }
                }
            }
        }
    }
    Ok(Classified { cells, drops })
}

/// Phase 3: statistics and sample values of the kept records `kept` for one group. With
/// `values`, also returns per column each record's value as it entered the statistics (NaN for
/// none and for records not kept), for pass 2 to reuse.
fn accumulate_group(
    g: Group<'_>,
    classified: &Classified<'_>,
    kept: &[(usize, Option<usize>)],
    policy: NonFinitePolicy,
    values: bool,
) -> Vec<Vec<f64>> {
    let width = g.cols.len();
    let rows = classified.drops.len();
    let mut out = Vec::with_capacity(if values { width } else { 0 });
    // Column by column: one column's state stays hot and its branches predictable.
    for (j, col) in g.cols.iter_mut().enumerate() {
        let mut column = if values {
            vec![f64::NAN; rows]
        } else {
            Vec::new()
        };
        // Texts matter only for a categorical column: with the types fixed, collect them for
        // those; while streaming, once a column has shown text.
        let collect_texts = match g.fixed {
            Some(types) => !types.get(j).copied().unwrap_or(false),
            None => col.text_seen,
        };
        if !collect_texts && !kept.is_empty() {
            col.untracked_texts = true;
        }
        for &(r, slot) in kept {
            let Some(&(cell, text)) = classified.cells.get(r * width + j) else {
                continue;
            };
            let mut value = f64::NAN;
            if !col.text_seen {
                match cell {
                    Cell::Finite { v, int } => {
                        col.num.push(v, int);
                        value = v;
                    }
                    Cell::NonFinite | Cell::Missing if policy == NonFinitePolicy::Zero => {
                        col.num.push(0.0, true);
                        value = 0.0;
                    }
                    _ => {}
                }
            }
            if collect_texts && !col.texts_overflow {
                col.add_text(text);
            }
            if let Some(slot) = slot {
                col.sample_at(slot, value);
            }
            if let Some(v) = column.get_mut(r) {
                *v = value;
            }
        }
        if values {
            out.push(column);
        }
    }
    out
}

/// Pass 1, fed the input piece by piece. `fixed` gives the feature types (numeric or not) when
/// they are known from an earlier run.
pub(super) struct Scanner<'a> {
    inputs: &'a [PathBuf],
    plan: &'a Plan,
    fixed: Option<&'a [bool]>,
    seen: Option<HashSet<u128>>,
    /// Column ranges processed side by side.
    ranges: Vec<Range<usize>>,
    rows_kept: u64,
    s: Scan,
}

impl<'a> Scanner<'a> {
    pub fn new(
        inputs: &'a [PathBuf],
        plan: &'a Plan,
        policy: NonFinitePolicy,
        dedup: bool,
        fixed: Option<&'a [bool]>,
        threads: usize,
    ) -> Self {
        let features = plan.features();
        let nf = features.len();
        Self {
            inputs,
            plan,
            fixed,
            seen: dedup.then(HashSet::new),
            ranges: ranges(nf, threads),
            rows_kept: 0,
            s: Scan {
                features,
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
            },
        }
    }

    /// Takes in one piece. For a chunk and with `values`, returns per feature each record's
    /// value as it entered the statistics (NaN where none did), which pass 2 can reuse; else,
    /// and for a file's end, nothing.
    pub fn feed(&mut self, piece: &Piece, values: bool) -> Result<Vec<Vec<f64>>> {
        match piece {
            Piece::Rows(chunk) => self.chunk(chunk, values),
            Piece::FileEnd { file, rows } => {
                let path = self.inputs.get(*file).cloned().unwrap_or_default();
                if *rows == 0 {
                    return Err(if self.plan.header {
                        Error::NoRows { path }
                    } else {
                        Error::EmptyFile { path }
                    });
                }
                self.s.files.push(SourceFile {
                    path: path.display().to_string(),
                    rows_read: *rows,
                    rows_kept: std::mem::take(&mut self.rows_kept),
                });
                Ok(Vec::new())
            }
        }
    }

    pub fn finish(self) -> Scan {
        self.s
    }

    fn chunk(&mut self, chunk: &Chunk, values: bool) -> Result<Vec<Vec<f64>>> {
        let plan = self.plan;
        let path = self
            .inputs
            .get(chunk.file)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""));
        let policy = self.s.policy;
        let (labels, label_error) = chunk_labels(chunk, plan, path);
        let labelled: Vec<bool> = labels.iter().map(|l| !l.text.is_empty()).collect();
        let ctx = ChunkCtx {
            chunk,
            labelled: &labelled,
            plan,
            path,
            policy,
        };

        // Phase 1 (column groups): cells and type evidence.
        let classified = on_groups(
            groups(&mut self.s.cols, &self.s.features, self.fixed, &self.ranges),
            |g| classify_group(&ctx, g),
        );
        let done = all_ok(classified)?;
        if let Some(e) = label_error {
            return Err(e);
        }

        // Phase 2 (whole records, in order): drops, duplicates, labels, the sample's rows.
        let s = &mut self.s;
        let mut kept: Vec<(usize, Option<usize>)> = Vec::with_capacity(labels.len());
        for (r, label) in labels.into_iter().enumerate() {
            if label.text.is_empty() {
                s.drops.empty_label += 1;
                continue;
            }
            if let Some(from) = label.rewritten_from.as_ref()
                && s.rewrites.len() < VOCABULARY_CAP
                && !s.rewrites.contains_key(from)
            {
                s.rewrites.insert(from.clone(), label.text.to_string());
            }
            if done
                .iter()
                .any(|g| g.drops.get(r).copied().unwrap_or(false))
            {
                s.drops.non_finite += 1;
                continue;
            }
            if let Some(seen) = self.seen.as_mut()
                && !seen.insert(row_key(chunk.row(r), &label.text))
            {
                s.drops.duplicates += 1;
                continue;
            }
            self.rows_kept += 1;
            s.kept += 1;
            if let Some(n) = s.labels.get_mut(label.text.as_ref()) {
                *n += 1;
            } else if s.labels.len() < VOCABULARY_CAP {
                s.labels.insert(label.text.into_owned(), 1);
            } else {
                s.labels_overflow = true;
            }
            kept.push((r, s.reservoir.slot()));
        }

        // Phase 3 (column groups): statistics of the kept records.
        let work: Vec<(Group<'_>, &Classified<'_>)> =
            groups(&mut s.cols, &s.features, self.fixed, &self.ranges)
                .into_iter()
                .zip(&done)
                .collect();
        let values = on_groups(work, |(g, c)| accumulate_group(g, c, &kept, policy, values));
        Ok(values.into_iter().flatten().collect())
    }
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

/// Numeric statistics of a column from its accumulator and its quantile sample.
pub(super) fn numeric_stats(col: &ColumnScan, rows: u64) -> NumericStats {
    let acc = &col.num;
    let sample = col.sorted_sample();
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
        // The fast path gives exactly what the float parser gives.
        for t in [
            "0.05",
            "-0",
            "-0.0",
            "123456789012345",
            "0.1",
            "0.30000000000000004",
            "9.999999999999999",
            "-12.5",
            "007",
            "1234567890123456",
            "3.14159265358979",
            "1e5",
            "+4",
            "1.",
            ".5",
        ] {
            let want = t.parse::<f64>().unwrap();
            match classify(t) {
                Cell::Finite { v, int } => {
                    assert_eq!(v.to_bits(), want.to_bits(), "{t}");
                    assert_eq!(int, is_int_literal(t), "{t}");
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        // And on many random decimals of every length the fast path takes.
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200_000 {
            let digits: u32 = rng.random_range(1..9);
            let whole: u64 = rng.random_range(0..10u64.pow(digits));
            let frac_len = rng.random_range(0..8);
            let frac: u64 = rng.random_range(0..10u64.pow(frac_len as u32).max(1));
            let t = match frac_len {
                0 => format!("{whole}"),
                n => format!(
                    "{}{whole}.{frac:0n$}",
                    if rng.random_bool(0.3) { "-" } else { "" }
                ),
            };
            let want = t.parse::<f64>().unwrap();
            let Cell::Finite { v, .. } = classify(&t) else {
                panic!("{t}");
            };
            assert_eq!(v.to_bits(), want.to_bits(), "{t}");
        }
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
            let mut col = ColumnScan::default();
            for i in 0..(QUANTILE_SAMPLE_ROWS as u64 + 5_000) {
                if let Some(slot) = r.slot() {
                    col.sample_at(slot, i as f64);
                }
            }
            assert_eq!(r.rows, QUANTILE_SAMPLE_ROWS);
            col.sorted_sample()
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
