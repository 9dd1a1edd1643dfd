//! Fidelity of marginals and pairwise dependence, computed as SDMetrics' QualityReport (0.32)
//! computes them, so the numbers compare with published tables:
//!
//! - KSComplement = 1 - D, D the two-sample Kolmogorov-Smirnov statistic (numeric columns);
//! - TVComplement = 1 - TVD, TVD = ½ Σ |p_real - p_syn| over categories (categorical columns);
//! - CorrelationSimilarity = 1 - |r_real - r_syn| / 2, Pearson r (numeric pairs);
//! - ContingencySimilarity = 1 - ½ Σ |p_real(a,b) - p_syn(a,b)| over the joint table (categorical
//!   and mixed pairs). A numeric column is cut into 10 equal-width bins over *its own side's*
//!   range (`numpy.histogram_bin_edges`, then `numpy.digitize`), real and synthetic separately,
//!   as the report does;
//! - shape = the mean of the defined column scores; trend = the mean of the scores of the pairs
//!   whose real dependence is strong enough to judge: |r_real| > 0.5 for a numeric pair,
//!   Cramér's V of the real contingency table > 0.3 otherwise (QualityReport's default
//!   thresholds). The other pairs are scored and listed but do not count.
//!
//! Pearson r is undefined for a constant column: such pairs score NaN (None in the report) and
//! are left out of the trend, and the report lists the column with the reason.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::index::sample;

use crate::frame::{Frame, Kind, Schema, Values};
use crate::report::{ColumnScore, PairScore, Skipped};

/// Number of equal-width bins a numeric column is cut into for ContingencySimilarity.
pub const CONTINGENCY_BINS: usize = 10;

/// QualityReport's `num_rows_subsample`: a contingency pair of tables larger than this is
/// scored on a random subsample of this many rows of each side (SDMetrics draws a fresh,
/// unseeded sample per pair; here one seeded sample serves every pair, so the figure is
/// reproducible and differs from SDMetrics' only by sampling noise).
pub const CONTINGENCY_SUBSAMPLE_ROWS: usize = 50_000;

/// QualityReport's default `real_correlation_threshold`: numeric pairs count in the trend only
/// when the real |Pearson r| exceeds it.
pub const CORRELATION_THRESHOLD: f64 = 0.5;

/// QualityReport's default `real_association_threshold`: other pairs count only when the real
/// data's Cramér's V exceeds it.
pub const ASSOCIATION_THRESHOLD: f64 = 0.3;

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

/// `numpy.histogram_bin_edges(x, bins)`: equal-width edges over x's range, a zero-width range
/// widened to [v - 0.5, v + 0.5]. `bins` must be at least 1.
pub fn bin_edges(x: &[f64], bins: usize) -> Vec<f64> {
    let min = x.iter().copied().fold(f64::INFINITY, f64::min);
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if !min.is_finite() {
        (0.0, 1.0)
    } else if min == max {
        (min - 0.5, max + 0.5)
    } else {
        (min, max)
    };
    // numpy.linspace: i * step + start, the last edge exactly `hi`; the same rounding matters
    // for values that sit on an edge (rates such as 0.3).
    let step = (hi - lo) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins).map(|i| i as f64 * step + lo).collect();
    edges[bins] = hi;
    edges
}

/// `numpy.digitize(v, edges)`: the number of edges <= v (0 below the first edge; the last edge
/// itself gets `edges.len()`).
pub fn digitize(v: f64, edges: &[f64]) -> u32 {
    edges.partition_point(|&e| e <= v) as u32
}

/// A numeric column as QualityReport discretizes it: 10 bins over its own range, codes
/// `0..=CONTINGENCY_BINS + 1`.
pub fn discretize(x: &[f64]) -> Vec<u32> {
    let edges = bin_edges(x, CONTINGENCY_BINS);
    x.iter().map(|&v| digitize(v, &edges)).collect()
}

/// Cramér's V of the contingency table of two discrete columns (codes below `ka` and `kb`),
/// over the values that occur (scipy's `association(..., method="cramer")`, no continuity
/// correction); NaN when either column has a single value.
pub fn cramers_v(a: &[u32], b: &[u32], ka: usize, kb: usize) -> f64 {
    let n = a.len() as f64;
    let mut t = vec![0f64; ka * kb];
    let (mut ra, mut cb) = (vec![0f64; ka], vec![0f64; kb]);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as usize, y as usize);
        if x < ka && y < kb {
            t[x * kb + y] += 1.0;
            ra[x] += 1.0;
            cb[y] += 1.0;
        }
    }
    let rows: Vec<usize> = (0..ka).filter(|&i| ra[i] > 0.0).collect();
    let cols: Vec<usize> = (0..kb).filter(|&j| cb[j] > 0.0).collect();
    if rows.len() < 2 || cols.len() < 2 || n == 0.0 {
        return f64::NAN;
    }
    let mut chi2 = 0.0;
    for &i in &rows {
        for &j in &cols {
            let e = ra[i] * cb[j] / n;
            let d = t[i * kb + j] - e;
            chi2 += d * d / e;
        }
    }
    let k = (rows.len().min(cols.len()) - 1) as f64;
    (chi2 / n / k).sqrt()
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
                discrete.push((discretize(r), discretize(s), CONTINGENCY_BINS + 2));
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

    // Rows of each side the contingency pairs use (all of them for tables of up to
    // CONTINGENCY_SUBSAMPLE_ROWS rows).
    let big = real.rows().max(synthetic.rows()) > CONTINGENCY_SUBSAMPLE_ROWS;
    let pick = |rows: usize, seed: u64| -> Option<Vec<usize>> {
        big.then(|| {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut idx = sample(&mut rng, rows, rows.min(CONTINGENCY_SUBSAMPLE_ROWS)).into_vec();
            idx.sort_unstable();
            idx
        })
    };
    let (real_rows, syn_rows) = (pick(real.rows(), 0x5D17), pick(synthetic.rows(), 0x5D18));
    let subset = |codes: &[u32], idx: &Option<Vec<usize>>| -> Vec<u32> {
        match idx {
            Some(idx) => idx.iter().map(|&i| codes[i]).collect(),
            None => codes.to_vec(),
        }
    };
    let discrete: Vec<(Vec<u32>, Vec<u32>, usize)> = if big {
        discrete
            .into_iter()
            .map(|(r, s, k)| (subset(&r, &real_rows), subset(&s, &syn_rows), k))
            .collect()
    } else {
        discrete
    };

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
                let score = finite(correlation_similarity(r_real, r_syn));
                pairs.push(PairScore {
                    a: sa.name.clone(),
                    b: sb.name.clone(),
                    metric: "CorrelationSimilarity".into(),
                    score,
                    real: finite(r_real),
                    synthetic: finite(r_syn),
                    real_association: finite(r_real.abs()),
                    counted: score.is_some() && r_real.abs() > CORRELATION_THRESHOLD,
                });
            } else {
                let (ra, sa_codes, ka) = &discrete[a];
                let (rb, sb_codes, kb) = &discrete[b];
                let score = finite(contingency_similarity(ra, rb, sa_codes, sb_codes, *ka, *kb));
                let v = cramers_v(ra, rb, *ka, *kb);
                pairs.push(PairScore {
                    a: sa.name.clone(),
                    b: sb.name.clone(),
                    metric: "ContingencySimilarity".into(),
                    score,
                    real: None,
                    synthetic: None,
                    real_association: finite(v),
                    counted: score.is_some() && v > ASSOCIATION_THRESHOLD,
                });
            }
        }
    }
    Fidelity {
        shape: mean_of(columns.iter().map(|c| c.score)),
        trend: mean_of(pairs.iter().filter(|p| p.counted).map(|p| p.score)),
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
    fn binning_matches_numpy_histogram_and_digitize() {
        let edges = bin_edges(&[0.0, 10.0], 10);
        assert_eq!(edges.len(), 11);
        // numpy.digitize(v, edges): 0 -> 1, 1.0 (an edge) -> 2, 9.99 -> 10, 10 (last edge) -> 11.
        assert_eq!(digitize(0.0, &edges), 1);
        assert_eq!(digitize(1.0, &edges), 2);
        assert_eq!(digitize(9.99, &edges), 10);
        assert_eq!(digitize(10.0, &edges), 11);
        assert_eq!(digitize(-5.0, &edges), 0);
        // Constant column: numpy widens to [v - 0.5, v + 0.5].
        let e = bin_edges(&[3.0, 3.0], 10);
        assert!(close(e[0], 2.5) && close(e[10], 3.5));
        // Each side is binned over its own range.
        assert_eq!(discretize(&[0.0, 5.0, 10.0]), vec![1, 6, 11]);
        assert_eq!(discretize(&[100.0, 150.0, 200.0]), vec![1, 6, 11]);
    }

    #[test]
    fn cramers_v_hand_computed() {
        // Perfect association: V = 1; independence: V = 0; a single value: undefined.
        assert!(close(cramers_v(&[0, 0, 1, 1], &[0, 0, 1, 1], 2, 2), 1.0));
        assert!(close(cramers_v(&[0, 0, 1, 1], &[0, 1, 0, 1], 2, 2), 0.0));
        assert!(cramers_v(&[0, 0], &[0, 1], 2, 2).is_nan());
        // [[3, 1], [1, 3]]: chi2 = 2, n = 8, V = sqrt(2 / 8) = 0.5.
        let a = [0, 0, 0, 0, 1, 1, 1, 1];
        let b = [0, 0, 0, 1, 0, 1, 1, 1];
        assert!(close(cramers_v(&a, &b, 2, 2), 0.5));
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
        // The one pair (x, p) has no real association to judge (p is constant in the real
        // data): scored 0, but it does not count.
        assert_eq!(fid.pairs[0].score, Some(0.0));
        assert!(!fid.pairs[0].counted);
        assert_eq!(fid.trend, None);
    }
}
