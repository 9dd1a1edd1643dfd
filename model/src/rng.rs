//! Seeded random numbers drawn in Rust rather than from libtorch's global generator.
//!
//! libtorch's default generator is process-global: two models initialised on two threads (or two
//! tests running side by side) interleave their draws, and CPU and CUDA generators give different
//! streams. Every random number of the model (initial weights, reparameterisation noise, EDM
//! noise levels, label dropout, sampler noise) therefore comes from [`Stream`], a SplitMix64
//! generator keyed by the run seed and a purpose. Noise is keyed *per row*: in training by the
//! row's slot in the epoch order, in sampling by the output row's index. A row therefore
//! receives the same noise whatever batch or worker it lands in: this is what lets N workers with
//! batch B reproduce one worker with batch N*B, and makes a sample's first rows independent of
//! how many rows were requested.

/// Purposes a key is derived for; distinct values keep the streams apart.
pub mod tag {
    pub const INIT: u64 = 0x1417;
    pub const PERMUTATION: u64 = 0x9E12;
    pub const VAE_NOISE: u64 = 0x7AE0;
    pub const EDM_NOISE: u64 = 0xED40;
    pub const SAMPLE: u64 = 0x5A3F;
    pub const CHURN: u64 = 0xC4A2;
    pub const SPLIT: u64 = 0x5B17;
    pub const NEIGHBOURHOOD: u64 = 0x4E1B;
    pub const ANCHORS: u64 = 0xA4C5;
}

/// One SplitMix64 output step (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a key from a seed and a path of integers (purpose tag, stage, epoch, row id, ...).
pub fn derive(seed: u64, parts: &[u64]) -> u64 {
    let mut state = seed;
    let mut key = splitmix64(&mut state);
    for &p in parts {
        state = key ^ p.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        key = splitmix64(&mut state);
    }
    key
}

/// A deterministic stream of uniform and normal numbers.
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
    spare: Option<f64>,
}

impl Stream {
    pub fn new(key: u64) -> Self {
        Self {
            state: key,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller; the second value of each pair is kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// A uniform index in `0..n` (`n > 0`), by rejection so it is unbiased.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// `dim` standard normals for each row id, row-major (`[row_ids.len(), dim]`), each row drawn
/// from its own stream keyed by `(key, row id)`.
pub fn row_normals(key: u64, row_ids: &[u64], dim: usize) -> Vec<f32> {
    per_row(key, row_ids, dim, |s, out| {
        for v in out {
            *v = s.normal() as f32;
        }
    })
}

/// Values drawn per row, `[row_ids.len(), width]` row-major: `draw` fills row `i`'s `width`
/// values from the stream keyed by `(key, row_ids[i])`. Rows are independent streams, so large
/// batches are drawn on libtorch's intra-op thread count (libtorch is idle meanwhile) with the
/// same result as one thread.
pub fn per_row(
    key: u64,
    row_ids: &[u64],
    width: usize,
    draw: impl Fn(&mut Stream, &mut [f32]) + Sync,
) -> Vec<f32> {
    per_row_on(
        tch::get_num_threads().max(1) as usize,
        key,
        row_ids,
        width,
        draw,
    )
}

/// [`per_row`] on at most `threads` threads.
fn per_row_on(
    threads: usize,
    key: u64,
    row_ids: &[u64],
    width: usize,
    draw: impl Fn(&mut Stream, &mut [f32]) + Sync,
) -> Vec<f32> {
    /// Values below which one thread is quicker than starting others.
    const PARALLEL_VALUES: usize = 32_768;
    let mut out = vec![0f32; row_ids.len() * width];
    if width == 0 {
        return out;
    }
    let fill = |ids: &[u64], out: &mut [f32]| {
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(width)) {
            draw(&mut Stream::new(derive(key, &[id])), row);
        }
    };
    let threads = threads.min(out.len() / PARALLEL_VALUES);
    if threads <= 1 {
        fill(row_ids, &mut out);
        return out;
    }
    let rows_per = row_ids.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (ids, chunk) in row_ids
            .chunks(rows_per)
            .zip(out.chunks_mut(rows_per * width))
        {
            scope.spawn(move || fill(ids, chunk));
        }
    });
    out
}

/// A seeded Fisher-Yates permutation of `0..n`.
pub fn permutation(key: u64, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut s = Stream::new(key);
    for i in (1..n).rev() {
        let j = s.below(i as u64 + 1) as usize;
        idx.swap(i, j);
    }
    idx
}

/// A seeded bijection of `0..n` evaluated one index at a time, in constant memory: what
/// [`permutation`] gives as a vector, for index spaces too large to materialise (the dataset-wide
/// train/validation split of a billion rows). A four-round balanced Feistel network over the
/// smallest even number of bits that covers `n`, cycle-walking the images that fall outside
/// `0..n` (fewer than four steps on average, since the domain is below `4n`).
#[derive(Debug, Clone)]
pub struct IndexBijection {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl IndexBijection {
    pub fn new(key: u64, n: u64) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let keys = [0, 1, 2, 3].map(|r| derive(key, &[r]));
        Self { n, half_bits, keys }
    }

    /// The image of `i` (`i < n`).
    pub fn apply(&self, i: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let mut x = i;
        loop {
            let (mut left, mut right) = (x >> self.half_bits, x & mask);
            for &k in &self.keys {
                let mut state = k ^ right;
                let f = splitmix64(&mut state) & mask;
                (left, right) = (right, left ^ f);
            }
            x = (left << self.half_bits) | right;
            if x < self.n {
                return x;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_moments() {
        let mut s = Stream::new(derive(7, &[1, 2]));
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| s.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn row_noise_does_not_depend_on_batch_composition() {
        let a = row_normals(3, &[10, 11, 12], 4);
        let b = row_normals(3, &[12], 4);
        assert_eq!(&a[8..12], &b[..]);
        assert_ne!(row_normals(4, &[12], 4), b);
    }

    #[test]
    fn parallel_draws_equal_one_thread() {
        let ids: Vec<u64> = (0..3000).map(|i| i * 7 + 1).collect();
        let draw = |s: &mut Stream, out: &mut [f32]| {
            for v in out {
                *v = s.normal() as f32;
            }
        };
        let one = per_row_on(1, 9, &ids, 40, draw);
        assert_eq!(one, per_row_on(3, 9, &ids, 40, draw));
        assert_eq!(one, row_normals(9, &ids, 40));
    }

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let p = permutation(5, 100);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(5, 100));
        assert_ne!(p, permutation(6, 100));
    }

    #[test]
    fn index_bijection_is_a_seeded_bijection() {
        for n in [1u64, 2, 3, 7, 64, 1000, 4097] {
            let b = IndexBijection::new(11, n);
            let mut seen: Vec<u64> = (0..n).map(|i| b.apply(i)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n}");
        }
        let a: Vec<u64> = (0..50)
            .map(|i| IndexBijection::new(1, 1000).apply(i))
            .collect();
        let b: Vec<u64> = (0..50)
            .map(|i| IndexBijection::new(2, 1000).apply(i))
            .collect();
        assert_ne!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
    }
}
