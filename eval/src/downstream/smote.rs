//! The two classic oversampling baselines synthetic data has to beat: random oversampling (ROS)
//! and SMOTE-NC (Chawla et al. 2002, as imbalanced-learn's `SMOTENC` implements it), both drawing
//! only on the real training rows of the class they add to.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::seq::index;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::frame::{Frame, Schema, Values};
use crate::stats::{mean_std, median, par_map};

/// SMOTE-NC settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmoteOptions {
    /// Nearest same-class neighbours a new row may be interpolated towards (imbalanced-learn's
    /// `k_neighbors`).
    pub k: usize,
    /// Largest number of rows of one class that take part in the neighbour search. A larger class
    /// is represented by a random subset of this size (drawn per seed): SMOTE's cost is quadratic
    /// in the class size, and a few thousand rows already give every sample plenty of close
    /// neighbours. Base rows are drawn from the same subset.
    pub max_candidates: usize,
}

impl Default for SmoteOptions {
    fn default() -> Self {
        SmoteOptions {
            k: 5,
            max_candidates: 5000,
        }
    }
}

/// Oversamples the real training rows of chosen classes. Built once per evaluation; every call
/// draws afresh from its seed.
pub(crate) struct Oversampler<'a> {
    train: &'a Frame,
    opts: SmoteOptions,
    /// Real training rows per class code.
    rows_by_class: Vec<Vec<usize>>,
    numeric: Vec<usize>,
    categorical: Vec<usize>,
    /// Per numeric column (in `numeric` order): mean and standard deviation over the training
    /// rows, defining the standardized space neighbours are searched in.
    standardize: Vec<(f64, f64)>,
}

impl<'a> Oversampler<'a> {
    pub(crate) fn new(schema: &Schema, train: &'a Frame, opts: &SmoteOptions) -> Self {
        let rows_by_class = train.rows_by_class(schema.classes.len());
        let numeric: Vec<usize> = schema.numeric_columns().collect();
        let categorical: Vec<usize> = (0..schema.columns.len())
            .filter(|j| !schema.columns[*j].is_numeric())
            .collect();
        let standardize = numeric
            .iter()
            .map(|&j| {
                let x = train.columns[j].numeric();
                let (mean, std) = mean_std(x.iter().copied());
                (mean, if std > 0.0 { std } else { 1.0 })
            })
            .collect();
        Oversampler {
            train,
            opts: opts.clone(),
            rows_by_class,
            numeric,
            categorical,
            standardize,
        }
    }

    /// Real training rows of class `c`.
    pub(crate) fn class_rows(&self, c: usize) -> usize {
        self.rows_by_class.get(c).map_or(0, Vec::len)
    }

    /// Random oversampling: indices into the training frame, `per_class[c]` rows of class `c`
    /// drawn uniformly with replacement from its real rows (none for a class without any).
    pub(crate) fn random_oversample(&self, per_class: &[usize], seed: u64) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(per_class.iter().sum());
        for (c, &n) in per_class.iter().enumerate() {
            let Some(rows) = self.rows_by_class.get(c).filter(|r| !r.is_empty()) else {
                continue;
            };
            out.extend((0..n).map(|_| rows[rng.random_range(0..rows.len())]));
        }
        out
    }

    /// SMOTE-NC: `per_class[c]` new rows of class `c`. Each new row takes a random base row of
    /// the class and one of its `k` nearest same-class neighbours, its numeric values on the
    /// segment between the two (`base + gap * (neighbour - base)`, gap uniform in [0, 1), in the
    /// original units, so integer counts may become fractional as in imbalanced-learn), and each
    /// categorical value the most frequent among the base row's `k` neighbours (ties: the lowest
    /// code).
    ///
    /// Distances: squared Euclidean over the standardized numeric columns plus, per categorical
    /// mismatch, `med^2 / 2`, where `med` is the median standard deviation of the standardized
    /// numeric columns within the class. That is what imbalanced-learn's SMOTENC computes (it sets
    /// one-hot entries to `med / 2`); Chawla et al. add `med^2`.
    ///
    /// A class with one real row cannot be interpolated: it is duplicated. A class without real
    /// rows gets none (the caller notes both).
    /// The neighbour searches run on up to `threads` threads; the rows do not depend on it.
    pub(crate) fn smote(
        &self,
        schema: &Schema,
        per_class: &[usize],
        seed: u64,
        threads: usize,
    ) -> Frame {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut out = Frame::empty(schema);
        for (c, &n) in per_class.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let Some(rows) = self.rows_by_class.get(c).filter(|r| !r.is_empty()) else {
                continue;
            };
            if rows.len() == 1 {
                out.append(&self.train.select(&vec![rows[0]; n]));
                continue;
            }
            let pool: Vec<usize> = if rows.len() > self.opts.max_candidates.max(2) {
                let mut p: Vec<usize> =
                    index::sample(&mut rng, rows.len(), self.opts.max_candidates.max(2))
                        .into_iter()
                        .map(|i| rows[i])
                        .collect();
                p.sort_unstable();
                p
            } else {
                rows.clone()
            };
            self.smote_class(&pool, (c as u32, n), &mut rng, threads, &mut out);
        }
        out
    }

    fn smote_class(
        &self,
        pool: &[usize],
        (class, n): (u32, usize),
        rng: &mut SmallRng,
        threads: usize,
        out: &mut Frame,
    ) {
        let m = pool.len();
        let k = self.opts.k.clamp(1, m - 1);
        let (nn_cols, cat_cols) = (self.numeric.len(), self.categorical.len());
        let mut z = Vec::with_capacity(m * nn_cols);
        for &r in pool {
            for (&j, &(mean, std)) in self.numeric.iter().zip(&self.standardize) {
                z.push((self.train.columns[j].numeric()[r] - mean) / std);
            }
        }
        let mut cats = Vec::with_capacity(m * cat_cols);
        for &r in pool {
            cats.extend(
                self.categorical
                    .iter()
                    .map(|&j| self.train.columns[j].codes()[r]),
            );
        }
        let mut stds: Vec<f64> = (0..nn_cols)
            .map(|q| mean_std((0..m).map(|i| z[i * nn_cols + q])).1)
            .collect();
        let med = median(&mut stds);
        let penalty = if med.is_nan() { 0.0 } else { med * med / 2.0 };

        let neighbours = |b: usize| -> Vec<usize> {
            let zb = &z[b * nn_cols..(b + 1) * nn_cols];
            let cb = &cats[b * cat_cols..(b + 1) * cat_cols];
            let mut d: Vec<(f64, usize)> = (0..m)
                .filter(|&p| p != b)
                .map(|p| {
                    let zp = &z[p * nn_cols..(p + 1) * nn_cols];
                    let cp = &cats[p * cat_cols..(p + 1) * cat_cols];
                    let num = squared_distance(zb, zp);
                    let mismatches = cb.iter().zip(cp).filter(|(a, b)| a != b).count();
                    (num + penalty * mismatches as f64, p)
                })
                .collect();
            let by = |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            d.select_nth_unstable_by(k - 1, by);
            d.truncate(k);
            d.sort_unstable_by(by);
            d.into_iter().map(|(_, p)| p).collect()
        };

        // Draw the base rows first, then search the neighbours of each distinct base once, in
        // parallel (the search is the cost: pool size x columns per base row). The categorical
        // values of a new row depend only on its base's neighbours, so they are settled there
        // too, once per distinct base.
        let bases: Vec<usize> = (0..n).map(|_| rng.random_range(0..m)).collect();
        let mut distinct = bases.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut slot = vec![usize::MAX; m];
        for (i, &b) in distinct.iter().enumerate() {
            slot[b] = i;
        }
        let searched = par_map(distinct.len(), threads, |i| {
            let nn = neighbours(distinct[i]);
            let modes: Vec<u32> = (0..cat_cols)
                .map(|q| {
                    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
                    for &p in &nn {
                        *counts.entry(cats[p * cat_cols + q]).or_default() += 1;
                    }
                    // Highest count, lowest code among ties (BTreeMap iterates codes ascending).
                    counts
                        .iter()
                        .fold((0u32, 0usize), |best, (&code, &cnt)| {
                            if cnt > best.1 { (code, cnt) } else { best }
                        })
                        .0
                })
                .collect();
            (nn, modes)
        });
        for &b in &bases {
            let (nn, modes) = &searched[slot[b]];
            let j = nn[rng.random_range(0..nn.len())];
            let gap: f64 = rng.random();
            let (rb, rj) = (pool[b], pool[j]);
            for &col in &self.numeric {
                let x = self.train.columns[col].numeric();
                if let Values::Numeric(v) = &mut out.columns[col] {
                    v.push(x[rb] + gap * (x[rj] - x[rb]));
                }
            }
            for (&col, &mode) in self.categorical.iter().zip(modes) {
                if let Values::Categorical(v) = &mut out.columns[col] {
                    v.push(mode);
                }
            }
            out.labels.push(class);
        }
    }
}

/// Squared Euclidean distance, summed in four lanes so the compiler can vectorise it (a plain
/// iterator sum of floats must keep its order); the neighbour search spends its time here.
fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            let d = x[l] - y[l];
            lanes[l] += d * d;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ColumnSpec;

    fn schema() -> Schema {
        Schema {
            columns: vec![
                ColumnSpec::numeric("bytes", true),
                ColumnSpec::categorical("proto", &["tcp", "udp", "icmp"]),
                ColumnSpec::numeric("rate", false),
            ],
            label: "label".into(),
            classes: vec![
                "normal".into(),
                "rare".into(),
                "single".into(),
                "absent".into(),
            ],
        }
    }

    /// 20 normal rows, 6 rare rows, 1 single row.
    fn train() -> Frame {
        let mut bytes = Vec::new();
        let mut proto = Vec::new();
        let mut rate = Vec::new();
        let mut labels = Vec::new();
        for i in 0..20 {
            bytes.push(1000.0 + 10.0 * i as f64);
            proto.push((i % 2) as u32);
            rate.push(0.5);
            labels.push(0);
        }
        for i in 0..6 {
            bytes.push(5.0 * i as f64);
            proto.push(if i < 4 { 2 } else { 0 });
            rate.push(i as f64 / 10.0);
            labels.push(1);
        }
        bytes.push(77.0);
        proto.push(1);
        rate.push(0.9);
        labels.push(2);
        Frame {
            columns: vec![
                Values::Numeric(bytes),
                Values::Categorical(proto),
                Values::Numeric(rate),
            ],
            labels,
        }
    }

    #[test]
    fn oversamplers_add_exactly_the_requested_rows_per_class() {
        let (s, t) = (schema(), train());
        let o = Oversampler::new(&s, &t, &SmoteOptions::default());
        let want = [3, 40, 5, 0];
        let ros = o.random_oversample(&want, 1);
        assert_eq!(t.select(&ros).class_counts(4), want.to_vec());
        let sm = o.smote(&s, &want, 1, 2);
        assert_eq!(sm.class_counts(4), want.to_vec());
        assert!(sm.columns.iter().all(|c| c.len() == 48));
        // A class without real rows gets nothing from either.
        assert_eq!(o.random_oversample(&[0, 0, 0, 7], 1), Vec::<usize>::new());
        assert_eq!(o.smote(&s, &[0, 0, 0, 7], 1, 2).rows(), 0);
    }

    /// Every SMOTE row of `rare` lies on the segment between two distinct real `rare` rows (one
    /// parameter `gap` for all numeric columns), and its category is one a real `rare` row has.
    #[test]
    fn smote_rows_lie_between_two_same_class_rows() {
        let (s, t) = (schema(), train());
        let o = Oversampler::new(&s, &t, &SmoteOptions::default());
        let sm = o.smote(&s, &[0, 200, 0, 0], 7, 2);
        let real: Vec<usize> = (20..26).collect();
        let (bx, rx) = (t.columns[0].numeric(), t.columns[2].numeric());
        for i in 0..sm.rows() {
            let (b, r) = (sm.columns[0].numeric()[i], sm.columns[2].numeric()[i]);
            let on_segment = real.iter().any(|&p| {
                real.iter().any(|&q| {
                    if p == q || bx[q] == bx[p] {
                        return false;
                    }
                    let gap = (b - bx[p]) / (bx[q] - bx[p]);
                    (0.0..1.0).contains(&gap) && (rx[p] + gap * (rx[q] - rx[p]) - r).abs() < 1e-9
                })
            });
            assert!(
                on_segment,
                "row {i}: ({b}, {r}) is on no segment between two rare rows"
            );
            assert!([0, 2].contains(&sm.columns[1].codes()[i]));
            assert_eq!(sm.labels[i], 1);
        }
        // Numerics are interpolated, not copied: most rows are new points.
        let copies = (0..sm.rows())
            .filter(|&i| real.iter().any(|&p| bx[p] == sm.columns[0].numeric()[i]))
            .count();
        assert!(copies < 20, "{copies} of 200 rows are copies");
    }

    /// The category is the majority among the k neighbours: with k = 5 and six rare rows, each
    /// base row's neighbours are the other five, of which at least three are `icmp` (code 2).
    #[test]
    fn smote_categoricals_are_the_neighbours_majority() {
        let (s, t) = (schema(), train());
        let o = Oversampler::new(&s, &t, &SmoteOptions::default());
        let sm = o.smote(&s, &[0, 100, 0, 0], 3, 2);
        assert!(sm.columns[1].codes().iter().all(|&c| c == 2));
        // With k = 1 the only neighbour decides: rows 24 and 25 (tcp) are each other's closest.
        let o1 = Oversampler::new(
            &s,
            &t,
            &SmoteOptions {
                k: 1,
                max_candidates: 5000,
            },
        );
        let sm1 = o1.smote(&s, &[0, 300, 0, 0], 3, 2);
        assert!(sm1.columns[1].codes().contains(&0));
        for i in 0..sm1.rows() {
            let b = sm1.columns[0].numeric()[i];
            // tcp rows come from the segment between bytes 20 and 25 only.
            if sm1.columns[1].codes()[i] == 0 {
                assert!((20.0..=25.0).contains(&b), "tcp row with bytes {b}");
            }
        }
    }

    #[test]
    fn single_row_class_is_duplicated() {
        let (s, t) = (schema(), train());
        let o = Oversampler::new(&s, &t, &SmoteOptions::default());
        assert_eq!(o.class_rows(2), 1);
        let sm = o.smote(&s, &[0, 0, 4, 0], 1, 2);
        assert_eq!(sm.columns[0].numeric(), &[77.0; 4]);
        assert_eq!(sm.columns[1].codes(), &[1; 4]);
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let (s, t) = (schema(), train());
        let o = Oversampler::new(
            &s,
            &t,
            &SmoteOptions {
                k: 5,
                max_candidates: 10,
            },
        );
        let want = [30, 30, 0, 0];
        assert_eq!(o.smote(&s, &want, 5, 2), o.smote(&s, &want, 5, 2));
        assert_ne!(o.smote(&s, &want, 5, 2), o.smote(&s, &want, 6, 2));
        assert_eq!(
            o.smote(&s, &want, 5, 1),
            o.smote(&s, &want, 5, 3),
            "thread count matters"
        );
        assert_eq!(o.random_oversample(&want, 5), o.random_oversample(&want, 5));
        assert_ne!(o.random_oversample(&want, 5), o.random_oversample(&want, 6));
        // max_candidates = 10 restricts class 0 (20 rows) to 10 of them: still 30 rows.
        assert_eq!(o.smote(&s, &want, 5, 2).class_counts(4), vec![30, 30, 0, 0]);
    }
}
