//! Classification scores with scikit-learn's semantics (`precision_recall_fscore_support` with an
//! explicit `labels=` list and `zero_division=0`), so the numbers in the report compare with the
//! papers that use it.

/// Scores of one prediction run, over a fixed list of evaluated classes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scores {
    /// Per evaluated class, in the order given to [`score`].
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// True rows per evaluated class.
    pub support: Vec<usize>,
    /// Unweighted mean of `f1`.
    pub macro_f1: f64,
    /// Mean of `f1` weighted by `support`.
    pub weighted_f1: f64,
    /// Share of rows whose prediction equals the truth (over all rows).
    pub accuracy: f64,
}

/// Scores `pred` against `truth` for the classes in `classes` (class codes, each once).
///
/// The evaluated classes are the caller's choice: the downstream module passes the classes
/// present in the test split, so a class a detector predicts but the test split lacks lowers the
/// precision of nothing and the recall of the rows it was wrongly given to. A class with no
/// predicted rows has precision 0, a class with precision and recall 0 has F1 0 (scikit-learn's
/// `zero_division=0`).
pub(crate) fn score(truth: &[u32], pred: &[u32], classes: &[u32]) -> Scores {
    let max = classes.iter().copied().max().map_or(0, |m| m as usize + 1);
    // Position of a class code in `classes`, for codes below `max`.
    let mut position = vec![usize::MAX; max];
    for (i, &c) in classes.iter().enumerate() {
        position[c as usize] = i;
    }
    let lookup = |c: u32| {
        position
            .get(c as usize)
            .copied()
            .filter(|&p| p != usize::MAX)
    };
    let k = classes.len();
    let (mut tp, mut predicted, mut support) = (vec![0usize; k], vec![0usize; k], vec![0usize; k]);
    let mut correct = 0usize;
    for (&t, &p) in truth.iter().zip(pred) {
        if t == p {
            correct += 1;
        }
        if let Some(i) = lookup(t) {
            support[i] += 1;
            if t == p {
                tp[i] += 1;
            }
        }
        if let Some(i) = lookup(p) {
            predicted[i] += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision: Vec<f64> = (0..k).map(|i| ratio(tp[i], predicted[i])).collect();
    let recall: Vec<f64> = (0..k).map(|i| ratio(tp[i], support[i])).collect();
    let f1: Vec<f64> = precision
        .iter()
        .zip(&recall)
        .map(|(&p, &r)| {
            if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            }
        })
        .collect();
    let macro_f1 = if k == 0 {
        0.0
    } else {
        f1.iter().sum::<f64>() / k as f64
    };
    let total: usize = support.iter().sum();
    let weighted_f1 = if total == 0 {
        0.0
    } else {
        f1.iter()
            .zip(&support)
            .map(|(f, &s)| f * s as f64)
            .sum::<f64>()
            / total as f64
    };
    Scores {
        precision,
        recall,
        f1,
        support,
        macro_f1,
        weighted_f1,
        accuracy: ratio(correct, truth.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Worked by hand (and identical to
    /// `sklearn.metrics.precision_recall_fscore_support(t, p, labels=[0, 1, 2], zero_division=0)`):
    ///
    /// truth = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    /// pred  = [0, 0, 1, 1, 3, 2, 2, 0, 2, 3]   (3 = a class the test split lacks)
    ///
    /// class 0: tp 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3
    /// class 1: tp 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2
    /// class 2: tp 3, predicted 3, support 5 -> P 1,   R 3/5, F1 2*0.6/1.6 = 3/4
    /// macro = (2/3 + 1/2 + 3/4) / 3 = 23/36; weighted = (3*2/3 + 2*1/2 + 5*3/4) / 10 = 27/40;
    /// accuracy = 6/10.
    #[test]
    fn hand_computed_precision_recall_f1() {
        let truth = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2];
        let pred = [0, 0, 1, 1, 3, 2, 2, 0, 2, 3];
        let s = score(&truth, &pred, &[0, 1, 2]);
        let want_p = [2.0 / 3.0, 0.5, 1.0];
        let want_r = [2.0 / 3.0, 0.5, 0.6];
        let want_f = [2.0 / 3.0, 0.5, 0.75];
        for i in 0..3 {
            assert!(
                close(s.precision[i], want_p[i]),
                "precision {i}: {}",
                s.precision[i]
            );
            assert!(close(s.recall[i], want_r[i]), "recall {i}: {}", s.recall[i]);
            assert!(close(s.f1[i], want_f[i]), "f1 {i}: {}", s.f1[i]);
        }
        assert_eq!(s.support, vec![3, 2, 5]);
        assert!(close(s.macro_f1, 23.0 / 36.0), "macro {}", s.macro_f1);
        assert!(
            close(s.weighted_f1, 27.0 / 40.0),
            "weighted {}",
            s.weighted_f1
        );
        assert!(close(s.accuracy, 0.6));
    }

    /// A test class nobody predicts scores 0 everywhere (zero_division = 0) and still counts in
    /// the macro mean; an unpredicted novel class is what NSL-KDD's test split is full of.
    #[test]
    fn never_predicted_class_scores_zero() {
        let truth = [0, 0, 5, 5];
        let pred = [0, 0, 0, 0];
        let s = score(&truth, &pred, &[0, 5]);
        assert!(close(s.precision[0], 0.5) && close(s.recall[0], 1.0));
        assert!(close(s.f1[0], 2.0 / 3.0));
        assert_eq!((s.precision[1], s.recall[1], s.f1[1]), (0.0, 0.0, 0.0));
        assert!(close(s.macro_f1, 1.0 / 3.0));
        assert!(close(s.weighted_f1, 1.0 / 3.0));
        assert!(close(s.accuracy, 0.5));
    }
}
