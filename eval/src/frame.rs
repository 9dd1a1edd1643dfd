//! The in-memory form every metric works on: the three datasets (train, test, synthetic) aligned
//! on one schema, by column name, with categorical values and class names coded against shared
//! vocabularies. Datasets converted separately (NSL-KDD's test file has services and attacks the
//! training file lacks) code the same string differently in their own manifests; here a code means
//! the same value in every frame.

use std::collections::{BTreeMap, HashMap};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::index::sample;

use crate::stats::mean_std;

/// What a feature column holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A number. `integer` is true when the stored type is an integer (a count, a port, a flag).
    Numeric { integer: bool },
    /// A category out of `vocabulary` (codes index into it). The training data's values come
    /// first; values only seen in test or synthetic data are appended.
    Categorical { vocabulary: Vec<String> },
}

/// One feature column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub kind: Kind,
}

impl ColumnSpec {
    pub fn numeric(name: impl Into<String>, integer: bool) -> Self {
        ColumnSpec {
            name: name.into(),
            kind: Kind::Numeric { integer },
        }
    }

    pub fn categorical(name: impl Into<String>, vocabulary: &[&str]) -> Self {
        ColumnSpec {
            name: name.into(),
            kind: Kind::Categorical {
                vocabulary: vocabulary.iter().map(|v| v.to_string()).collect(),
            },
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self.kind, Kind::Numeric { .. })
    }
}

/// The shared schema: the training data's feature columns (in its order) and the class names.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub columns: Vec<ColumnSpec>,
    /// Name of the label column.
    pub label: String,
    /// Class names; label codes index into it. Training classes first.
    pub classes: Vec<String>,
}

impl Schema {
    /// Code of `value` in categorical column `col`, added to the vocabulary when new.
    pub(crate) fn code(
        &mut self,
        lookup: &mut [HashMap<String, u32>],
        col: usize,
        value: &str,
    ) -> u32 {
        if let Some(&c) = lookup[col].get(value) {
            return c;
        }
        let Kind::Categorical { vocabulary } = &mut self.columns[col].kind else {
            return 0;
        };
        let c = vocabulary.len() as u32;
        vocabulary.push(value.to_string());
        lookup[col].insert(value.to_string(), c);
        c
    }

    /// Index of the class named `name`.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }

    /// Class name -> count for the classes with a non-zero count in `counts` (indexed by code).
    pub fn named_counts(&self, counts: &[usize]) -> BTreeMap<String, usize> {
        counts
            .iter()
            .zip(&self.classes)
            .filter(|(n, _)| **n > 0)
            .map(|(&n, name)| (name.clone(), n))
            .collect()
    }

    pub fn numeric_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_numeric())
            .map(|(i, _)| i)
    }
}

/// One column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Numeric(Vec<f64>),
    Categorical(Vec<u32>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Numeric(v) => v.len(),
            Values::Categorical(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numeric values (empty slice for a categorical column).
    pub fn numeric(&self) -> &[f64] {
        match self {
            Values::Numeric(v) => v,
            Values::Categorical(_) => &[],
        }
    }

    /// The categorical codes (empty slice for a numeric column).
    pub fn codes(&self) -> &[u32] {
        match self {
            Values::Categorical(v) => v,
            Values::Numeric(_) => &[],
        }
    }
}

/// Rows of one dataset, column-major, coded against a [`Schema`].
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// One entry per schema column, in schema order.
    pub columns: Vec<Values>,
    /// Class code per row.
    pub labels: Vec<u32>,
}

impl Frame {
    /// An empty frame for `schema`.
    pub fn empty(schema: &Schema) -> Self {
        Frame {
            columns: schema
                .columns
                .iter()
                .map(|c| match c.kind {
                    Kind::Numeric { .. } => Values::Numeric(Vec::new()),
                    Kind::Categorical { .. } => Values::Categorical(Vec::new()),
                })
                .collect(),
            labels: Vec::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// The rows at `idx` (in that order, repeats allowed).
    pub fn select(&self, idx: &[usize]) -> Frame {
        Frame {
            columns: self
                .columns
                .iter()
                .map(|v| match v {
                    Values::Numeric(x) => Values::Numeric(idx.iter().map(|&i| x[i]).collect()),
                    Values::Categorical(x) => {
                        Values::Categorical(idx.iter().map(|&i| x[i]).collect())
                    }
                })
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Appends `other`'s rows (same schema).
    pub fn append(&mut self, other: &Frame) {
        for (a, b) in self.columns.iter_mut().zip(&other.columns) {
            match (a, b) {
                (Values::Numeric(a), Values::Numeric(b)) => a.extend_from_slice(b),
                (Values::Categorical(a), Values::Categorical(b)) => a.extend_from_slice(b),
                // Frames of one schema always agree on kinds.
                _ => {}
            }
        }
        self.labels.extend_from_slice(&other.labels);
    }

    /// Rows per class code (length `n_classes`).
    pub fn class_counts(&self, n_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; n_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Row indices per class code (length `n_classes`; codes beyond it are left out).
    pub fn rows_by_class(&self, n_classes: usize) -> Vec<Vec<usize>> {
        let mut rows = vec![Vec::new(); n_classes];
        for (i, &c) in self.labels.iter().enumerate() {
            if let Some(r) = rows.get_mut(c as usize) {
                r.push(i);
            }
        }
        rows
    }

    /// A uniform subsample of at most `max` rows (all rows, in order, when there are fewer).
    pub fn subsample(&self, max: usize, seed: u64) -> Frame {
        if self.rows() <= max {
            return self.clone();
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut idx = sample(&mut rng, self.rows(), max).into_vec();
        idx.sort_unstable();
        self.select(&idx)
    }

    /// Rows drawn without replacement class by class: `want(class, rows of the class)` of each
    /// of the `n_classes` classes (all of a class's rows when it asks for as many or more), in
    /// the frame's order.
    pub fn sample_per_class(
        &self,
        n_classes: usize,
        seed: u64,
        want: impl Fn(usize, usize) -> usize,
    ) -> Frame {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut idx = Vec::new();
        for (c, rows) in self.rows_by_class(n_classes).into_iter().enumerate() {
            let n = want(c, rows.len());
            if n >= rows.len() {
                idx.extend(rows);
            } else {
                idx.extend(sample(&mut rng, rows.len(), n).into_iter().map(|k| rows[k]));
            }
        }
        idx.sort_unstable();
        self.select(&idx)
    }

    /// Indices of the rows whose class is in `keep` (a mask over class codes).
    pub fn rows_of_classes(&self, keep: &[bool]) -> Vec<usize> {
        (0..self.rows())
            .filter(|&i| keep.get(self.labels[i] as usize).copied().unwrap_or(false))
            .collect()
    }
}

/// A dense row-major `f32` matrix: the input of the distance-based metrics and of the detectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `idx`.
    pub fn select(&self, idx: &[usize]) -> Matrix {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Matrix {
            rows: idx.len(),
            cols: self.cols,
            data,
        }
    }

    /// Stacks `self` on top of `other` (same width).
    pub fn vstack(&self, other: &Matrix) -> Matrix {
        let mut data = self.data.clone();
        data.extend_from_slice(&other.data);
        Matrix {
            rows: self.rows + other.rows,
            cols: self.cols,
            data,
        }
    }
}

/// How numeric columns are scaled by an [`Encoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// (x - min) / (max - min) over the reference data (synthcity's encoding for its distance
    /// metrics).
    MinMax,
    /// (x - mean) / std over the reference data (SDMetrics' detection metrics, the MLP).
    Standard,
    /// sign(x) * ln(1 + |x|), then standardised: tames the heavy tails of byte and packet counts
    /// for neural networks.
    LogStandard,
}

/// Numeric scaling plus one-hot categoricals, fitted on a reference frame (the real training data)
/// and applied unchanged to every other frame, so all of them live in one space.
#[derive(Debug, Clone)]
pub struct Encoder {
    scaling: Scaling,
    /// Per schema column: (offset, scale) for numerics; unused for categoricals.
    affine: Vec<(f64, f64)>,
    /// Per schema column: width in the encoded matrix (1 for numerics, vocabulary size for
    /// categoricals).
    widths: Vec<usize>,
}

impl Encoder {
    pub fn fit(schema: &Schema, reference: &Frame, scaling: Scaling) -> Encoder {
        let mut affine = Vec::with_capacity(schema.columns.len());
        let mut widths = Vec::with_capacity(schema.columns.len());
        for (spec, values) in schema.columns.iter().zip(&reference.columns) {
            match (&spec.kind, values) {
                (Kind::Numeric { .. }, Values::Numeric(x)) => {
                    let t: Vec<f64> = x.iter().map(|&v| transform(scaling, v)).collect();
                    affine.push(fit_affine(scaling, &t));
                    widths.push(1);
                }
                (Kind::Categorical { vocabulary }, _) => {
                    affine.push((0.0, 1.0));
                    widths.push(vocabulary.len());
                }
                _ => {
                    affine.push((0.0, 1.0));
                    widths.push(1);
                }
            }
        }
        Encoder {
            scaling,
            affine,
            widths,
        }
    }

    /// Width of the encoded matrix.
    pub fn width(&self) -> usize {
        self.widths.iter().sum()
    }

    /// Encodes `frame`. Categorical codes beyond the vocabulary known at fit time are encoded as
    /// all zeros.
    pub fn encode(&self, frame: &Frame) -> Matrix {
        let rows = frame.rows();
        let cols = self.width();
        let mut data = vec![0f32; rows * cols];
        let mut offset = 0;
        for (j, values) in frame.columns.iter().enumerate() {
            match values {
                Values::Numeric(x) => {
                    let (a, s) = self.affine[j];
                    for (i, &v) in x.iter().enumerate() {
                        data[i * cols + offset] = ((transform(self.scaling, v) - a) / s) as f32;
                    }
                }
                Values::Categorical(x) => {
                    for (i, &c) in x.iter().enumerate() {
                        if (c as usize) < self.widths[j] {
                            data[i * cols + offset + c as usize] = 1.0;
                        }
                    }
                }
            }
            offset += self.widths[j];
        }
        Matrix { rows, cols, data }
    }
}

fn transform(scaling: Scaling, v: f64) -> f64 {
    match scaling {
        Scaling::LogStandard => v.signum() * v.abs().ln_1p(),
        _ => v,
    }
}

/// (offset, scale) with a scale of 1 for constant columns, so they encode as 0 instead of NaN.
fn fit_affine(scaling: Scaling, x: &[f64]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 1.0);
    }
    let (offset, scale) = match scaling {
        Scaling::MinMax => {
            let min = x.iter().copied().fold(f64::INFINITY, f64::min);
            let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (min, max - min)
        }
        Scaling::Standard | Scaling::LogStandard => mean_std(x.iter().copied()),
    };
    if scale > 0.0 && scale.is_finite() {
        (offset, scale)
    } else {
        (offset, 1.0)
    }
}

/// Features for tree models: numerics as they are, categoricals as their codes (trees split
/// ordinal codes well enough, and the matrix stays narrow).
pub fn ordinal_matrix(frame: &Frame) -> Matrix {
    let rows = frame.rows();
    let cols = frame.columns.len();
    let mut data = vec![0f32; rows * cols];
    for (j, values) in frame.columns.iter().enumerate() {
        match values {
            Values::Numeric(x) => {
                for (i, &v) in x.iter().enumerate() {
                    data[i * cols + j] = v as f32;
                }
            }
            Values::Categorical(x) => {
                for (i, &c) in x.iter().enumerate() {
                    data[i * cols + j] = c as f32;
                }
            }
        }
    }
    Matrix { rows, cols, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            columns: vec![
                ColumnSpec::numeric("bytes", true),
                ColumnSpec::categorical("proto", &["tcp", "udp"]),
            ],
            label: "label".into(),
            classes: vec!["normal".into(), "attack".into()],
        }
    }

    #[test]
    fn minmax_one_hot_encoding() {
        let s = schema();
        let f = Frame {
            columns: vec![
                Values::Numeric(vec![0.0, 5.0, 10.0]),
                Values::Categorical(vec![1, 0, 1]),
            ],
            labels: vec![0, 1, 0],
        };
        let e = Encoder::fit(&s, &f, Scaling::MinMax);
        let m = e.encode(&f);
        assert_eq!((m.rows, m.cols), (3, 3));
        assert_eq!(m.row(1), &[0.5, 1.0, 0.0]);
        assert_eq!(m.row(2), &[1.0, 0.0, 1.0]);
        assert_eq!(f.class_counts(2), vec![2, 1]);
        assert_eq!(f.select(&[2, 2]).labels, vec![0, 0]);
    }

    #[test]
    fn constant_column_encodes_to_zero() {
        let s = schema();
        let f = Frame {
            columns: vec![
                Values::Numeric(vec![3.0, 3.0]),
                Values::Categorical(vec![0, 0]),
            ],
            labels: vec![0, 0],
        };
        let m = Encoder::fit(&s, &f, Scaling::Standard).encode(&f);
        assert_eq!(m.row(0), &[0.0, 1.0, 0.0]);
    }
}
