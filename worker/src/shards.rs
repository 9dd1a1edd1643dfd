//! A training rank's rows: the dataset-wide train/validation split, and the row groups this
//! rank holds, served to the trainer as a [`RowSource`].
//!
//! Opening reads every assigned part once (verifying it against its sha256 in `dataset.json`,
//! one part in memory at a time) to keep the held-out rows and count the training rows per row
//! group and class. A training set that fits the shuffle window (`train.shuffle_window_rows`)
//! is kept from that read; a larger one is streamed: each window the trainer asks for is read
//! back row group by row group with ranged reads (the part's footer parsed once, the object's
//! ETag checked so that a part changed since it was verified is refused), so a worker's memory
//! is bounded by the window, not by the dataset.

use std::collections::HashMap;
use std::ops::Range;

use flowsynth_common::checkpoint::sha256_hex;
use flowsynth_common::config::JobConfig;
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::store::{Location, block_on};
use flowsynth_common::table::{self, ArrowReaderMetadata, ByteRange, Layout, Table};
use flowsynth_model::rng::{IndexBijection, derive, tag};
use flowsynth_model::{ModelError, RowSource};
use flowsynth_proto::Assignment;

use crate::error::{Error, Result};

/// What the split makes of a dataset row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Train,
    HeldOut,
    Unused,
}

/// The dataset-wide split, the same on every rank whatever the sharding: a seeded bijection of
/// the row ids ranks the rows; the first `max_rows` (all when 0) are used, and the first
/// `validation_fraction` of those are held out. Evaluated per row, in constant memory.
struct Split {
    rank: IndexBijection,
    used: u64,
    held_out: u64,
}

impl Split {
    fn new(total_rows: u64, cfg: &JobConfig) -> Self {
        let (used, held_out) = cfg.train.split_sizes(total_rows);
        Self {
            rank: IndexBijection::new(derive(cfg.train.seed, &[tag::SPLIT]), total_rows),
            used,
            held_out,
        }
    }

    fn role(&self, id: u64) -> Role {
        match self.rank.apply(id) {
            r if r < self.held_out => Role::HeldOut,
            r if r < self.used => Role::Train,
            _ => Role::Unused,
        }
    }
}

/// A row group this rank holds.
struct OwnedGroup {
    part: usize,
    /// Row group index within its part.
    index: usize,
    /// Dataset-wide id of its first row (rows are numbered parts in manifest order, row groups
    /// in file order).
    first_id: u64,
    rows: u64,
    span: Range<u64>,
}

/// An assigned part: where it is, the version that was verified, its parsed footer.
struct PartInfo {
    path: String,
    e_tag: Option<String>,
    size: u64,
    metadata: ArrowReaderMetadata,
}

/// This rank's training rows as a [`RowSource`] (groups: the dataset's row groups).
pub struct ShardRows {
    data: Location,
    manifest: DatasetManifest,
    layout: Layout,
    split: Split,
    world: usize,
    /// Training rows of every row group of the dataset, and its first training position.
    group_rows: Vec<usize>,
    group_first: Vec<usize>,
    owned: HashMap<usize, OwnedGroup>,
    parts: Vec<PartInfo>,
    /// `[group][class]` training rows of the groups held here.
    class_counts: Vec<Vec<u64>>,
    loaded_groups: Vec<usize>,
    loaded_everywhere: Vec<u32>,
    table: Table,
    positions: Vec<usize>,
    /// The rows of the classes asked for with every window (the rarest), read once, and the
    /// classes they are.
    held: (Vec<u32>, Table, Vec<usize>),
}

impl ShardRows {
    /// Verifies and reads this rank's assigned row groups once: returns the source of its
    /// training rows and its held-out (validation) rows.
    pub fn open(
        data: &Location,
        manifest: &DatasetManifest,
        a: &Assignment,
        cfg: &JobConfig,
    ) -> Result<(Self, Table)> {
        let layout = Layout::new(manifest)?;
        let split = Split::new(manifest.total_rows, cfg);
        let classes = manifest.classes()?.len();
        // Every row group of the dataset, in id order, with its training rows.
        let (mut group_rows, mut group_first, mut first_id) = (Vec::new(), Vec::new(), Vec::new());
        let mut first_group = Vec::with_capacity(manifest.parts.len());
        let (mut id, mut position) = (0u64, 0usize);
        for part in &manifest.parts {
            first_group.push(group_rows.len());
            for &rows in &part.row_groups {
                let train = (id..id + rows)
                    .filter(|&i| split.role(i) == Role::Train)
                    .count();
                first_id.push(id);
                group_first.push(position);
                group_rows.push(train);
                position += train;
                id += rows;
            }
        }
        if id != manifest.total_rows {
            return Err(Error::Assignment {
                reason: format!(
                    "dataset.json counts {} rows but its parts' row groups hold {id}",
                    manifest.total_rows
                ),
            });
        }
        let global_rows = position;
        let world = a.world_size.max(1) as usize;
        let keep_all = !cfg.train.streams(global_rows as u64, group_rows.len());

        let mut source = Self {
            data: data.clone(),
            manifest: manifest.clone(),
            layout: layout.clone(),
            split,
            world,
            class_counts: vec![vec![0; classes]; group_rows.len()],
            group_rows,
            group_first,
            owned: HashMap::new(),
            parts: Vec::new(),
            loaded_groups: Vec::new(),
            loaded_everywhere: Vec::new(),
            table: Table::empty(&layout),
            positions: Vec::new(),
            held: (Vec::new(), Table::empty(&layout), Vec::new()),
        };
        let mut val = Table::empty(&layout);
        for shard in &a.shards {
            let (index, part) = manifest
                .parts
                .iter()
                .enumerate()
                .find(|(_, p)| p.path == shard.part_path)
                .ok_or_else(|| Error::Assignment {
                    reason: format!("part `{}` is not in the dataset manifest", shard.part_path),
                })?;
            let location = data.display(&part.path);
            let got = block_on(data.get_versioned(&part.path))?.ok_or_else(|| {
                flowsynth_common::Error::InvalidPart {
                    location: location.clone(),
                    reason: "it does not exist".into(),
                }
            })?;
            let bytes = got.bytes;
            if sha256_hex(&bytes) != part.sha256 {
                return Err(flowsynth_common::Error::InvalidPart {
                    location,
                    reason: "content does not match its sha256 in dataset.json (modified or \
                             corrupt)"
                        .into(),
                }
                .into());
            }
            let metadata = table::part_metadata(&bytes, &location)?;
            let part_slot = source.parts.len();
            let mut groups: Vec<usize> = shard.row_groups.iter().map(|&g| g as usize).collect();
            groups.sort_unstable();
            groups.dedup();
            for g in groups {
                let Some(&rows) = part.row_groups.get(g) else {
                    return Err(Error::Assignment {
                        reason: format!(
                            "row group {g} of `{}` does not exist ({} row groups)",
                            part.path,
                            part.row_groups.len()
                        ),
                    });
                };
                let global = first_group[index] + g;
                let owned = OwnedGroup {
                    part: part_slot,
                    index: g,
                    first_id: first_id[global],
                    rows,
                    span: table::row_group_span(&metadata, g, &location)?,
                };
                // The whole part is in memory: read the group from it with the parsed footer.
                let whole = ByteRange {
                    start: 0,
                    bytes: bytes.clone(),
                    file_len: bytes.len() as u64,
                };
                let t = table::read_row_group(
                    whole,
                    metadata.clone(),
                    g,
                    manifest,
                    &layout,
                    &location,
                )?;
                let roles = source.roles(&owned, &t, &location)?;
                let with = |role: Role| -> Vec<usize> {
                    (0..roles.len()).filter(|&k| roles[k] == role).collect()
                };
                let (train, held) = (with(Role::Train), with(Role::HeldOut));
                for &k in &train {
                    let class = t.labels[k] as usize;
                    if let Some(n) = source.class_counts[global].get_mut(class) {
                        *n += 1;
                    }
                }
                val.append_rows(&t, &held);
                if keep_all {
                    source.table.append_rows(&t, &train);
                    let first = source.group_first[global];
                    source.positions.extend(first..first + train.len());
                }
                source.owned.insert(global, owned);
            }
            source.parts.push(PartInfo {
                path: part.path.clone(),
                e_tag: got.version.e_tag,
                size: bytes.len() as u64,
                metadata,
            });
        }
        if keep_all {
            source.loaded_groups = (0..source.group_rows.len()).collect();
        }
        Ok((source, val))
    }

    /// Rows of the dataset-wide training set (over all ranks).
    pub fn global_rows(&self) -> usize {
        self.group_rows.iter().sum()
    }

    /// Each row's role in the split; the row count must be the manifest's.
    fn roles(&self, g: &OwnedGroup, t: &Table, location: &str) -> Result<Vec<Role>> {
        if t.rows() as u64 != g.rows {
            return Err(flowsynth_common::Error::InvalidPart {
                location: location.to_string(),
                reason: format!(
                    "row group {} holds {} rows, dataset.json says {}",
                    g.index,
                    t.rows(),
                    g.rows
                ),
            }
            .into());
        }
        Ok((0..g.rows)
            .map(|k| self.split.role(g.first_id + k))
            .collect())
    }

    /// Reads held row group `global` back from the store: the group, and which of its rows are
    /// training rows whose class `keep` accepts, with their positions.
    fn read_group(
        &self,
        global: usize,
        g: &OwnedGroup,
        keep: impl Fn(u32) -> bool,
    ) -> Result<(Table, Vec<usize>, Vec<usize>)> {
        let part = &self.parts[g.part];
        let location = self.data.display(&part.path);
        let bytes = block_on(self.data.get_range(
            &part.path,
            g.span.clone(),
            part.e_tag.as_deref(),
        ))?;
        let range = ByteRange {
            start: g.span.start,
            bytes,
            file_len: part.size,
        };
        let t = table::read_row_group(
            range,
            part.metadata.clone(),
            g.index,
            &self.manifest,
            &self.layout,
            &location,
        )?;
        let roles = self.roles(g, &t, &location)?;
        let train: Vec<usize> = (0..t.rows()).filter(|&k| roles[k] == Role::Train).collect();
        if train.len() != self.group_rows[global] {
            return Err(Error::Assignment {
                reason: format!(
                    "row group {} of {location} gave {} training rows, {} when it was verified",
                    g.index,
                    train.len(),
                    self.group_rows[global]
                ),
            });
        }
        let first = self.group_first[global];
        let (rows, positions): (Vec<usize>, Vec<usize>) = train
            .iter()
            .enumerate()
            .filter(|&(_, &k)| keep(t.labels[k]))
            .map(|(j, &k)| (k, first + j))
            .unzip();
        Ok((t, rows, positions))
    }

    /// Appends the training rows of the owned `groups` whose class `keep` accepts to `table` and
    /// `positions`, in group order, after making room for them and `extra` more rows (buffers
    /// are reused from window to window: one allocation pattern however many windows pass).
    fn read_groups(
        &self,
        groups: &[usize],
        keep: impl Fn(u32) -> bool + Copy,
        extra: usize,
        table: &mut Table,
        positions: &mut Vec<usize>,
    ) -> flowsynth_model::Result<()> {
        let room = extra
            + groups
                .iter()
                .filter(|g| self.owned.contains_key(g))
                .map(|&g| self.group_rows[g])
                .sum::<usize>();
        table.reserve(room);
        positions.reserve(room);
        for &global in groups {
            let Some(g) = self.owned.get(&global) else {
                continue;
            };
            let (t, rows, p) = self
                .read_group(global, g, keep)
                .map_err(|e| ModelError::Rows(Box::new(e)))?;
            table.append_rows(&t, &rows);
            positions.extend(p);
        }
        Ok(())
    }
}

impl RowSource for ShardRows {
    fn world(&self) -> usize {
        self.world
    }

    fn group_rows(&self) -> &[usize] {
        &self.group_rows
    }

    fn local_class_counts(&mut self, classes: usize) -> flowsynth_model::Result<Vec<Vec<u64>>> {
        Ok(self
            .class_counts
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.resize(classes, 0);
                c
            })
            .collect())
    }

    fn load(&mut self, groups: &[usize], everywhere: &[u32]) -> flowsynth_model::Result<()> {
        if self.loaded_groups == groups && self.loaded_everywhere == everywhere {
            return Ok(());
        }
        // The previous window's buffers take the next one.
        let (mut table, mut positions) = (
            std::mem::take(&mut self.table),
            std::mem::take(&mut self.positions),
        );
        table.clear();
        positions.clear();
        self.loaded_groups.clear();
        if !everywhere.is_empty() && self.held.0 != everywhere {
            let mut owned: Vec<usize> = self.owned.keys().copied().collect();
            owned.sort_unstable();
            let (mut t, mut p) = (Table::empty(&self.layout), Vec::new());
            self.read_groups(&owned, |c| everywhere.contains(&c), 0, &mut t, &mut p)?;
            self.held = (everywhere.to_vec(), t, p);
        }
        let extra = if everywhere.is_empty() {
            0
        } else {
            self.held.2.len()
        };
        let read = self.read_groups(
            groups,
            |c| !everywhere.contains(&c),
            extra,
            &mut table,
            &mut positions,
        );
        if read.is_ok() && !everywhere.is_empty() {
            table.append(&self.held.1);
            positions.extend_from_slice(&self.held.2);
        }
        self.table = table;
        self.positions = positions;
        if read.is_err() {
            self.table.clear();
            self.positions.clear();
        } else {
            self.loaded_groups = groups.to_vec();
            self.loaded_everywhere = everywhere.to_vec();
        }
        read
    }

    fn loaded(&self) -> (&Table, &[usize]) {
        (&self.table, &self.positions)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use flowsynth_common::convert::{ConvertOptions, convert};
    use flowsynth_proto::Shard;

    use super::*;

    /// 400 rows of a small generic CSV (two classes, the rarer one in the first rows) in
    /// row groups of 50, one part.
    fn dataset(dir: &std::path::Path) -> (Location, DatasetManifest) {
        let csv = dir.join("flows.csv");
        let mut text = String::from("bytes,duration,label\n");
        for i in 0..400 {
            let label = if i < 30 { "rare" } else { "common" };
            text.push_str(&format!("{},{}.5,{label}\n", i * 7 % 113, i % 17));
        }
        std::fs::write(&csv, text).unwrap();
        let out = Location::parse(dir.join("data").to_str().unwrap()).unwrap();
        let opts = ConvertOptions {
            row_group_rows: 50,
            ..ConvertOptions::default()
        };
        let manifest = convert(&[PathBuf::from(&csv)], &out, &opts).unwrap();
        (out, manifest)
    }

    fn assignment(manifest: &DatasetManifest) -> Assignment {
        Assignment {
            world_size: 1,
            shards: manifest
                .parts
                .iter()
                .map(|p| Shard {
                    part_path: p.path.clone(),
                    row_groups: (0..p.row_groups.len() as u32).collect(),
                    rows: p.rows,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn streamed_groups_are_read_back_by_range_and_a_changed_part_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, manifest) = dataset(tmp.path());
        let mut cfg = JobConfig::default();
        cfg.train.shuffle_window_rows = 100;
        let (mut rows, val) =
            ShardRows::open(&data, &manifest, &assignment(&manifest), &cfg).unwrap();
        // 5% of 400 held out; the rest tile the positions, group by group.
        assert_eq!(val.rows(), 20);
        assert_eq!(rows.global_rows(), 380);
        assert_eq!(rows.group_rows().len(), 8);
        assert!(
            rows.loaded().0.rows() == 0,
            "a streamed set is not kept from the first read"
        );
        let counts = rows.local_class_counts(2).unwrap();
        assert_eq!(
            counts.iter().flatten().sum::<u64>(),
            380,
            "every training row counted once"
        );

        rows.load(&[3, 1], &[]).unwrap();
        let (t, positions) = rows.loaded();
        assert_eq!(t.rows(), rows.group_rows[3] + rows.group_rows[1]);
        let first3 = rows.group_first[3];
        assert_eq!(positions[0], first3);
        assert!(
            positions
                .windows(2)
                .take(rows.group_rows[3] - 1)
                .all(|w| w[1] == w[0] + 1)
        );
        // The rare class (label code of "rare") from every group, plus group 5's other rows.
        let rare = manifest
            .classes()
            .unwrap()
            .iter()
            .position(|c| c == "rare")
            .unwrap() as u32;
        rows.load(&[5], &[rare]).unwrap();
        let (t, _) = rows.loaded();
        let rare_rows = t.labels.iter().filter(|&&l| l == rare).count() as u64;
        assert_eq!(
            rare_rows,
            counts.iter().map(|c| c[rare as usize]).sum::<u64>()
        );
        assert!(rare_rows > 20);

        // The part changes after it was verified: the next ranged read is refused, naming it.
        let part = &manifest.parts[0].path;
        let path = tmp.path().join("data").join(part);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0);
        std::fs::write(&path, bytes).unwrap();
        let err = rows.load(&[0], &[]).unwrap_err().to_string();
        assert!(err.contains(part.as_str()), "{err}");
        assert_eq!(rows.loaded().0.rows(), 0, "nothing half-loaded is left");
    }

    #[test]
    fn a_set_that_fits_the_window_is_kept_from_the_first_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, manifest) = dataset(tmp.path());
        let cfg = JobConfig::default();
        let (mut rows, _) =
            ShardRows::open(&data, &manifest, &assignment(&manifest), &cfg).unwrap();
        let all: Vec<usize> = (0..rows.group_rows().len()).collect();
        assert_eq!(rows.loaded().0.rows(), 380);
        assert_eq!(rows.loaded().1, (0..380).collect::<Vec<_>>().as_slice());
        // Loading all groups reads nothing again: it works after the data is gone.
        std::fs::remove_dir_all(tmp.path().join("data")).unwrap();
        rows.load(&all, &[]).unwrap();
        assert_eq!(rows.loaded().0.rows(), 380);
    }
}
