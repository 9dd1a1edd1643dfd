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
    if rows == 0 {
        return vec![0; counts.len()];
    }
    let mut quotas = largest_remainder(rows, &weights);
    let order: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] > 0).collect();
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
    deal(
        key,
        &by_class,
        &quotas,
        |_, quota| epoch as usize * quota,
        &mut slots,
    );
    shuffled(slots, derive(key, &[u64::MAX, epoch]))
}

/// Appends each class's `quota` slots from its `members` to `slots`, each class dealing from its
/// seeded endless sequence of permutations (keyed by `key`, the class and the cycle) from slot
/// `start(class, quota)` of that sequence on.
fn deal(
    key: u64,
    by_class: &[Vec<usize>],
    quotas: &[usize],
    start: impl Fn(usize, usize) -> usize,
    slots: &mut Vec<usize>,
) {
    for (c, (members, &quota)) in by_class.iter().zip(quotas).enumerate() {
        let n = members.len();
        if n == 0 || quota == 0 {
            continue;
        }
        let first = start(c, quota);
        let (mut cycle, mut offset) = (first / n, first % n);
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
}

/// `slots` in a seeded random order.
fn shuffled(slots: Vec<usize>, key: u64) -> Vec<usize> {
    let shuffle = permutation(key, slots.len());
    shuffle.into_iter().map(|i| slots[i]).collect()
}

/// Streaming: the windows of one pass over a training set of groups with `group_rows` rows
/// each: the groups in a seeded random order (`key` names the run, stage and pass), cut into
/// consecutive windows of at most `window_rows` rows (a larger group is a window of its own).
pub(crate) fn pass_windows(key: u64, group_rows: &[usize], window_rows: usize) -> Vec<Vec<usize>> {
    cut_windows(permutation(key, group_rows.len()), group_rows, window_rows)
}

/// The groups `order` cut into consecutive windows of at most `window_rows` rows (a larger
/// group is a window of its own).
pub(crate) fn cut_windows(
    order: impl IntoIterator<Item = usize>,
    group_rows: &[usize],
    window_rows: usize,
) -> Vec<Vec<usize>> {
    let mut windows: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0usize;
    for g in order {
        let n = group_rows[g];
        match windows.last_mut() {
            Some(w) if filled + n <= window_rows => w.push(g),
            _ => {
                windows.push(vec![g]);
                filled = 0;
            }
        }
        filled += n;
    }
    windows
}

/// Streaming: the classes whose rows stay in memory through a pass rather than being streamed
/// with their row groups: the rarest classes, rarest first, while their rows add up to at most
/// `budget`. A rare class sits in few row groups when the data is ordered (a capture's attacks
/// come in bursts); streamed with them, it would fill the batches of a few windows and be absent
/// from all others. Held in memory, it is dealt into every window.
pub(crate) fn everywhere_classes(totals: &[usize], budget: usize) -> Vec<u32> {
    let mut order: Vec<usize> = (0..totals.len()).filter(|&c| totals[c] > 0).collect();
    order.sort_by_key(|&c| (totals[c], c));
    let mut used = 0usize;
    let mut out: Vec<u32> = Vec::new();
    for c in order {
        used += totals[c];
        if used > budget {
            break;
        }
        out.push(c as u32);
    }
    out.sort_unstable();
    out
}

/// Streaming: the slots of every class in every window of a pass (`[window][class]`): the
/// class-tempered quotas of the whole pass (`rows` slots over the dataset-wide class counts),
/// each class's quota spread over the windows in proportion to its rows there (largest
/// remainder), so a pass gives every class its tempered share and every row about equal use;
/// a class held in memory (`everywhere[c]`) is spread in proportion to the windows' sizes.
pub(crate) fn window_quotas(
    windows: &[Vec<usize>],
    group_counts: &[Vec<usize>],
    everywhere: &[bool],
    balance: f64,
    rows: usize,
) -> Vec<Vec<usize>> {
    let classes = everywhere.len();
    let per_window: Vec<Vec<usize>> = windows
        .iter()
        .map(|w| {
            (0..classes)
                .map(|c| w.iter().map(|&g| group_counts[g][c]).sum())
                .collect()
        })
        .collect();
    let totals: Vec<usize> = (0..classes)
        .map(|c| per_window.iter().map(|w| w[c]).sum())
        .collect();
    let quotas = class_quotas(&totals, balance, rows);
    let mut out = vec![vec![0usize; classes]; windows.len()];
    let sizes: Vec<usize> = per_window.iter().map(|w| w.iter().sum()).collect();
    for c in 0..classes {
        let weights: Vec<usize> = if everywhere[c] {
            sizes.clone()
        } else {
            per_window.iter().map(|w| w[c]).collect()
        };
        for (w, q) in spread(quotas[c], &weights).into_iter().enumerate() {
            out[w][c] = q;
        }
    }
    out
}

/// `total` shared in proportion to `weights` by largest remainder (ties to the lower index);
/// all zeros when no weight is positive.
fn largest_remainder(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| w / sum * total as f64).collect();
    let mut out: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let frac = |i: usize| exact[i] - exact[i].floor();
        frac(b).total_cmp(&frac(a)).then(a.cmp(&b))
    });
    let left = total.saturating_sub(out.iter().sum::<usize>());
    for &i in order.iter().cycle().take(left) {
        out[i] += 1;
    }
    out
}

/// [`largest_remainder`] over row counts.
fn spread(total: usize, weights: &[usize]) -> Vec<usize> {
    largest_remainder(
        total,
        &weights.iter().map(|&w| w as f64).collect::<Vec<_>>(),
    )
}

/// Streaming: the order of one window's slots (global positions), shuffled together with a key
/// from `key` (which names the run, stage, pass and window): `quotas[c]` slots of each class
/// `c`, dealt from the window's members of the class (`by_class`), or for a class held in
/// memory, from all its members (`everywhere[c]`, non-empty), continuing at `starts[c]` the one
/// sequence keyed by `pass_key` that the pass's windows share, so its rows are used evenly.
pub(crate) fn window_order(
    key: u64,
    by_class: &[Vec<usize>],
    quotas: &[usize],
    pass_key: u64,
    everywhere: &[Vec<usize>],
    starts: &[usize],
) -> Vec<usize> {
    let split = |held: bool| -> Vec<usize> {
        quotas
            .iter()
            .zip(everywhere)
            .map(|(&q, e)| if e.is_empty() != held { q } else { 0 })
            .collect()
    };
    let mut slots = Vec::with_capacity(quotas.iter().sum());
    deal(key, by_class, &split(false), |_, _| 0, &mut slots);
    deal(
        pass_key,
        everywhere,
        &split(true),
        |c, _| starts[c],
        &mut slots,
    );
    shuffled(slots, derive(key, &[u64::MAX]))
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

    #[test]
    fn pass_windows_cover_every_group_once_within_the_window() {
        let rows = [5, 7, 3, 9, 4, 30, 2];
        let w = pass_windows(3, &rows, 12);
        let mut all: Vec<usize> = w.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..rows.len()).collect::<Vec<_>>());
        for win in &w {
            let n: usize = win.iter().map(|&g| rows[g]).sum();
            assert!(n <= 12 || win.len() == 1, "{w:?}");
        }
        assert_ne!(w, pass_windows(4, &rows, 12));
        assert_eq!(w, pass_windows(3, &rows, 12));
    }

    #[test]
    fn window_quotas_give_each_class_its_pass_share() {
        // Three groups; class 1 only in group 2.
        let counts = vec![vec![40, 0], vec![50, 0], vec![8, 2]];
        let windows = vec![vec![0], vec![2, 1]];
        let q = window_quotas(&windows, &counts, &[false, false], 1.0, 100);
        assert_eq!(q[0][0] + q[1][0], 50);
        assert_eq!(q[1][1], 50);
        assert_eq!(q[0][1], 0);
        // 40 : 58 rows of class 0.
        assert_eq!(q[0][0], 20);
        let total: usize = q.iter().flatten().sum();
        assert_eq!(total, 100);
        // Class 1 held in memory: spread by window size (40 : 60 rows).
        let held = window_quotas(&windows, &counts, &[false, true], 1.0, 100);
        assert_eq!((held[0][1], held[1][1]), (20, 30));
        assert_eq!(spread(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(spread(3, &[0, 0]), vec![0, 0]);
    }

    #[test]
    fn the_rarest_classes_are_held_within_the_budget() {
        assert_eq!(everywhere_classes(&[1000, 5, 0, 40, 300], 50), vec![1, 3]);
        assert_eq!(
            everywhere_classes(&[1000, 5, 0, 40, 300], 4),
            Vec::<u32>::new()
        );
        assert_eq!(everywhere_classes(&[10, 20], 30), vec![0, 1]);
    }

    #[test]
    fn a_held_class_continues_one_sequence_across_windows() {
        // Class 0 streamed (members 0..4 here), class 1 held: 6 members dealt 4 + 2 slots in
        // two windows use each member once.
        let by_class = vec![vec![0, 1, 2, 3], vec![]];
        let held = vec![vec![], vec![10, 11, 12, 13, 14, 15]];
        let a = window_order(1, &by_class, &[4, 4], 7, &held, &[0, 0]);
        let b = window_order(2, &by_class, &[0, 2], 7, &held, &[0, 4]);
        let mut used: Vec<usize> = a.iter().chain(&b).copied().filter(|&p| p >= 10).collect();
        used.sort_unstable();
        assert_eq!(used, (10..16).collect::<Vec<_>>());
        assert_eq!(a.iter().filter(|&&p| p < 10).count(), 4);
    }
}
