//! Classifier two-sample test (SDMetrics' LogisticDetection): can a logistic regression tell
//! real rows from synthetic ones? Rows are labelled 0 (real) / 1 (synthetic), split into
//! stratified folds; each fold's held-out ROC AUC becomes 1 - (2 * max(AUC, 0.5) - 1), and the
//! score is the mean: 1.0 when the classifier does no better than chance, 0.0 when it separates
//! the two perfectly.
//!
//! The logistic regression is fitted by Newton's method (IRLS) with an L2 penalty of ½‖w‖²
//! (scikit-learn's default `C = 1`; the intercept is not penalised), on standardised features.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use crate::frame::Matrix;
use crate::report::Detection;
use crate::stats::mean_std;

/// Newton iterations at most; the fit stops earlier when the step is tiny.
const MAX_ITER: usize = 50;

/// Solves `a x = b` for a symmetric positive-definite `a` (n x n, row-major) by Cholesky.
/// Returns None when `a` is not positive definite.
fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = vec![0f64; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    Some(x)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// A fitted binary logistic regression: weights then intercept.
#[derive(Debug, Clone)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub intercept: f64,
}

impl Logistic {
    /// Fits on the rows `idx` of `x` with 0/1 targets `y` (indexed like `x`).
    pub fn fit(x: &Matrix, y: &[u8], idx: &[usize], l2: f64) -> Logistic {
        let d = x.cols;
        let n = d + 1; // + intercept
        let mut w = vec![0f64; n];
        for _ in 0..MAX_ITER {
            let mut grad = vec![0f64; n];
            let mut hess = vec![0f64; n * n];
            let mut row = vec![0f64; n];
            for &i in idx {
                for (r, &v) in row.iter_mut().zip(x.row(i)) {
                    *r = v as f64;
                }
                row[d] = 1.0;
                let z: f64 = row.iter().zip(&w).map(|(a, b)| a * b).sum();
                let p = sigmoid(z);
                let g = p - y[i] as f64;
                let h = (p * (1.0 - p)).max(1e-12);
                for a in 0..n {
                    grad[a] += g * row[a];
                    let ha = h * row[a];
                    if ha != 0.0 {
                        for b in 0..=a {
                            hess[a * n + b] += ha * row[b];
                        }
                    }
                }
            }
            for a in 0..n {
                for b in 0..a {
                    hess[b * n + a] = hess[a * n + b];
                }
            }
            for a in 0..d {
                grad[a] += l2 * w[a];
                hess[a * n + a] += l2;
            }
            // A tiny ridge on the intercept keeps the system solvable for one-class folds.
            hess[d * n + d] += 1e-9;
            let Some(step) = cholesky_solve(&hess, &grad, n) else {
                break;
            };
            let mut max_step: f64 = 0.0;
            for (wa, s) in w.iter_mut().zip(&step) {
                *wa -= s;
                max_step = max_step.max(s.abs());
            }
            if max_step < 1e-8 {
                break;
            }
        }
        let intercept = w[d];
        w.truncate(d);
        Logistic {
            weights: w,
            intercept,
        }
    }

    /// Probability of class 1 for row `i` of `x`.
    pub fn predict(&self, x: &Matrix, i: usize) -> f64 {
        let z: f64 = x
            .row(i)
            .iter()
            .zip(&self.weights)
            .map(|(&a, &b)| a as f64 * b)
            .sum::<f64>()
            + self.intercept;
        sigmoid(z)
    }
}

/// ROC AUC by the Mann-Whitney statistic (ties get average ranks). NaN without both classes.
pub fn roc_auc(scores: &[f64], y: &[u8]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = r;
        }
        i = j + 1;
    }
    let pos = y.iter().filter(|&&v| v == 1).count() as f64;
    let neg = y.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(y)
        .filter(|(_, v)| **v == 1)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Standardises the columns of `m` in place (constant columns become 0).
fn standardize(m: &mut Matrix) {
    for j in 0..m.cols {
        let (mean, sd) = mean_std((0..m.rows).map(|i| m.data[i * m.cols + j] as f64));
        let sd = if sd > 0.0 { sd } else { 1.0 };
        for i in 0..m.rows {
            let v = &mut m.data[i * m.cols + j];
            *v = ((*v as f64 - mean) / sd) as f32;
        }
    }
}

/// LogisticDetection of `synthetic` against `real` (encoded alike), `folds`-fold stratified CV.
pub fn logistic_detection(real: &Matrix, synthetic: &Matrix, folds: usize, seed: u64) -> Detection {
    let mut x = real.vstack(synthetic);
    standardize(&mut x);
    let y: Vec<u8> = std::iter::repeat_n(0u8, real.rows)
        .chain(std::iter::repeat_n(1u8, synthetic.rows))
        .collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut real_idx: Vec<usize> = (0..real.rows).collect();
    let mut syn_idx: Vec<usize> = (real.rows..real.rows + synthetic.rows).collect();
    real_idx.shuffle(&mut rng);
    syn_idx.shuffle(&mut rng);
    let folds = folds.max(2);
    let fold_of = |k: usize, n: usize| k * folds / n.max(1);
    let mut aucs = Vec::with_capacity(folds);
    for f in 0..folds {
        let mut train = Vec::new();
        let mut test = Vec::new();
        for (set, n) in [(&real_idx, real.rows), (&syn_idx, synthetic.rows)] {
            for (k, &i) in set.iter().enumerate() {
                if fold_of(k, n) == f {
                    test.push(i);
                } else {
                    train.push(i);
                }
            }
        }
        let model = Logistic::fit(&x, &y, &train, 1.0);
        let scores: Vec<f64> = test.iter().map(|&i| model.predict(&x, i)).collect();
        let labels: Vec<u8> = test.iter().map(|&i| y[i]).collect();
        let auc = roc_auc(&scores, &labels);
        if auc.is_finite() {
            aucs.push(auc);
        }
    }
    let score = if aucs.is_empty() {
        f64::NAN
    } else {
        aucs.iter()
            .map(|&a| 1.0 - (2.0 * a.max(0.5) - 1.0))
            .sum::<f64>()
            / aucs.len() as f64
    };
    Detection {
        score,
        auc_per_fold: aucs,
        folds,
        real_rows: real.rows,
        synthetic_rows: synthetic.rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(v: &[f32]) -> Matrix {
        Matrix {
            rows: v.len(),
            cols: 1,
            data: v.to_vec(),
        }
    }

    #[test]
    fn auc_hand_computed() {
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), 0.0);
        // Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered -> 0.75.
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]), 0.75);
        // All tied: 0.5.
        assert_eq!(roc_auc(&[0.5; 4], &[0, 1, 0, 1]), 0.5);
        assert!(roc_auc(&[0.5, 0.6], &[1, 1]).is_nan());
    }

    #[test]
    fn cholesky_solves() {
        // [[4, 2], [2, 3]] x = [2, 1] -> x = [0.5, 0].
        let x = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[2.0, 1.0], 2).expect("spd");
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!(cholesky_solve(&[0.0, 0.0, 0.0, 0.0], &[1.0, 1.0], 2).is_none());
    }

    #[test]
    fn logistic_matches_closed_form_without_features() {
        // Only an intercept: the MLE is logit of the positive share, 3/4 -> ln 3.
        let x = Matrix {
            rows: 4,
            cols: 0,
            data: vec![],
        };
        let m = Logistic::fit(&x, &[1, 1, 1, 0], &[0, 1, 2, 3], 1.0);
        assert!((m.intercept - 3f64.ln()).abs() < 1e-6, "{}", m.intercept);
    }

    #[test]
    fn identical_data_is_undetectable_and_disjoint_data_fully_detected() {
        let real = col(&(0..300).map(|i| (i % 50) as f32).collect::<Vec<_>>());
        let d = logistic_detection(&real, &real, 3, 1);
        assert!(d.score > 0.9, "{d:?}");
        let far = col(&(0..300)
            .map(|i| 1000.0 + (i % 50) as f32)
            .collect::<Vec<_>>());
        let d = logistic_detection(&real, &far, 3, 1);
        assert_eq!(d.score, 0.0, "{d:?}");
        assert_eq!(d.auc_per_fold.len(), 3);
    }
}
