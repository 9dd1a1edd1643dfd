//! One evaluation from URLs to `report.json` / `report.html` / plots: loading, the metric
//! stages, timing, and writing the files through the object store (so `--out` may be a local
//! folder or a bucket prefix).

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use flowsynth_common::store::{Location, block_on};

use crate::classes::{self, ClassInputs};
use crate::downstream::{self, DownstreamOptions};
use crate::error::{Error, Result};
use crate::frame::{ColumnSpec, Encoder, Frame, Scaling, Schema, Values};
use crate::image_view;
use crate::load::{Datasets, load_all};
use crate::report::{ClassMatched, DatasetInfo, Inputs, REPORT_FORMAT_VERSION, Report};
use crate::{detection, fidelity, quality, render, validity, verdict};

/// What `flowsynth eval` does beyond the three URLs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Restrict the synthetic rows to these classes (empty = all classes).
    pub augment_only: Vec<String>,
    /// Rows per side for the metrics that compare every row with every other (alpha-precision,
    /// beta-recall, authenticity, DCR) and for the detection test. Larger inputs are subsampled
    /// uniformly (seeded).
    pub sample_rows: usize,
    /// Real rows the generator never saw, for DCR; defaults to the test split.
    pub holdout: Option<String>,
    /// Folds of the detection test.
    pub detection_folds: usize,
    /// Seed of every subsample (downstream seeds are `seed..seed + seeds`).
    pub seed: u64,
    /// Threads for the distance computations and the detectors.
    pub threads: usize,
    /// Skip the downstream-detection stage (fidelity and privacy only).
    pub skip_downstream: bool,
    pub downstream: DownstreamOptions,
}

impl Default for EvalOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        EvalOptions {
            augment_only: Vec::new(),
            sample_rows: 5_000,
            holdout: None,
            detection_folds: 3,
            seed: 0,
            threads,
            skip_downstream: false,
            downstream: DownstreamOptions {
                threads,
                ..DownstreamOptions::default()
            },
        }
    }
}

/// A finished evaluation: the report and the aligned data it was computed from (the renderer
/// plots the raw columns).
pub struct Evaluation {
    pub report: Report,
    pub datasets: Datasets,
    /// Real training rows of the classes the synthetic set holds: the reference of every
    /// fidelity and privacy metric.
    pub reference: Frame,
    /// Synthetic rows after `--augment-only`.
    pub synthetic: Frame,
}

/// Total variation distance between two class-count vectors.
fn class_tv(a: &[usize], b: &[usize]) -> f64 {
    let (na, nb) = (
        a.iter().sum::<usize>().max(1) as f64,
        b.iter().sum::<usize>().max(1) as f64,
    );
    0.5 * a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 / na - y as f64 / nb).abs())
        .sum::<f64>()
}

/// About `total` rows of `f` drawn without replacement per class in the proportions of
/// `target_counts`; a class with fewer rows than its share contributes all it has.
fn matched(f: &Frame, target_counts: &[usize], total: usize, seed: u64) -> Frame {
    let sum = target_counts.iter().sum::<usize>().max(1) as f64;
    f.sample_per_class(target_counts.len(), seed, |c, rows| {
        match target_counts[c] {
            0 => 0,
            n => ((total as f64 * n as f64 / sum).round() as usize).clamp(1, rows.max(1)),
        }
    })
}

/// The synthetic rows `--augment-only` keeps.
fn restrict(schema: &Schema, synthetic: &Frame, classes: &[String]) -> Result<Frame> {
    if classes.is_empty() {
        return Ok(synthetic.clone());
    }
    let counts = synthetic.class_counts(schema.classes.len());
    let mut keep = vec![false; schema.classes.len()];
    for name in classes {
        match schema.class_index(name) {
            Some(c) if counts[c] > 0 => keep[c] = true,
            _ => {
                let available: Vec<String> = schema.named_counts(&counts).into_keys().collect();
                return Err(Error::UnknownClass {
                    class: name.clone(),
                    available: available.join(", "),
                });
            }
        }
    }
    Ok(synthetic.select(&synthetic.rows_of_classes(&keep)))
}

/// `schema` and `frame` with the label as one more categorical column (the last), as it sits in
/// the tables SDMetrics' QualityReport would be given.
fn with_label_column(schema: &Schema, frame: &Frame) -> (Schema, Frame) {
    let mut s = schema.clone();
    let names: Vec<&str> = schema.classes.iter().map(String::as_str).collect();
    s.columns
        .push(ColumnSpec::categorical(schema.label.clone(), &names));
    let mut f = frame.clone();
    f.columns.push(Values::Categorical(frame.labels.clone()));
    (s, f)
}

/// Runs every stage and returns the report (nothing is written yet).
pub fn evaluate(
    train: &str,
    test: &str,
    synthetic: &str,
    opts: &EvalOptions,
) -> Result<Evaluation> {
    if opts.sample_rows < 10 {
        return Err(Error::Config(format!(
            "--sample-rows {} is too small (at least 10)",
            opts.sample_rows
        )));
    }
    let mut timings = BTreeMap::new();
    let mut notes = Vec::new();
    let t = Instant::now();
    let mut datasets = load_all(train, test, synthetic)?;
    // The DCR holdout, when given, is read once here against the same schema.
    let holdout = match &opts.holdout {
        Some(url) => {
            let before = (
                datasets.schema.columns.clone(),
                datasets.schema.classes.len(),
            );
            let frame = datasets.load_real(url)?;
            if before
                != (
                    datasets.schema.columns.clone(),
                    datasets.schema.classes.len(),
                )
            {
                notes.push(
                    "the holdout has categories or classes the test split lacks; DCR codes them \
                     as distinct values"
                        .into(),
                );
            }
            Some((frame, format!("holdout {url}")))
        }
        None => None,
    };
    timings.insert("load".into(), t.elapsed().as_secs_f64());
    notes.extend(datasets.notes.iter().cloned());
    let schema = &datasets.schema;
    tracing::info!(
        train = datasets.train.rows(),
        test = datasets.test.rows(),
        synthetic = datasets.synthetic.rows(),
        "loaded"
    );

    let syn = restrict(schema, &datasets.synthetic, &opts.augment_only)?;
    let syn_counts = syn.class_counts(schema.classes.len());
    let in_synthetic: Vec<bool> = syn_counts.iter().map(|&n| n > 0).collect();
    let reference = datasets
        .train
        .select(&datasets.train.rows_of_classes(&in_synthetic));
    if reference.rows() == 0 {
        return Err(Error::Empty {
            dataset: train.into(),
            detail: " of the classes the synthetic data holds (nothing to compare with)".into(),
        });
    }
    if reference.rows() < datasets.train.rows() {
        notes.push(format!(
            "fidelity and privacy compare the synthetic rows with the {} real training rows of \
             the same classes (of {}); validity constraints come from every training row",
            reference.rows(),
            datasets.train.rows()
        ));
    }
    let t = Instant::now();
    // The headline is SDMetrics' QualityReport on the two tables as they are, label included,
    // so it compares with published figures.
    let fid = {
        let (s, real) = with_label_column(schema, &datasets.train);
        let (_, synthetic) = with_label_column(schema, &syn);
        fidelity::evaluate(&s, &real, &synthetic)
    };
    tracing::info!(shape = ?fid.shape, trend = ?fid.trend, "fidelity");
    // A class-conditional generator is asked for a class mix of the user's choosing (rare attacks
    // boosted). Comparing it with the real data's own mix scores the mix as much as the flows, so
    // the privacy and detection metrics, and a second pair of fidelity figures, use a real
    // reference drawn per class in the synthetic set's proportions.
    let mix_tv = class_tv(&reference.class_counts(schema.classes.len()), &syn_counts);
    let (reference, class_matched) = if mix_tv > 0.01 {
        let matched = matched(
            &reference,
            &syn_counts,
            reference.rows(),
            opts.seed.wrapping_add(4),
        );
        let realised = class_tv(&matched.class_counts(schema.classes.len()), &syn_counts);
        notes.push(format!(
            "the synthetic class mix differs from the real one (total variation {mix_tv:.2}): \
             shape and trend compare the tables as they are (SDMetrics); `class_matched` and the \
             privacy and detection metrics use a real reference drawn per class in the synthetic \
             proportions ({} rows; remaining mix difference {realised:.2}, from classes with too \
             few real rows)",
            matched.rows()
        ));
        let f = fidelity::evaluate(schema, &matched, &syn);
        let cm = ClassMatched {
            shape: f.shape,
            trend: f.trend,
            reference_rows: matched.rows(),
            mix_difference: mix_tv,
            remaining_mix_difference: realised,
        };
        (matched, Some(cm))
    } else {
        (reference, None)
    };
    timings.insert("fidelity".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    // Domain constraints hold for the data as a whole, not per class: inferred from every real
    // training row (a rare class's few rows would make its unseen-but-valid values "invalid").
    let validity = validity::evaluate(schema, &datasets.train, &syn);
    timings.insert("validity".into(), t.elapsed().as_secs_f64());

    // Subsamples for the quadratic and the detection metrics.
    let ref_s = reference.subsample(opts.sample_rows, opts.seed);
    let syn_s = syn.subsample(opts.sample_rows, opts.seed.wrapping_add(1));
    if ref_s.rows() < reference.rows() || syn_s.rows() < syn.rows() {
        notes.push(format!(
            "alpha-precision, beta-recall, authenticity, detection and DCR use uniform subsamples \
             of {} real and {} synthetic rows (--sample-rows {}); shape, trend and validity use \
             every row",
            ref_s.rows(),
            syn_s.rows(),
            opts.sample_rows
        ));
    }
    let t = Instant::now();
    let minmax = Encoder::fit(schema, &reference, Scaling::MinMax);
    let q = quality::alpha_beta_authenticity(
        &minmax.encode(&ref_s),
        &minmax.encode(&syn_s),
        opts.threads,
    );
    timings.insert("alpha_beta_authenticity".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let standard = Encoder::fit(schema, &reference, Scaling::Standard);
    let det = detection::logistic_detection(
        &standard.encode(&ref_s),
        &standard.encode(&syn_s),
        opts.detection_folds,
        opts.seed,
    );
    timings.insert("detection".into(), t.elapsed().as_secs_f64());
    tracing::info!(
        detection = det.score,
        alpha = q.alpha_precision,
        beta = q.beta_recall,
        "quality"
    );

    // DCR against a holdout the generator never saw, of the same classes and size.
    let t = Instant::now();
    let (holdout, holdout_name) = match &holdout {
        Some((frame, name)) => (frame, name.clone()),
        None => (&datasets.test, "test split".to_string()),
    };
    let holdout_all = holdout.clone();
    let holdout = holdout.select(&holdout.rows_of_classes(&in_synthetic));
    let dcr = if holdout.rows() == 0 {
        notes.push(format!(
            "DCR skipped: the {holdout_name} has no rows of the synthetic data's classes"
        ));
        None
    } else {
        let m = opts.sample_rows.min(reference.rows()).min(holdout.rows());
        let tr = reference.subsample(m, opts.seed.wrapping_add(2));
        let ho = holdout.subsample(m, opts.seed.wrapping_add(3));
        if opts.holdout.is_none() {
            notes.push(
                "DCR uses the test split as holdout: a test split drawn from another period or \
                 capture (as NSL-KDD's) makes synthetic rows look closer to train even without \
                 memorisation; pass --holdout with unseen rows of the training distribution for a \
                 cleaner reading"
                    .into(),
            );
        }
        Some(quality::dcr(
            schema,
            &tr,
            &ho,
            &syn_s,
            &holdout_name,
            opts.threads,
        ))
    };
    timings.insert("dcr".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let per_class = classes::evaluate(&ClassInputs {
        schema,
        train: &datasets.train,
        synthetic: &syn,
        holdout: &holdout_all,
        sample_rows: opts.sample_rows,
        folds: opts.detection_folds,
        seed: opts.seed,
        downstream: &opts.downstream,
        encoder: &standard,
    })?;
    notes.push(format!(
        "per class: fidelity and detection against the class's real training rows; agreement = \
         share assigned to the class by a random forest trained on real training rows (at most \
         {} per class); copies = share equal to a training row feature for feature; each next \
         to the {holdout_name}'s rows of the class",
        classes::JUDGE_ROWS_PER_CLASS
    ));
    timings.insert("per_class".into(), t.elapsed().as_secs_f64());

    let downstream = if opts.skip_downstream {
        None
    } else {
        let t = Instant::now();
        let d = downstream::run(
            schema,
            &datasets.train,
            &datasets.test,
            &syn,
            &opts.downstream,
        )?;
        timings.insert("downstream".into(), t.elapsed().as_secs_f64());
        notes.extend(d.notes);
        Some(d.downstream)
    };

    // `syn` is the synthetic frame after --augment-only: the classes the user adds.
    let image_view = datasets.image_view.as_ref().and_then(|view| {
        image_view::class_images(view, schema, &datasets.train, &syn, &datasets.train_vocab)
    });

    let info = |url: &str, f: &Frame| DatasetInfo {
        url: url.to_string(),
        rows: f.rows(),
        class_counts: schema.named_counts(&f.class_counts(schema.classes.len())),
    };
    let report = Report {
        format_version: REPORT_FORMAT_VERSION,
        inputs: Inputs {
            train: info(train, &datasets.train),
            test: info(test, &datasets.test),
            synthetic: info(synthetic, &syn),
            augment_only: opts.augment_only.clone(),
            seeds: if opts.skip_downstream {
                0
            } else {
                opts.downstream.seeds
            },
            label_column: schema.label.clone(),
        },
        verdict: downstream.as_ref().map(verdict::verdict),
        shape: fid.shape,
        trend: fid.trend,
        columns: fid.columns,
        pairs: fid.pairs,
        class_matched,
        per_class,
        skipped: fid.skipped,
        alpha_precision: Some(q.alpha_precision).filter(|v| v.is_finite()),
        beta_recall: Some(q.beta_recall).filter(|v| v.is_finite()),
        authenticity: Some(q.authenticity).filter(|v| v.is_finite()),
        quality_curves: Some(q.curves),
        detection: Some(det).filter(|d| d.score.is_finite()),
        dcr,
        validity,
        downstream,
        image_view,
        notes,
        timings,
    };
    Ok(Evaluation {
        report,
        datasets,
        reference,
        synthetic: syn,
    })
}

/// Writes `report.json`, the plots and `report.html` (last, so a report page only exists once
/// everything it links to does) under `out`. Returns the written names.
pub fn write(eval: &Evaluation, out: &str) -> Result<Vec<String>> {
    let loc = Location::parse(out)?;
    let mut files = render::render(
        &eval.report,
        &eval.datasets.schema,
        &eval.reference,
        &eval.synthetic,
    )?;
    let json = serde_json::to_vec_pretty(&eval.report).map_err(|e| Error::Write {
        path: loc.display("report.json"),
        reason: e.to_string(),
    })?;
    files.push(("report.json".to_string(), json));
    // The page goes last.
    files.sort_by_key(|(name, _)| name == "report.html");
    let mut names = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        block_on(loc.put(&name, Bytes::from(bytes)))?;
        names.push(loc.display(&name));
    }
    Ok(names)
}
