//! Which training rows an epoch visits, and in what order: class-tempered sampling.
//!
//! With `class_balance` b, class c gets a share of the epoch's slots proportional to
//! `n_c^(1 - b)`: b = 0 keeps the data's proportions, b = 1 gives every class the same number of
//! slots. Within a class, rows are dealt from a seeded endless sequence of permutations of that
//! class's rows, epoch after epoch, so every row is used equally often (to within one) over the
//! run: a thinned majority class still shows all its rows across epochs, and a rare class is
//! repeated evenly rather than by chance. The slots of all classes are then shuffled together.
//!
//! Everything depends only on the seed, the stage, the epoch and the labels of the dataset-wide
//! training positions, never on how rows are sharded, so every rank computes the same order.

use super::rng::{derive, permutation};

/// Epoch slots per class: `rows` shared in proportion to `n_c^(1 - balance)` by largest
/// remainder; every class with rows gets at least one slot when `rows` allows.
pub(crate) fn class_quotas(counts: &[usize], balance: f64, rows: usize) -> Vec<usize> {
    let power = 1.0 - balance.clamp(0.0, 1.0);
    let weights: Vec<f64> = counts
        .iter()
        .map(|&n| if n == 0 { 0.0 } else { (n as f64).powf(power) })
        .collect();
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || rows == 0 {
        return vec![0; counts.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| w / total * rows as f64).collect();
    let mut quotas: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    // Largest remainders take the slots the floors left.
    let mut order: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] > 0).collect();
    order.sort_by(|&a, &b| {
        let frac = |c: usize| exact[c] - exact[c].floor();
        frac(b).total_cmp(&frac(a)).then(a.cmp(&b))
    });
    let left = rows.saturating_sub(quotas.iter().sum::<usize>());
    for &c in order.iter().cycle().take(left) {
        quotas[c] += 1;
    }
    // A class with rows but no slot takes one from the largest quota, while that has more than
    // one: tempered proportions never silence a class the epoch has room for.
    for &c in &order {
        if quotas[c] > 0 {
            continue;
        }
        let Some(donor) = (0..quotas.len()).max_by_key(|&d| (quotas[d], std::cmp::Reverse(d)))
        else {
            break;
        };
        if quotas[donor] <= 1 {
            break;
        }
        quotas[donor] -= 1;
        quotas[c] = 1;
    }
    quotas
}

/// The global positions an epoch visits (`rows` of them, repeats allowed when a class is
/// oversampled). `labels[p]` is the class of training position `p`; `key` identifies the run and
/// stage, `epoch` the epoch within it.
pub(crate) fn epoch_order(
    key: u64,
    epoch: u64,
    labels: &[u32],
    classes: usize,
    balance: f64,
    rows: usize,
) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (p, &c) in labels.iter().enumerate() {
        if let Some(v) = by_class.get_mut(c as usize) {
            v.push(p);
        }
    }
    let counts: Vec<usize> = by_class.iter().map(Vec::len).collect();
    let quotas = class_quotas(&counts, balance, rows);
    let mut slots = Vec::with_capacity(rows);
    for (c, (members, &quota)) in by_class.iter().zip(&quotas).enumerate() {
        let n = members.len();
        if n == 0 || quota == 0 {
            continue;
        }
        // This epoch's stretch of the class's endless sequence of permutations.
        let start = epoch as usize * quota;
        let (mut cycle, mut offset) = (start / n, start % n);
        let mut need = quota;
        while need > 0 {
            let perm = permutation(derive(key, &[c as u64, cycle as u64]), n);
            let take = need.min(n - offset);
            slots.extend(perm[offset..offset + take].iter().map(|&i| members[i]));
            need -= take;
            cycle += 1;
            offset = 0;
        }
    }
    let shuffle = permutation(derive(key, &[u64::MAX, epoch]), slots.len());
    shuffle.into_iter().map(|i| slots[i]).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quotas_follow_the_tempered_proportions_and_sum_to_the_epoch() {
        let counts = [10_000, 100, 1, 0];
        assert_eq!(class_quotas(&counts, 0.0, 10_101), vec![10_000, 100, 1, 0]);
        let equal = class_quotas(&counts, 1.0, 3_000);
        assert_eq!(equal, vec![1_000, 1_000, 1_000, 0]);
        let half = class_quotas(&counts, 0.5, 1_110);
        // sqrt: 100 : 10 : 1.
        assert_eq!(half, vec![1_000, 100, 10, 0]);
        for b in [0.0, 0.3, 0.7, 1.0] {
            for rows in [1, 2, 3, 17, 5_000] {
                let q = class_quotas(&counts, b, rows);
                assert_eq!(q.iter().sum::<usize>(), rows, "b={b} rows={rows}");
                assert_eq!(q[3], 0);
                if rows >= 3 {
                    assert!(q[..3].iter().all(|&x| x > 0), "b={b} rows={rows}: {q:?}");
                }
            }
        }
    }

    #[test]
    fn every_row_of_a_class_is_used_evenly_across_epochs() {
        // Class 0: 50 rows thinned to 20 per epoch; class 1: 3 rows repeated to 20 per epoch.
        let labels: Vec<u32> = (0..53).map(|p| u32::from(p >= 50)).collect();
        let mut seen = vec![0usize; 53];
        let epochs = 5;
        for e in 0..epochs {
            let order = epoch_order(9, e, &labels, 2, 1.0, 40);
            assert_eq!(order.len(), 40);
            let ones = order.iter().filter(|&&p| labels[p] == 1).count();
            assert_eq!(ones, 20);
            for p in order {
                seen[p] += 1;
            }
        }
        // 100 draws over 50 rows: each exactly twice; 100 over 3 rows: 33 or 34 each.
        assert!(seen[..50].iter().all(|&k| k == 2), "{seen:?}");
        assert!(seen[50..].iter().all(|&k| k == 33 || k == 34), "{seen:?}");
    }

    #[test]
    fn the_order_is_seeded_and_epochs_differ() {
        let labels: Vec<u32> = (0..200).map(|p| (p % 3) as u32).collect();
        let a = epoch_order(1, 0, &labels, 3, 0.5, 200);
        assert_eq!(a, epoch_order(1, 0, &labels, 3, 0.5, 200));
        assert_ne!(a, epoch_order(1, 1, &labels, 3, 0.5, 200));
        assert_ne!(a, epoch_order(2, 0, &labels, 3, 0.5, 200));
        // Balanced classes and a full-length epoch: a permutation of all positions.
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>());
    }
}
