//! Pure planning: how a job's work is split across ranks. Kept free of I/O and locking so it can
//! be tested exhaustively.

use flowsynth_common::manifest::DatasetManifest;
use flowsynth_proto::{SampleChunk, Shard};

/// Rows of synthetic output per sampling chunk. Chunks, not ranks, carry seeds: the same request
/// gives the same rows whatever the number of workers.
pub const SAMPLE_CHUNK_ROWS: u64 = 4096;

/// One row group of the dataset, the unit of sharding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroup {
    pub part: String,
    pub index: u32,
    pub rows: u64,
}

/// All row groups of a dataset, in part order.
pub fn row_groups(manifest: &DatasetManifest) -> Vec<RowGroup> {
    manifest
        .parts
        .iter()
        .flat_map(|p| {
            p.row_groups
                .iter()
                .enumerate()
                .map(move |(i, &rows)| RowGroup {
                    part: p.path.clone(),
                    index: i as u32,
                    rows,
                })
        })
        .collect()
}

/// Splits row groups across `world` ranks, balanced by row count (largest first onto the rank
/// with fewest rows; ties to the lowest rank, so the plan is deterministic). Returns per rank its
/// shards (row groups grouped by part, in dataset order) and its row count.
pub fn shard(groups: &[RowGroup], world: usize) -> Vec<(Vec<Shard>, u64)> {
    let world = world.max(1);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| groups[b].rows.cmp(&groups[a].rows).then(a.cmp(&b)));
    let mut owner = vec![0usize; groups.len()];
    let mut load = vec![0u64; world];
    for g in order {
        let r = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        owner[g] = r;
        load[r] += groups[g].rows;
    }
    let mut out: Vec<(Vec<Shard>, u64)> = vec![(Vec::new(), 0); world];
    for (g, group) in groups.iter().enumerate() {
        let (shards, rows) = &mut out[owner[g]];
        *rows += group.rows;
        match shards.last_mut() {
            Some(s) if s.part_path == group.part => {
                s.row_groups.push(group.index);
                s.rows += group.rows;
            }
            _ => shards.push(Shard {
                part_path: group.part.clone(),
                row_groups: vec![group.index],
                rows: group.rows,
            }),
        }
    }
    out
}

/// Steps per epoch that every rank runs (lockstep): one step per global batch of
/// `world x batch_size` rows of the dataset-wide training set. Each rank takes the rows of a
/// global batch that its shard holds (possibly none), so shard sizes do not change the count.
pub fn steps_per_epoch(train_rows: u64, world: usize, batch_size: u64) -> u64 {
    let global = batch_size.max(1) * world.max(1) as u64;
    train_rows.div_ceil(global).max(1)
}

/// A 64-bit mix (splitmix64 finaliser) used to derive independent seeds.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn str_hash(s: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's RandomState.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Splits a sampling request into chunks of at most [`SAMPLE_CHUNK_ROWS`] rows, each with its
/// own seed derived from (job seed, class, chunk number within the class).
pub fn sample_chunks(classes: &[(String, u64)], seed: u64) -> Vec<SampleChunk> {
    let mut chunks = Vec::new();
    for (class, count) in classes {
        let mut left = *count;
        let mut k = 0u64;
        while left > 0 {
            let n = left.min(SAMPLE_CHUNK_ROWS);
            chunks.push(SampleChunk {
                index: chunks.len() as u32,
                class_name: class.clone(),
                count: n,
                seed: mix(seed ^ mix(str_hash(class) ^ mix(k))),
            });
            left -= n;
            k += 1;
        }
    }
    chunks
}

/// The chunks rank `rank` of `world` generates (round-robin).
pub fn chunks_for_rank(chunks: &[SampleChunk], rank: usize, world: usize) -> Vec<SampleChunk> {
    chunks
        .iter()
        .filter(|c| c.index as usize % world.max(1) == rank)
        .cloned()
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn groups(sizes: &[(&str, u64)]) -> Vec<RowGroup> {
        let mut out = Vec::new();
        let mut idx = std::collections::HashMap::new();
        for (part, rows) in sizes {
            let i = idx.entry(*part).or_insert(0u32);
            out.push(RowGroup {
                part: part.to_string(),
                index: *i,
                rows: *rows,
            });
            *i += 1;
        }
        out
    }

    #[test]
    fn every_row_group_goes_to_exactly_one_rank_and_loads_are_balanced() {
        let g = groups(&[
            ("a", 100),
            ("a", 100),
            ("a", 40),
            ("b", 100),
            ("b", 60),
            ("c", 7),
        ]);
        for world in 1..=5 {
            let plan = shard(&g, world);
            assert_eq!(plan.len(), world);
            let total: u64 = plan.iter().map(|(_, r)| r).sum();
            assert_eq!(total, 407);
            let mut seen: Vec<(String, u32)> = plan
                .iter()
                .flat_map(|(s, _)| {
                    s.iter()
                        .flat_map(|sh| sh.row_groups.iter().map(|&i| (sh.part_path.clone(), i)))
                })
                .collect();
            seen.sort();
            assert_eq!(seen.len(), g.len(), "world {world}");
            seen.dedup();
            assert_eq!(seen.len(), g.len(), "a row group was assigned twice");
            for (shards, rows) in &plan {
                assert_eq!(*rows, shards.iter().map(|s| s.rows).sum::<u64>());
            }
        }
        let two = shard(&g, 2);
        // Greedy by size: 100,100 split; 100 -> rank 0; 60 and 40 -> rank 1; the 7 breaks the
        // 200:200 tie towards rank 0.
        assert_eq!((two[0].1, two[1].1), (207, 200));
    }

    #[test]
    fn lockstep_steps_follow_the_largest_shard() {
        assert_eq!(steps_per_epoch(1999, 2, 100), 10);
        assert_eq!(steps_per_epoch(2001, 2, 100), 11);
        assert_eq!(steps_per_epoch(1000, 1, 100), 10);
        assert_eq!(steps_per_epoch(0, 2, 100), 1);
    }

    #[test]
    fn chunks_cover_the_request_and_do_not_depend_on_the_worker_count() {
        let req = vec![("neptune".to_string(), 10_000), ("satan".to_string(), 5)];
        let chunks = sample_chunks(&req, 7);
        assert_eq!(chunks.iter().map(|c| c.count).sum::<u64>(), 10_005);
        assert_eq!(chunks.len(), 4);
        let seeds: std::collections::HashSet<u64> = chunks.iter().map(|c| c.seed).collect();
        assert_eq!(seeds.len(), chunks.len(), "chunk seeds must differ");
        for world in 1..=3 {
            let mut all: Vec<SampleChunk> = (0..world)
                .flat_map(|r| chunks_for_rank(&chunks, r, world))
                .collect();
            all.sort_by_key(|c| c.index);
            assert_eq!(all, chunks);
        }
        assert_ne!(sample_chunks(&req, 8)[0].seed, chunks[0].seed);
    }
}
