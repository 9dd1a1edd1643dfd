//! Sample-level quality and privacy: alpha-precision, beta-recall and authenticity (Alaa et al.,
//! "How Faithful is your Synthetic Data?", ICML 2022, in synthcity's *naive* variant: on the
//! encoded features, no one-class embedding) and distance to closest record (DCR).
//!
//! All of these compare every row with every other row, so callers pass subsamples; the report
//! says how many rows were used.

use crate::frame::{Frame, Kind, Matrix, Schema, Values};
use crate::report::{Dcr, QualityCurves};
use crate::stats::{par_map, quantile_sorted};

/// Number of alpha levels of the precision / recall curves (synthcity uses 30).
pub const ALPHA_STEPS: usize = 30;

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// For each row of `queries`: (Euclidean distance, index) of its nearest row in `points`,
/// skipping the row with the same index when `exclude_self` (queries == points).
pub fn nearest(
    queries: &Matrix,
    points: &Matrix,
    exclude_self: bool,
    threads: usize,
) -> Vec<(f64, usize)> {
    par_map(queries.rows, threads, |i| {
        let q = queries.row(i);
        let mut best = (f32::INFINITY, usize::MAX);
        for j in 0..points.rows {
            if exclude_self && i == j {
                continue;
            }
            let d = sq_dist(q, points.row(j));
            if d < best.0 {
                best = (d, j);
            }
        }
        ((best.0 as f64).sqrt(), best.1)
    })
}

fn mean_row(m: &Matrix) -> Vec<f64> {
    let mut c = vec![0f64; m.cols];
    for i in 0..m.rows {
        for (a, &v) in c.iter_mut().zip(m.row(i)) {
            *a += v as f64;
        }
    }
    let n = m.rows.max(1) as f64;
    c.iter_mut().for_each(|a| *a /= n);
    c
}

fn dist_to(row: &[f32], center: &[f64]) -> f64 {
    row.iter()
        .zip(center)
        .map(|(&x, &c)| (x as f64 - c) * (x as f64 - c))
        .sum::<f64>()
        .sqrt()
}

/// Alpha-precision, beta-recall and authenticity.
#[derive(Debug, Clone)]
pub struct Quality {
    /// Delta_precision_alpha: 1 - Σ|alpha - precision(alpha)| / Σ alpha.
    pub alpha_precision: f64,
    /// Delta_coverage_beta: 1 - Σ|beta - recall(beta)| / Σ beta.
    pub beta_recall: f64,
    pub authenticity: f64,
    pub curves: QualityCurves,
}

/// Alpha-precision / beta-recall / authenticity of `synthetic` against `real` (both encoded the
/// same way; synthcity min-max scales numerics and one-hot encodes categoricals).
///
/// - alpha-precision curve: share of synthetic rows within the real alpha-quantile radius around
///   the real mean;
/// - beta-recall curve: share of real rows whose nearest synthetic row is closer than their
///   nearest real neighbour and lies within the beta-quantile radius (around the synthetic
///   mean) of such nearest synthetic rows;
/// - authenticity: share of synthetic rows farther from their nearest real row than that real
///   row is from its own nearest real neighbour (the paper's definition; synthcity's code indexes
///   the real-to-real distances by the synthetic row's index instead, which only coincides with
///   it when both sides have the same row order).
pub fn alpha_beta_authenticity(real: &Matrix, synthetic: &Matrix, threads: usize) -> Quality {
    let alphas: Vec<f64> = (0..ALPHA_STEPS)
        .map(|k| k as f64 / (ALPHA_STEPS - 1) as f64)
        .collect();
    let real_center = mean_row(real);
    let synth_center = mean_row(synthetic);

    let mut real_to_center: Vec<f64> = (0..real.rows)
        .map(|i| dist_to(real.row(i), &real_center))
        .collect();
    real_to_center.sort_by(f64::total_cmp);
    let radii: Vec<f64> = alphas
        .iter()
        .map(|&a| quantile_sorted(&real_to_center, a))
        .collect();
    let synth_to_center: Vec<f64> = (0..synthetic.rows)
        .map(|i| dist_to(synthetic.row(i), &real_center))
        .collect();

    let real_to_real: Vec<f64> = nearest(real, real, true, threads)
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let real_to_synth = nearest(real, synthetic, false, threads);
    let closest_synth_d: Vec<f64> = real_to_synth
        .iter()
        .map(|&(_, j)| dist_to(synthetic.row(j), &synth_center))
        .collect();
    let mut sorted_closest = closest_synth_d.clone();
    sorted_closest.sort_by(f64::total_cmp);
    let closest_radii: Vec<f64> = alphas
        .iter()
        .map(|&a| quantile_sorted(&sorted_closest, a))
        .collect();

    let ns = synthetic.rows.max(1) as f64;
    let nr = real.rows.max(1) as f64;
    let mut precision_curve = Vec::with_capacity(ALPHA_STEPS);
    let mut recall_curve = Vec::with_capacity(ALPHA_STEPS);
    for k in 0..ALPHA_STEPS {
        precision_curve
            .push(synth_to_center.iter().filter(|&&d| d <= radii[k]).count() as f64 / ns);
        let covered = (0..real.rows)
            .filter(|&i| {
                real_to_synth[i].0 <= real_to_real[i] && closest_synth_d[i] <= closest_radii[k]
            })
            .count();
        recall_curve.push(covered as f64 / nr);
    }
    let sum_alpha: f64 = alphas.iter().sum();
    let delta = |curve: &[f64]| {
        1.0 - alphas
            .iter()
            .zip(curve)
            .map(|(a, p)| (a - p).abs())
            .sum::<f64>()
            / sum_alpha
    };

    let synth_to_real = nearest(synthetic, real, false, threads);
    let authentic = synth_to_real
        .iter()
        .filter(|&&(d, i)| d > real_to_real[i])
        .count();

    Quality {
        alpha_precision: delta(&precision_curve),
        beta_recall: delta(&recall_curve),
        authenticity: authentic as f64 / ns,
        curves: QualityCurves {
            alphas,
            alpha_precision: precision_curve,
            beta_recall: recall_curve,
            real_rows: real.rows,
            synthetic_rows: synthetic.rows,
        },
    }
}

/// Per-column ranges of the reference data, for the DCR distance.
fn ranges(schema: &Schema, reference: &Frame) -> Vec<f64> {
    schema
        .columns
        .iter()
        .zip(&reference.columns)
        .map(|(spec, values)| match (&spec.kind, values) {
            (Kind::Numeric { .. }, Values::Numeric(x)) => {
                let min = x.iter().copied().fold(f64::INFINITY, f64::min);
                let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max > min { max - min } else { 0.0 }
            }
            _ => 0.0,
        })
        .collect()
}

/// Row-major mixed representation for the DCR distance: numerics divided by their range,
/// categoricals as codes (compared for equality).
struct Mixed {
    numeric: Vec<f64>,
    codes: Vec<u32>,
    n_num: usize,
    n_cat: usize,
    rows: usize,
}

impl Mixed {
    fn new(schema: &Schema, frame: &Frame, ranges: &[f64]) -> Mixed {
        let num: Vec<usize> = schema.numeric_columns().collect();
        let cat: Vec<usize> = (0..schema.columns.len())
            .filter(|j| !schema.columns[*j].is_numeric())
            .collect();
        let rows = frame.rows();
        let mut numeric = Vec::with_capacity(rows * num.len());
        let mut codes = Vec::with_capacity(rows * cat.len());
        for i in 0..rows {
            for &j in &num {
                let v = frame.columns[j].numeric()[i];
                // A column constant in the reference contributes |a - b| > 0 as "different".
                numeric.push(if ranges[j] > 0.0 { v / ranges[j] } else { v });
            }
            for &j in &cat {
                codes.push(frame.columns[j].codes()[i]);
            }
        }
        Mixed {
            numeric,
            codes,
            n_num: num.len(),
            n_cat: cat.len(),
            rows,
        }
    }

    /// SDMetrics' DCR row distance: mean over columns of min(1, |a - b| / range) for numerics and
    /// 0/1 mismatch for categoricals.
    fn distance(&self, i: usize, other: &Mixed, j: usize) -> f64 {
        let a = &self.numeric[i * self.n_num..(i + 1) * self.n_num];
        let b = &other.numeric[j * other.n_num..(j + 1) * other.n_num];
        let mut d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).abs().min(1.0)).sum();
        let ca = &self.codes[i * self.n_cat..(i + 1) * self.n_cat];
        let cb = &other.codes[j * other.n_cat..(j + 1) * other.n_cat];
        d += ca.iter().zip(cb).filter(|(x, y)| x != y).count() as f64;
        d / (self.n_num + self.n_cat).max(1) as f64
    }

    fn nearest_in(&self, other: &Mixed, threads: usize) -> Vec<f64> {
        par_map(self.rows, threads, |i| {
            (0..other.rows)
                .map(|j| self.distance(i, other, j))
                .fold(f64::INFINITY, f64::min)
        })
    }
}

/// Distance to closest record of each synthetic row in `train` and in `holdout` (equal sizes
/// expected), compared row by row.
pub fn dcr(
    schema: &Schema,
    train: &Frame,
    holdout: &Frame,
    synthetic: &Frame,
    holdout_name: &str,
    threads: usize,
) -> Dcr {
    let r = ranges(schema, train);
    let t = Mixed::new(schema, train, &r);
    let h = Mixed::new(schema, holdout, &r);
    let s = Mixed::new(schema, synthetic, &r);
    let to_train = s.nearest_in(&t, threads);
    let to_holdout = s.nearest_in(&h, threads);
    let closer: f64 = to_train
        .iter()
        .zip(&to_holdout)
        .map(|(a, b)| {
            if a < b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            }
        })
        .sum();
    let share = closer / s.rows.max(1) as f64;
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        quantile_sorted(&v, 0.5)
    };
    Dcr {
        share_closer_to_train: share,
        score: (2.0 * (1.0 - share)).min(1.0),
        median_dcr_train: median(&to_train),
        median_dcr_holdout: median(&to_holdout),
        synthetic_rows: s.rows,
        reference_rows: t.rows,
        holdout: holdout_name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ColumnSpec;

    fn m(rows: &[&[f32]]) -> Matrix {
        Matrix {
            rows: rows.len(),
            cols: rows[0].len(),
            data: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    #[test]
    fn nearest_excludes_self() {
        let a = m(&[&[0.0], &[1.0], &[5.0]]);
        let n = nearest(&a, &a, true, 2);
        assert_eq!(n, vec![(1.0, 1), (1.0, 0), (4.0, 1)]);
        let n = nearest(&a, &a, false, 3);
        assert_eq!(n[2], (0.0, 2));
    }

    #[test]
    fn far_away_synthetic_data_has_no_precision_no_recall_full_authenticity() {
        let real = m(&[&[0.0, 0.0], &[0.1, 0.0], &[0.0, 0.1], &[0.1, 0.1]]);
        let syn = m(&[&[5.0, 5.0], &[5.1, 5.0], &[5.0, 5.1], &[5.1, 5.1]]);
        let q = alpha_beta_authenticity(&real, &syn, 2);
        // Precision curve: only alpha = 1 ... not even: the synthetic rows lie outside every
        // real radius, so the curve is all zeros and Delta = 1 - Σα/Σα = 0.
        assert!(q.curves.alpha_precision.iter().all(|&p| p == 0.0));
        assert_eq!(q.alpha_precision, 0.0);
        // No real row has a synthetic neighbour closer than its real neighbour.
        assert_eq!(q.beta_recall, 0.0);
        assert_eq!(q.authenticity, 1.0);
    }

    #[test]
    fn copies_are_not_authentic() {
        let real = m(&[&[0.0], &[1.0], &[3.0], &[6.0]]);
        // Two exact copies (distance 0 < the real neighbour gap) and two new points:
        // 10 -> nearest real 6 at 4 > 6's real gap 3: authentic; 2.9 -> nearest real 3 at 0.1
        // < 3's gap 2: not authentic.
        let syn = m(&[&[0.0], &[6.0], &[10.0], &[2.9]]);
        let q = alpha_beta_authenticity(&real, &syn, 1);
        assert_eq!(q.authenticity, 0.25);
    }

    #[test]
    fn identical_data_has_near_ideal_curves() {
        let pts: Vec<Vec<f32>> = (0..200)
            .map(|i| vec![(i % 20) as f32 / 20.0, (i / 20) as f32 / 10.0])
            .collect();
        let rows: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let real = m(&rows);
        let q = alpha_beta_authenticity(&real, &real, 2);
        // Same points: the precision curve is the empirical CDF of the real radii itself.
        assert!(q.alpha_precision > 0.95, "{}", q.alpha_precision);
        assert!(q.beta_recall > 0.95, "{}", q.beta_recall);
        // Every synthetic row is a copy.
        assert_eq!(q.authenticity, 0.0);
    }

    fn schema() -> Schema {
        Schema {
            columns: vec![
                ColumnSpec::numeric("x", false),
                ColumnSpec::categorical("p", &["a", "b"]),
            ],
            label: "label".into(),
            classes: vec!["c".into()],
        }
    }

    fn frame(x: &[f64], p: &[u32]) -> Frame {
        Frame {
            columns: vec![Values::Numeric(x.to_vec()), Values::Categorical(p.to_vec())],
            labels: vec![0; x.len()],
        }
    }

    #[test]
    fn dcr_hand_computed() {
        let s = schema();
        // Train range of x = 10.
        let train = frame(&[0.0, 10.0], &[0, 1]);
        let holdout = frame(&[5.0, 5.0], &[0, 0]);
        // Row 1 copies train row 0: d_train 0, d_holdout (0.5 + 0)/2 = 0.25 -> closer to train.
        // Row 2 = (5, a): d_train = min((0.5+0)/2, (0.5+1)/2) = 0.25, d_holdout 0 -> holdout.
        // Row 3 = (2.5, b): d_train = min((0.25+1)/2, (0.75+0)/2) = 0.375,
        //   d_holdout = (0.25+1)/2 = 0.625 -> train.
        // Row 4 = (100, a): capped numerics: d_train = min((1+0)/2, (1+1)/2) = 0.5,
        //   d_holdout = (1+0)/2 = 0.5 -> tie, counts half.
        let syn = frame(&[0.0, 5.0, 2.5, 100.0], &[0, 0, 1, 0]);
        let d = dcr(&s, &train, &holdout, &syn, "test", 2);
        assert!((d.share_closer_to_train - 2.5 / 4.0).abs() < 1e-12);
        assert!((d.score - 0.75).abs() < 1e-12);
        // Distances to train: 0, 0.25, 0.375, 0.5 -> median 0.3125.
        assert!((d.median_dcr_train - 0.3125).abs() < 1e-12);
    }
}
