//! Where a trainer's rows come from: [`RowSource`].
//!
//! A training set is a sequence of *groups* (a dataset row group's training rows, say) that tile
//! the dataset-wide training positions `0..global_rows` in order; each rank of a data-parallel
//! job holds some of them. The trainer asks its source for a set of groups at a time and works on
//! what it loaded, so the source decides how much is in memory: [`TableSource`] is a table that
//! is already all there, the worker's source reads row groups from the object store as the
//! trainer walks through them.

use flowsynth_common::table::Table;

use crate::error::{ModelError, Result};

/// This rank's share of a dataset-wide training set, loaded a set of groups at a time.
pub trait RowSource {
    /// Ranks sharing the training set (the global batch is `world` times the batch size).
    fn world(&self) -> usize;
    /// Training rows of each group over all ranks, in position order: group `g` holds the
    /// positions `sum(group_rows[..g]) .. sum(group_rows[..=g])`. The same on every rank.
    fn group_rows(&self) -> &[usize];
    /// This rank's training rows of each group by class (`[group][class]`; zeros for the groups
    /// other ranks hold). Asked once per trainer, before streaming class-tempered epochs.
    fn local_class_counts(&mut self, classes: usize) -> Result<Vec<Vec<u64>>>;
    /// Makes this rank's rows of `groups`, and its rows of the classes `everywhere` from all its
    /// groups (those only once), the loaded rows, replacing what was loaded (a no-op when exactly
    /// these are loaded already). `everywhere` holds the rarest classes, few rows, asked for
    /// with every window of a streamed pass: a source may keep them between calls.
    fn load(&mut self, groups: &[usize], everywhere: &[u32]) -> Result<()>;
    /// The loaded rows and each one's global position.
    fn loaded(&self) -> (&Table, &[usize]);
}

/// A table in memory as a [`RowSource`] of one group: the whole training set of a trainer alone
/// (positions `0..rows`), or one rank's rows with their global positions. It is always loaded
/// whole (one group is never streamed).
#[derive(Debug)]
pub struct TableSource<'a> {
    table: &'a Table,
    positions: Vec<usize>,
    world: usize,
    group_rows: [usize; 1],
}

impl<'a> TableSource<'a> {
    /// All of `table`, alone.
    pub fn alone(table: &'a Table) -> Self {
        Self {
            table,
            positions: (0..table.rows()).collect(),
            world: 1,
            group_rows: [table.rows()],
        }
    }

    /// `table` as one of `world` ranks: row `i` is the global position `positions[i]` of a
    /// training set of `global_rows`.
    pub fn rank(
        table: &'a Table,
        positions: Vec<usize>,
        world: usize,
        global_rows: usize,
    ) -> Result<Self> {
        if positions.len() != table.rows() {
            return Err(ModelError::TableLayout {
                reason: format!(
                    "the partition lists {} rows for {} training rows",
                    positions.len(),
                    table.rows()
                ),
            });
        }
        Ok(Self {
            table,
            positions,
            world: world.max(1),
            group_rows: [global_rows],
        })
    }
}

impl RowSource for TableSource<'_> {
    fn world(&self) -> usize {
        self.world
    }
    fn group_rows(&self) -> &[usize] {
        &self.group_rows
    }
    fn local_class_counts(&mut self, classes: usize) -> Result<Vec<Vec<u64>>> {
        Ok(vec![class_counts(&self.table.labels, classes)?])
    }
    fn load(&mut self, _groups: &[usize], _everywhere: &[u32]) -> Result<()> {
        Ok(())
    }
    fn loaded(&self) -> (&Table, &[usize]) {
        (self.table, &self.positions)
    }
}

/// Rows per class of `labels`; a label outside `0..classes` is an error.
pub fn class_counts(labels: &[u32], classes: usize) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; classes];
    for &l in labels {
        *counts
            .get_mut(l as usize)
            .ok_or(ModelError::LabelOutOfRange {
                label: u64::from(l),
                classes,
            })? += 1;
    }
    Ok(counts)
}
