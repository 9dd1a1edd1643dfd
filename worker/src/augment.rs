//! Class-faithful rows for a sampling job: the real rows of each requested class (read once per
//! worker), the model's anchors for neighbourhood sampling, and the acceptance step that keeps
//! only rows that are new.
//!
//! A generated row that equals a training row feature for feature is a copy, not a sample (it is
//! what random oversampling would give). Such rows are dropped and replaced by further draws, so
//! every class still gets exactly the rows requested.

use std::collections::{HashMap, HashSet};

use flowsynth_common::dataset;
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::store::{Location, block_on};
use flowsynth_common::table::{self, Layout, Table};

use crate::error::{Error, Result};
use flowsynth_model::rng::{Stream, derive, tag};
use flowsynth_model::{Anchors, FlowModel, SamplerOptions};

/// Real rows of a requested class kept as anchors (a seeded reservoir sample of larger classes;
/// the copy check still sees every row).
pub const ROWS_PER_CLASS: usize = 5_000;

/// Candidate rows drawn per requested row before a class is given up on.
pub const MAX_DRAWS_PER_ROW: usize = 20;

/// The real rows a sampling worker prepares once.
#[derive(Default)]
pub struct RealRows {
    /// Per requested class, its anchors for neighbourhood sampling (none when sampling from
    /// pure noise).
    pub anchors: HashMap<u32, Anchors>,
    /// Fingerprints of every training row ([`Table::row_fingerprint`]): 8 bytes a row.
    pub fingerprints: HashSet<u64>,
}

/// Opens the checkpoint's training data, refusing data that changed since training (its rows
/// would no longer be the ones the model learned).
pub fn training_data(
    ds: &DatasetManifest,
    dataset_url: &str,
    checkpoint_url: &str,
) -> Result<Location> {
    let data = Location::parse(dataset_url)?;
    let current = block_on(dataset::load_manifest(&data))?;
    if current.content_hash != ds.content_hash {
        return Err(Error::Checkpoint {
            location: checkpoint_url.to_string(),
            reason: format!(
                "its training data at {dataset_url} has changed since training (content hash \
                 differs)"
            ),
        });
    }
    Ok(data)
}

/// A seeded reservoir sample (Algorithm R) of each class's rows while the data streams by.
/// Each class draws from its own stream, so a class's anchors do not depend on which other
/// classes the worker prepares: a chunk re-run by another worker (a restarted sampling job, a
/// different world size) writes the same rows.
struct Reservoirs {
    /// Per class: its rows kept, the rows seen, its stream.
    classes: HashMap<u32, (Table, u64, Stream)>,
    seed: u64,
}

impl Reservoirs {
    fn offer(&mut self, t: &Table, i: usize, layout: &Layout) {
        let c = t.labels[i];
        let seed = self.seed;
        let (table, seen, stream) = self.classes.entry(c).or_insert_with(|| {
            let stream = Stream::new(derive(seed, &[tag::ANCHORS, u64::from(c)]));
            (Table::empty(layout), 0, stream)
        });
        *seen += 1;
        if table.rows() < ROWS_PER_CLASS {
            table.append(&t.select(&[i]));
            return;
        }
        let j = stream.below(*seen) as usize;
        if j < ROWS_PER_CLASS {
            table.replace_row(j, t, i);
        }
    }
}

/// Reads the training data once and prepares sampling of `classes` (codes): the fingerprints of
/// all rows and, when `near` is set, each requested class's anchors (at most
/// [`ROWS_PER_CLASS`] of its rows, chosen by `seed`).
pub fn real_rows(
    model: &FlowModel,
    data: &Location,
    ds: &DatasetManifest,
    classes: &HashSet<u32>,
    near: bool,
    seed: u64,
    class_names: &[String],
) -> Result<RealRows> {
    let layout = Layout::new(ds)?;
    let mut fingerprints = HashSet::new();
    let mut kept = Reservoirs {
        classes: HashMap::new(),
        seed,
    };
    for part in &ds.parts {
        let bytes = block_on(data.get(&part.path))?;
        let t = table::read_parquet(bytes, ds, &layout, None, &data.display(&part.path))?;
        for i in 0..t.rows() {
            fingerprints.insert(t.row_fingerprint(i));
            if classes.contains(&t.labels[i]) {
                kept.offer(&t, i, &layout);
            }
        }
    }
    let mut out = HashMap::new();
    for &c in classes {
        let Some((rows, _, _)) = kept.classes.get(&c) else {
            let name = class_names.get(c as usize).map_or("?", String::as_str);
            return Err(Error::Assignment {
                reason: format!("class `{name}` has no rows in the training data"),
            });
        };
        if near {
            out.insert(c, model.anchors(rows)?);
        }
    }
    Ok(RealRows {
        anchors: out,
        fingerprints,
    })
}

/// Exactly `count` new rows of class `label`: draws candidates ([`FlowModel::sample_class`]) and
/// keeps those that copy no training row (of any class), drawing again until enough are kept.
/// Fails, naming the class, when fewer than one in [`MAX_DRAWS_PER_ROW`] candidates is new.
/// Returns the rows, the candidates drawn and (multimodal) each kept row's cross-modal
/// coherence.
pub fn new_rows(
    model: &FlowModel,
    label: u32,
    count: usize,
    real: &RealRows,
    opts: &SamplerOptions,
    seed: u64,
    class_name: &str,
) -> Result<(Table, usize, Option<Vec<f64>>)> {
    let mut kept = Table {
        numeric: vec![Vec::new(); model.preprocessor().n_num()],
        categorical: vec![Vec::new(); model.preprocessor().n_cat()],
        labels: Vec::new(),
    };
    let mut drawn = 0usize;
    let mut coherence: Option<Vec<f64>> = None;
    while kept.rows() < count {
        if drawn >= count.saturating_mul(MAX_DRAWS_PER_ROW) {
            return Err(Error::Assignment {
                reason: format!(
                    "only {} of {drawn} rows generated for class `{class_name}` were not copies \
                     of training rows; sample with a higher --strength",
                    kept.rows()
                ),
            });
        }
        // Ask for what is missing plus a margin for the copies to be expected.
        let missing = count - kept.rows();
        let want = missing + missing / 8 + 16;
        let anchors = real.anchors.get(&label);
        let (rows, scores) =
            model.sample_class_scored(label, want, anchors, opts, seed, drawn as u64)?;
        drawn += want;
        let new: Vec<usize> = (0..rows.rows())
            .filter(|&i| !real.fingerprints.contains(&rows.row_fingerprint(i)))
            .take(missing)
            .collect();
        if let Some(scores) = scores {
            coherence
                .get_or_insert_with(Vec::new)
                .extend(new.iter().map(|&i| scores[i]));
        }
        kept.append(&rows.select(&new));
    }
    Ok((kept, drawn, coherence))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flowsynth_model::testutil::{tiny_model, tiny_train, two_class_dataset};
    use flowsynth_model::{Stage, Trainer};
    use tch::{Device, Tensor};

    /// A tiny model trained for both stages on the two-class table.
    fn trained(rows: usize, seed: u64, epochs: usize) -> (Trainer, Table) {
        let (table, manifest) = two_class_dataset(rows, seed);
        let mut cfg = tiny_train(epochs, epochs + 1);
        cfg.batch_size = 100;
        let mut t = Trainer::new(&manifest, &cfg, &tiny_model(), Device::Cpu).unwrap();
        let mut hook = |_: &[Tensor]| -> flowsynth_model::Result<()> { Ok(()) };
        while t.state().stage != Stage::Done {
            t.run_epoch(&table, &Table::default(), &mut hook).unwrap();
        }
        (t, table)
    }

    #[test]
    fn copies_of_training_rows_are_replaced_and_counts_stay_exact() {
        let (t, table) = trained(300, 4, 2);
        let m = t.model();
        let ones: Vec<usize> = (0..table.rows())
            .filter(|&i| table.labels[i] == 1)
            .collect();
        let anchors = m.anchors(&table.select(&ones)).unwrap();
        let mut opts = SamplerOptions::new(8, 1.0);
        opts.strength = 0.2;
        // Pretend the first 40 candidates the sampler will draw are training rows.
        let first = m.sample_class(1, 40, Some(&anchors), &opts, 9, 0).unwrap();
        let fingerprints: HashSet<u64> = (0..first.rows())
            .map(|i| first.row_fingerprint(i))
            .collect();
        let real = RealRows {
            anchors: HashMap::from([(1, anchors)]),
            fingerprints,
        };
        let (rows, drawn, coherence) = new_rows(m, 1, 40, &real, &opts, 9, "one").unwrap();
        assert!(coherence.is_none(), "the tabular model has no image view");
        assert_eq!(rows.rows(), 40);
        assert!(rows.labels.iter().all(|&l| l == 1));
        assert!(
            drawn > 40,
            "the copies were drawn again ({drawn} candidates)"
        );
        assert!((0..rows.rows()).all(|i| !real.fingerprints.contains(&rows.row_fingerprint(i))));
        // Deterministic for the seed.
        let (again, ..) = new_rows(m, 1, 40, &real, &opts, 9, "one").unwrap();
        assert_eq!(again, rows);
    }

    #[test]
    fn a_class_whose_rows_are_all_copies_fails_naming_it() {
        let (t, _) = trained(200, 5, 1);
        let m = t.model();
        let opts = SamplerOptions::new(4, 1.0);
        // Every candidate the sampler can draw within the budget is marked as a copy.
        let all = m
            .sample_class(0, 5 * MAX_DRAWS_PER_ROW + 200, None, &opts, 1, 0)
            .unwrap();
        let real = RealRows {
            anchors: HashMap::new(),
            fingerprints: (0..all.rows()).map(|i| all.row_fingerprint(i)).collect(),
        };
        let err = new_rows(m, 0, 5, &real, &opts, 1, "zero")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`zero`") && err.contains("--strength"),
            "{err}"
        );
    }
}
