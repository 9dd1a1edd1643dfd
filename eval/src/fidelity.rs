//! Fidelity of marginals and pairwise dependence, with SDMetrics' definitions so the numbers
//! compare with published tables:
//!
//! - KSComplement = 1 - D, D the two-sample Kolmogorov-Smirnov statistic (numeric columns);
//! - TVComplement = 1 - TVD, TVD = ½ Σ |p_real - p_syn| over categories (categorical columns);
//! - CorrelationSimilarity = 1 - |r_real - r_syn| / 2, Pearson r (numeric pairs);
//! - ContingencySimilarity = 1 - ½ Σ |p_real(a,b) - p_syn(a,b)| over the joint table (categorical
//!   and mixed pairs; numerics cut into 10 equal-width bins over the real range, outer bins open);
//! - shape and trend = the mean of the defined column and pair scores.
//!
//! Pearson r is undefined for a constant column: such pairs score NaN (None in the report) and
//! are left out of the trend, and the report lists the column with the reason.

use crate::frame::{Frame, Kind, Schema, Values};
use crate::report::{ColumnScore, PairScore, Skipped};

/// Number of equal-width bins a numeric column is cut into for ContingencySimilarity.
pub const CONTINGENCY_BINS: usize = 10;

/// Two-sample Kolmogorov-Smirnov statistic: sup over x of |F_a(x) - F_b(x)|. Inputs need not be
/// sorted; NaN values must have been removed. Returns NaN when either side is empty.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut d: f64 = 0.0;
    // Walk the merged order; evaluate the gap only after consuming every copy of a value, so
    // ties between the samples do not create spurious jumps.
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// KSComplement of one numeric column.
pub fn ks_complement(real: &[f64], synthetic: &[f64]) -> f64 {
    1.0 - ks_statistic(real, synthetic)
}

/// Shares of each code in `0..k`.
fn shares(codes: &[u32], k: usize) -> Vec<f64> {
    let mut counts = vec![0f64; k];
    for &c in codes {
        if let Some(x) = counts.get_mut(c as usize) {
            *x += 1.0;
        }
    }
    let n = codes.len().max(1) as f64;
    counts.iter().map(|c| c / n).collect()
}

/// TVComplement of one categorical column (codes below `k`).
pub fn tv_complement(real: &[u32], synthetic: &[u32], k: usize) -> f64 {
    if real.is_empty() || synthetic.is_empty() {
        return f64::NAN;
    }
    let p = shares(real, k);
    let q = shares(synthetic, k);
    1.0 - 0.5 * p.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

/// Pearson correlation; NaN when either column is constant (zero variance) or too short.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for k in 0..n {
        let (dx, dy) = (x[k] - mx, y[k] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// CorrelationSimilarity from the two correlations (NaN propagates).
pub fn correlation_similarity(r_real: f64, r_synthetic: f64) -> f64 {
    1.0 - (r_real - r_synthetic).abs() / 2.0
}

/// Bin edges of `CONTINGENCY_BINS` equal-width bins over the real range (numpy's
/// `histogram_bin_edges`, which widens a zero-width range to [min - 0.5, max + 0.5]).
pub fn bin_edges(real: &[f64], bins: usize) -> Vec<f64> {
    let min = real.iter().copied().fold(f64::INFINITY, f64::min);
    let max = real.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if !min.is_finite() {
        (0.0, 1.0)
    } else if min == max {
        (min - 0.5, max + 0.5)
    } else {
        (min, max)
    };
    (0..=bins)
        .map(|k| lo + (hi - lo) * k as f64 / bins as f64)
        .collect()
}

/// Bin index of `v` for `edges` (right-closed bins except the first, as numpy's histogram);
/// values outside the real range fall into the outer bins.
pub fn bin_of(v: f64, edges: &[f64]) -> u32 {
    let bins = edges.len() - 1;
    // Interior edges only: everything below edge 1 is bin 0, everything above edge bins-1 is
    // the last bin.
    let inner = &edges[1..bins];
    inner.partition_point(|&e| e <= v) as u32
}

/// ContingencySimilarity of two discrete columns (codes below `ka` and `kb`).
pub fn contingency_similarity(
    real_a: &[u32],
    real_b: &[u32],
    syn_a: &[u32],
    syn_b: &[u32],
    ka: usize,
    kb: usize,
) -> f64 {
    if real_a.is_empty() || syn_a.is_empty() {
        return f64::NAN;
    }
    let table = |a: &[u32], b: &[u32]| {
        let mut t = vec![0f64; ka * kb];
        for (&x, &y) in a.iter().zip(b) {
            if let Some(c) = t.get_mut(x as usize * kb + y as usize) {
                *c += 1.0;
            }
        }
        let n = a.len() as f64;
        t.iter_mut().for_each(|c| *c /= n);
        t
    };
    let p = table(real_a, real_b);
    let q = table(syn_a, syn_b);
    1.0 - 0.5 * p.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

/// All fidelity results of one evaluation.
#[derive(Debug, Clone)]
pub struct Fidelity {
    pub shape: Option<f64>,
    pub trend: Option<f64>,
    pub columns: Vec<ColumnScore>,
    pub pairs: Vec<PairScore>,
    pub skipped: Vec<Skipped>,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn mean_of(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = xs.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn is_constant(x: &[f64]) -> bool {
    x.windows(2).all(|w| w[0] == w[1])
}

/// Column shapes and column-pair trends of `synthetic` against `real`.
pub fn evaluate(schema: &Schema, real: &Frame, synthetic: &Frame) -> Fidelity {
    let mut columns = Vec::with_capacity(schema.columns.len());
    let mut skipped = Vec::new();
    // Discrete view of every column for the contingency tables: (real codes, synthetic codes, k).
    let mut discrete: Vec<(Vec<u32>, Vec<u32>, usize)> = Vec::with_capacity(schema.columns.len());
    for (j, spec) in schema.columns.iter().enumerate() {
        match (&spec.kind, &real.columns[j], &synthetic.columns[j]) {
            (Kind::Numeric { .. }, Values::Numeric(r), Values::Numeric(s)) => {
                columns.push(ColumnScore {
                    column: spec.name.clone(),
                    metric: "KSComplement".into(),
                    score: finite(ks_complement(r, s)),
                });
                let edges = bin_edges(r, CONTINGENCY_BINS);
                discrete.push((
                    r.iter().map(|&v| bin_of(v, &edges)).collect(),
                    s.iter().map(|&v| bin_of(v, &edges)).collect(),
                    CONTINGENCY_BINS,
                ));
                if is_constant(r) {
                    skipped.push(Skipped {
                        column: spec.name.clone(),
                        reason: "constant in the real data: Pearson correlation is undefined \
                                 (NaN), its numeric pairs are left out of trend"
                            .into(),
                    });
                } else if is_constant(s) {
                    skipped.push(Skipped {
                        column: spec.name.clone(),
                        reason: "constant in the synthetic data: Pearson correlation is \
                                 undefined (NaN), its numeric pairs are left out of trend"
                            .into(),
                    });
                }
            }
            (Kind::Categorical { vocabulary }, Values::Categorical(r), Values::Categorical(s)) => {
                let k = vocabulary.len();
                columns.push(ColumnScore {
                    column: spec.name.clone(),
                    metric: "TVComplement".into(),
                    score: finite(tv_complement(r, s, k)),
                });
                discrete.push((r.clone(), s.clone(), k));
            }
            _ => discrete.push((Vec::new(), Vec::new(), 1)),
        }
    }

    let mut pairs = Vec::new();
    let n = schema.columns.len();
    for a in 0..n {
        for b in a + 1..n {
            let (sa, sb) = (&schema.columns[a], &schema.columns[b]);
            if sa.is_numeric() && sb.is_numeric() {
                let r_real = pearson(real.columns[a].numeric(), real.columns[b].numeric());
                let r_syn = pearson(
                    synthetic.columns[a].numeric(),
                    synthetic.columns[b].numeric(),
                );
                pairs.push(PairScore {
                    a: sa.name.clone(),
                    b: sb.name.clone(),
                    metric: "CorrelationSimilarity".into(),
                    score: finite(correlation_similarity(r_real, r_syn)),
                    real: finite(r_real),
                    synthetic: finite(r_syn),
                });
            } else {
                let (ra, sa_codes, ka) = &discrete[a];
                let (rb, sb_codes, kb) = &discrete[b];
                pairs.push(PairScore {
                    a: sa.name.clone(),
                    b: sb.name.clone(),
                    metric: "ContingencySimilarity".into(),
                    score: finite(contingency_similarity(ra, rb, sa_codes, sb_codes, *ka, *kb)),
                    real: None,
                    synthetic: None,
                });
            }
        }
    }
    Fidelity {
        shape: mean_of(columns.iter().map(|c| c.score)),
        trend: mean_of(pairs.iter().map(|p| p.score)),
        columns,
        pairs,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ColumnSpec;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn ks_identical_is_zero_and_disjoint_is_one() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(ks_statistic(&a, &a), 0.0);
        assert_eq!(ks_complement(&a, &a), 1.0);
        assert_eq!(ks_statistic(&a, &[10.0, 11.0]), 1.0);
        assert_eq!(ks_complement(&[10.0, 11.0], &a), 0.0);
    }

    #[test]
    fn ks_hand_computed() {
        // a = {1,2,3,4}, b = {3,4,5,6}: after x = 2, F_a = 2/4 and F_b = 0 -> D = 0.5;
        // after x = 3: 3/4 vs 1/4 -> 0.5; after 4: 1 vs 2/4 -> 0.5. D = 0.5.
        assert!(close(
            ks_statistic(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 6.0]),
            0.5
        ));
        // Ties across samples: a = {0,0,0,1}, b = {0,1,1,1}: at x = 0 F_a = 3/4, F_b = 1/4.
        assert!(close(
            ks_statistic(&[0.0, 0.0, 0.0, 1.0], &[0.0, 1.0, 1.0, 1.0]),
            0.5
        ));
        // Different sizes: a = {1,2,3}, b = {2}: at x = 1 F_a = 1/3, F_b = 0; at x = 2
        // 2/3 vs 1 -> 1/3; at x = 3 1 vs 1. D = 1/3.
        assert!(close(ks_statistic(&[3.0, 1.0, 2.0], &[2.0]), 1.0 / 3.0));
        assert!(ks_statistic(&[], &[1.0]).is_nan());
    }

    #[test]
    fn tv_complement_hand_computed() {
        // real shares (0.5, 0.5, 0), synthetic (0.25, 0.25, 0.5): TVD = ½(0.25+0.25+0.5) = 0.5.
        assert!(close(tv_complement(&[0, 1, 0, 1], &[0, 1, 2, 2], 3), 0.5));
        assert_eq!(tv_complement(&[0, 1], &[1, 0], 2), 1.0);
        assert_eq!(tv_complement(&[0, 0], &[1, 1], 2), 0.0);
    }

    #[test]
    fn pearson_and_correlation_similarity() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!(close(pearson(&x, &[2.0, 4.0, 6.0, 8.0]), 1.0));
        assert!(close(pearson(&x, &[8.0, 6.0, 4.0, 2.0]), -1.0));
        assert!(pearson(&x, &[5.0; 4]).is_nan());
        // r = +1 against r = -1: 1 - 2/2 = 0.
        assert_eq!(correlation_similarity(1.0, -1.0), 0.0);
        assert_eq!(correlation_similarity(0.3, 0.3), 1.0);
        assert!(correlation_similarity(f64::NAN, 0.3).is_nan());
    }

    #[test]
    fn binning_matches_numpy_histogram() {
        let edges = bin_edges(&[0.0, 10.0], 10);
        assert_eq!(edges.len(), 11);
        // numpy: 0 -> bin 0, 1.0 (an edge) -> bin 1, 9.99 -> bin 9, 10 (last edge) -> bin 9.
        assert_eq!(bin_of(0.0, &edges), 0);
        assert_eq!(bin_of(1.0, &edges), 1);
        assert_eq!(bin_of(9.99, &edges), 9);
        assert_eq!(bin_of(10.0, &edges), 9);
        // Out of the real range: open outer bins.
        assert_eq!(bin_of(-5.0, &edges), 0);
        assert_eq!(bin_of(1e9, &edges), 9);
        // Constant column: numpy widens to [v - 0.5, v + 0.5].
        let e = bin_edges(&[3.0, 3.0], 10);
        assert!(close(e[0], 2.5) && close(e[10], 3.5));
    }

    #[test]
    fn contingency_hand_computed() {
        // Real joint: (0,0) ½, (1,1) ½. Synthetic: (0,1) ½, (1,1) ½.
        // ½ (|½-0| + |0-½| + |½-½|) = ½.
        let s = contingency_similarity(&[0, 1], &[0, 1], &[0, 1], &[1, 1], 2, 2);
        assert!(close(s, 0.5));
        assert_eq!(
            contingency_similarity(&[0, 1], &[0, 1], &[1, 0], &[1, 0], 2, 2),
            1.0
        );
    }

    fn schema() -> Schema {
        Schema {
            columns: vec![
                ColumnSpec::numeric("x", false),
                ColumnSpec::numeric("y", false),
                ColumnSpec::numeric("c", true),
                ColumnSpec::categorical("p", &["tcp", "udp"]),
            ],
            label: "label".into(),
            classes: vec!["a".into()],
        }
    }

    #[test]
    fn identical_data_scores_one_and_constant_column_is_skipped() {
        let f = Frame {
            columns: vec![
                Values::Numeric(vec![1.0, 2.0, 3.0, 4.0]),
                Values::Numeric(vec![2.0, 1.0, 4.0, 3.0]),
                Values::Numeric(vec![7.0; 4]),
                Values::Categorical(vec![0, 1, 1, 0]),
            ],
            labels: vec![0; 4],
        };
        let fid = evaluate(&schema(), &f, &f);
        assert_eq!(fid.shape, Some(1.0));
        assert_eq!(fid.trend, Some(1.0));
        assert_eq!(fid.columns.len(), 4);
        // 6 pairs: x-y, x-c, y-c numeric (the two with c undefined), x-p, y-p, c-p contingency.
        assert_eq!(fid.pairs.len(), 6);
        let undefined: Vec<_> = fid.pairs.iter().filter(|p| p.score.is_none()).collect();
        assert_eq!(undefined.len(), 2);
        assert!(undefined.iter().all(|p| p.b == "c"));
        assert_eq!(fid.skipped.len(), 1);
        assert_eq!(fid.skipped[0].column, "c");
    }

    #[test]
    fn disjoint_data_scores_zero_shape() {
        let s = Schema {
            columns: vec![schema().columns[0].clone(), schema().columns[3].clone()],
            label: "label".into(),
            classes: vec!["a".into()],
        };
        let real = Frame {
            columns: vec![
                Values::Numeric(vec![1.0, 2.0]),
                Values::Categorical(vec![0, 0]),
            ],
            labels: vec![0; 2],
        };
        let syn = Frame {
            columns: vec![
                Values::Numeric(vec![10.0, 20.0]),
                Values::Categorical(vec![1, 1]),
            ],
            labels: vec![0; 2],
        };
        let fid = evaluate(&s, &real, &syn);
        assert_eq!(fid.shape, Some(0.0));
        // x binned over the real range [1, 2]: synthetic 10 and 20 land in the last bin, real in
        // bins 0 and 9, categories disjoint: the joint tables share nothing.
        assert_eq!(fid.trend, Some(0.0));
    }
}
