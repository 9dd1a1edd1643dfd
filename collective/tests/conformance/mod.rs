//! The behaviour every [`Collective`] must show, written once and run against each backend
//! (object_store's `integration.rs` pattern). A backend's test file provides a factory that
//! builds `world` connected collectives (element r is rank r) and expands
//! [`conformance_suite!`](crate::conformance_suite).
//!
//! Each rank runs on its own thread, as each rank runs in its own process in production.

#![allow(dead_code)]

use flowsynth_collective::{Buffer, Collective};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Builds `world` connected collectives, rank r at index r.
pub type Factory = fn(usize) -> Vec<Box<dyn Collective>>;

/// Lengths that do not divide evenly, shorter than the world, empty, and large enough to need
/// many chunks.
pub const LENGTHS: &[usize] = &[0, 1, 2, 3, 7, 1000, 1_000_003];

/// Runs `f(rank, collective)` on one thread per rank and returns the results by rank.
pub fn on_each<T: Send>(
    ranks: &mut [Box<dyn Collective>],
    f: impl Fn(usize, &mut dyn Collective) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ranks
            .iter_mut()
            .enumerate()
            .map(|(r, c)| s.spawn(move || f(r, c.as_mut())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread panicked"))
            .collect()
    })
}

fn seed(world: usize, len: usize, rank: usize, salt: u64) -> u64 {
    (world as u64) << 48
        ^ (len as u64) << 8
        ^ (rank as u64)
        ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Small integers: their f64 sums are exact in any order.
fn integers(world: usize, len: usize, rank: usize) -> Vec<f64> {
    let mut rng = SmallRng::seed_from_u64(seed(world, len, rank, 1));
    (0..len)
        .map(|_| rng.random_range(-1000i32..=1000) as f64)
        .collect()
}

fn floats(world: usize, len: usize, rank: usize) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed(world, len, rank, 2));
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn all_reduce_f64_is_exact_on_small_integers(factory: Factory) {
    for world in 1..=5 {
        let mut ranks = factory(world);
        for &len in LENGTHS.iter().chain(&[world - 1, world + 1]) {
            let inputs: Vec<Vec<f64>> = (0..world).map(|r| integers(world, len, r)).collect();
            let expected: Vec<f64> = (0..len)
                .map(|i| inputs.iter().map(|v| v[i]).sum())
                .collect();
            let outputs = on_each(&mut ranks, |r, c| {
                let mut buf = inputs[r].clone();
                c.all_reduce_sum(Buffer::F64(&mut buf))
                    .unwrap_or_else(|e| panic!("world {world} len {len} rank {r}: {e}"));
                buf
            });
            for (r, out) in outputs.iter().enumerate() {
                assert!(
                    out == &expected,
                    "world {world} len {len}: rank {r} has a wrong sum"
                );
            }
        }
    }
}

pub fn all_reduce_f32_is_close_and_bit_identical_across_ranks(factory: Factory) {
    for world in 1..=5 {
        let mut ranks = factory(world);
        for &len in LENGTHS {
            let inputs: Vec<Vec<f32>> = (0..world).map(|r| floats(world, len, r)).collect();
            let outputs = on_each(&mut ranks, |r, c| {
                let mut buf = inputs[r].clone();
                c.all_reduce_sum(Buffer::F32(&mut buf))
                    .unwrap_or_else(|e| panic!("world {world} len {len} rank {r}: {e}"));
                buf
            });
            for i in 0..len {
                let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
                let got = outputs[0][i] as f64;
                // A sum of `world` values in [-1, 1] in any order: a few ulps of the magnitudes.
                let tol = 4.0 * world as f64 * f32::EPSILON as f64;
                assert!(
                    (got - exact).abs() <= tol,
                    "world {world} len {len} element {i}: {got} vs exact {exact}"
                );
            }
            for (r, out) in outputs.iter().enumerate().skip(1) {
                let same = out
                    .iter()
                    .zip(&outputs[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "world {world} len {len}: rank {r} differs from rank 0 in some bits"
                );
            }
        }
    }
}

pub fn broadcast_gives_every_rank_the_roots_buffer(factory: Factory) {
    for world in 1..=5 {
        let mut ranks = factory(world);
        for root in 0..world {
            for &len in &[0usize, 1, 7, 1000, 300_007] {
                let inputs: Vec<Vec<f64>> = (0..world)
                    .map(|r| integers(world, len, r + 10 * root))
                    .collect();
                let outputs = on_each(&mut ranks, |r, c| {
                    let mut buf = inputs[r].clone();
                    c.broadcast(Buffer::F64(&mut buf), root)
                        .unwrap_or_else(|e| {
                            panic!("world {world} root {root} len {len} rank {r}: {e}")
                        });
                    buf
                });
                for (r, out) in outputs.iter().enumerate() {
                    assert!(
                        out == &inputs[root],
                        "world {world} root {root} len {len}: rank {r}"
                    );
                }
                let inputs: Vec<Vec<f32>> = (0..world)
                    .map(|r| floats(world, len, r + 10 * root))
                    .collect();
                let outputs = on_each(&mut ranks, |r, c| {
                    let mut buf = inputs[r].clone();
                    c.broadcast(Buffer::F32(&mut buf), root)
                        .expect("f32 broadcast");
                    buf
                });
                for out in &outputs {
                    assert!(
                        out == &inputs[root],
                        "f32 world {world} root {root} len {len}"
                    );
                }
            }
        }
    }
}

pub fn many_consecutive_operations_stay_in_step(factory: Factory) {
    let world = 3;
    let mut ranks = factory(world);
    let outputs = on_each(&mut ranks, |r, c| {
        let mut sums = Vec::new();
        for op in 0..300usize {
            let len = op % 17;
            if op % 5 == 4 {
                let mut buf = vec![(r * 1000 + op) as f32; len];
                c.broadcast(Buffer::F32(&mut buf), op % world)
                    .unwrap_or_else(|e| panic!("op {op} rank {r}: {e}"));
                sums.push(buf.iter().map(|&x| x as f64).sum::<f64>());
            } else {
                let mut buf = vec![(r + op) as f64; len];
                c.all_reduce_sum(Buffer::F64(&mut buf))
                    .unwrap_or_else(|e| panic!("op {op} rank {r}: {e}"));
                sums.push(buf.iter().sum::<f64>());
            }
        }
        sums
    });
    for op in 0..300usize {
        let len = (op % 17) as f64;
        let expected = if op % 5 == 4 {
            (((op % world) * 1000 + op) as f64) * len
        } else {
            (0..world).map(|r| (r + op) as f64).sum::<f64>() * len
        };
        for (r, sums) in outputs.iter().enumerate() {
            assert_eq!(sums[op], expected, "op {op} rank {r}");
        }
    }
}

pub fn reports_rank_world_and_backend(factory: Factory) {
    let world = 3;
    let mut ranks = factory(world);
    let seen = on_each(&mut ranks, |r, c| {
        (r, c.rank(), c.world_size(), c.backend())
    });
    for (r, rank, w, backend) in seen {
        assert_eq!((rank, w), (r, world));
        assert!(!backend.is_empty());
    }
}

pub fn rejects_a_root_outside_the_world(factory: Factory) {
    let mut ranks = factory(1);
    let mut buf = [1.0f32];
    let err = ranks[0]
        .broadcast(Buffer::F32(&mut buf), 1)
        .expect_err("root 1 in a world of 1");
    assert!(err.to_string().contains("root 1"), "{err}");
}

/// Expands one `#[test]` per conformance check for a backend's factory.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        #[test]
        fn all_reduce_f64_is_exact_on_small_integers() {
            conformance::all_reduce_f64_is_exact_on_small_integers($factory);
        }
        #[test]
        fn all_reduce_f32_is_close_and_bit_identical_across_ranks() {
            conformance::all_reduce_f32_is_close_and_bit_identical_across_ranks($factory);
        }
        #[test]
        fn broadcast_gives_every_rank_the_roots_buffer() {
            conformance::broadcast_gives_every_rank_the_roots_buffer($factory);
        }
        #[test]
        fn many_consecutive_operations_stay_in_step() {
            conformance::many_consecutive_operations_stay_in_step($factory);
        }
        #[test]
        fn reports_rank_world_and_backend() {
            conformance::reports_rank_world_and_backend($factory);
        }
        #[test]
        fn rejects_a_root_outside_the_world() {
            conformance::rejects_a_root_outside_the_world($factory);
        }
    };
}
