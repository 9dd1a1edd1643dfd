//! Small numeric helpers every metric shares: a scoped-thread parallel map, mean and standard
//! deviation, numpy-style quantiles.

/// Runs `f(i)` for `i in 0..n` on up to `threads` threads and returns the results in index
/// order. Work is dealt out on demand (each thread takes the next undone index), so uneven items
/// such as trees of different depths spread evenly. A panic in `f` is re-raised here.
pub fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, n.max(1));
    let f = &f;
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let next = &next;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break done;
                        }
                        done.push((i, f(i)));
                    }
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, v) in done {
                        slots[i] = Some(v);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    // Every index in 0..n was dealt to exactly one thread, and every thread joined.
    slots.into_iter().flatten().collect()
}

/// Mean and population standard deviation (numpy's default); (0, 0) for no values.
pub fn mean_std(x: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let (mut n, mut sum) = (0usize, 0.0);
    for v in x.clone() {
        n += 1;
        sum += v;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / n as f64;
    let var = x.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
    (mean, var.sqrt())
}

/// numpy's default (linear) quantile of `sorted` at `q` in [0, 1]; NaN when empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Median (sorts `x` in place; the mean of the two middle values for an even count, as numpy);
/// NaN when empty.
pub fn median(x: &mut [f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    x.sort_unstable_by(f64::total_cmp);
    let h = x.len() / 2;
    if x.len() % 2 == 1 {
        x[h]
    } else {
        (x[h - 1] + x[h]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_index_order_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            assert_eq!(par_map(7, threads, |i| i * i), vec![0, 1, 4, 9, 16, 25, 36]);
        }
        assert!(par_map(0, 4, |i| i).is_empty());
    }

    #[test]
    fn quantiles_match_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
        // numpy.quantile([1,2,3,4], 0.5) = 2.5; 0.25 -> 1.75.
        assert_eq!(quantile_sorted(&v, 0.5), 2.5);
        assert_eq!(quantile_sorted(&v, 0.25), 1.75);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn mean_std_is_population() {
        assert_eq!(mean_std([2.0, 4.0].into_iter()), (3.0, 1.0));
        assert_eq!(mean_std(std::iter::empty()), (0.0, 0.0));
    }
}
