//! Is class X's synthetic data made of class X rows? Per class of the synthetic set: fidelity
//! (shape, trend, a detection test) against that class's real training rows, class agreement
//! (the share a forest trained on real data assigns to X) and the exact-copy rate, each next to
//! the same figure for real held-out rows of X, which is what the generator can hope to reach.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use crate::detection::logistic_detection;
use crate::downstream::{self, DownstreamOptions};
use crate::error::Result;
use crate::fidelity;
use crate::frame::{Encoder, Frame, Schema, Values};
use crate::report::ClassFidelity;
use crate::stats::par_map;

/// Real training rows per class the agreement judge is trained on (a seeded subset of larger
/// classes), so a class with 20 rows next to one with 60,000 still gets a say in the trees.
pub const JUDGE_ROWS_PER_CLASS: usize = 2_000;

/// Fewest rows on each side for a detection test (3-fold cross-validation needs a few per fold).
const MIN_DETECTION_ROWS: usize = 6;

/// Everything the per-class section needs.
pub struct ClassInputs<'a> {
    pub schema: &'a Schema,
    pub train: &'a Frame,
    pub synthetic: &'a Frame,
    /// Real rows the generator never saw (the test split or `--holdout`).
    pub holdout: &'a Frame,
    /// Synthetic rows per class beyond which the detection test subsamples.
    pub sample_rows: usize,
    pub folds: usize,
    pub seed: u64,
    pub downstream: &'a DownstreamOptions,
    pub encoder: &'a Encoder,
}

/// A fingerprint of one row's feature values (not its label).
fn fingerprint(f: &Frame, i: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in &f.columns {
        match v {
            // Adding 0.0 makes -0.0 and 0.0 one value.
            Values::Numeric(x) => (x[i] + 0.0).to_bits().hash(&mut h),
            Values::Categorical(x) => x[i].hash(&mut h),
        }
    }
    h.finish()
}

/// Share of `f`'s rows that equal some row of `set` feature for feature.
fn copy_rate(f: &Frame, set: &HashSet<u64>) -> f64 {
    if f.rows() == 0 {
        return f64::NAN;
    }
    (0..f.rows())
        .filter(|&i| set.contains(&fingerprint(f, i)))
        .count() as f64
        / f.rows() as f64
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Detection score (1 = indistinguishable) and mean AUC of `other` against `real`.
fn detection(
    inp: &ClassInputs,
    real: &Frame,
    other: &Frame,
    seed: u64,
) -> (Option<f64>, Option<f64>) {
    if real.rows() < MIN_DETECTION_ROWS || other.rows() < MIN_DETECTION_ROWS {
        return (None, None);
    }
    let r = real.subsample(inp.sample_rows, seed);
    let o = other.subsample(inp.sample_rows, seed.wrapping_add(1));
    let d = logistic_detection(
        &inp.encoder.encode(&r),
        &inp.encoder.encode(&o),
        inp.folds,
        seed,
    );
    let auc = if d.auc_per_fold.is_empty() {
        f64::NAN
    } else {
        d.auc_per_fold.iter().sum::<f64>() / d.auc_per_fold.len() as f64
    };
    (finite(d.score), finite(auc))
}

/// The per-class section, one entry per class of the synthetic set (schema order).
pub fn evaluate(inp: &ClassInputs) -> Result<Vec<ClassFidelity>> {
    let n_classes = inp.schema.classes.len();
    let syn_rows = inp.synthetic.rows_by_class(n_classes);
    let train_rows = inp.train.rows_by_class(n_classes);
    let hold_rows = inp.holdout.rows_by_class(n_classes);
    let present: Vec<usize> = (0..n_classes)
        .filter(|&c| !syn_rows[c].is_empty())
        .collect();

    // One judge for every class: a forest on a class-capped subset of the real training rows.
    let judge_train =
        inp.train
            .sample_per_class(n_classes, inp.seed.wrapping_add(17), |_, rows| {
                rows.min(JUDGE_ROWS_PER_CLASS)
            });
    let queries: Vec<Frame> = present
        .iter()
        .flat_map(|&c| {
            [
                inp.synthetic.select(&syn_rows[c]),
                inp.holdout.select(&hold_rows[c]),
            ]
        })
        .collect();
    let predictions =
        downstream::forest_predictions(&judge_train, &queries, inp.downstream, inp.seed)?;

    let train_prints: HashSet<u64> = (0..inp.train.rows())
        .map(|i| fingerprint(inp.train, i))
        .collect();
    // Classes are independent (their own rows, seeds and single-threaded fits): side by side.
    let out = par_map(present.len(), inp.downstream.threads, |k| {
        let c = present[k];
        let real = inp.train.select(&train_rows[c]);
        let syn = &queries[2 * k];
        let hold = &queries[2 * k + 1];
        let agreement = |pred: &[u32]| {
            if pred.is_empty() {
                None
            } else {
                Some(pred.iter().filter(|&&p| p as usize == c).count() as f64 / pred.len() as f64)
            }
        };
        let seed = inp.seed.wrapping_add(100 + c as u64);
        let f = fidelity::evaluate(inp.schema, &real, syn);
        let (det, det_auc) = detection(inp, &real, syn, seed);
        let (h_shape, h_trend, h_det, h_auc) = if hold.rows() == 0 || real.rows() == 0 {
            (None, None, None, None)
        } else {
            let h = fidelity::evaluate(inp.schema, &real, hold);
            let (d, a) = detection(inp, &real, hold, seed);
            (h.shape, h.trend, d, a)
        };
        ClassFidelity {
            class: inp.schema.classes[c].clone(),
            train_rows: real.rows(),
            synthetic_rows: syn.rows(),
            holdout_rows: hold.rows(),
            shape: if real.rows() > 0 { f.shape } else { None },
            trend: if real.rows() > 0 { f.trend } else { None },
            detection: det,
            detection_auc: det_auc,
            holdout_shape: h_shape,
            holdout_trend: h_trend,
            holdout_detection: h_det,
            holdout_detection_auc: h_auc,
            agreement: agreement(&predictions[2 * k]),
            holdout_agreement: agreement(&predictions[2 * k + 1]),
            copy_rate: finite(copy_rate(syn, &train_prints)),
            holdout_copy_rate: finite(copy_rate(hold, &train_prints)),
        }
    });
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_counted_feature_for_feature_and_signed_zero_is_one_value() {
        let frame = |x: Vec<f64>, c: Vec<u32>| Frame {
            labels: vec![0; x.len()],
            columns: vec![Values::Numeric(x), Values::Categorical(c)],
        };
        let train = frame(vec![0.0, 1.5, 2.0], vec![0, 1, 1]);
        let set: HashSet<u64> = (0..3).map(|i| fingerprint(&train, i)).collect();
        // -0.0/0 copies row 0; 1.5/1 copies row 1; 2.0/0 and 1.5/0 are new.
        let syn = frame(vec![-0.0, 1.5, 2.0, 1.5], vec![0, 1, 0, 0]);
        assert_eq!(copy_rate(&syn, &set), 0.5);
    }
}
