//! `flowsynth eval` end to end on real NSL-KDD slices: the report's content and files, the
//! degenerate cases whose answers are known (a synthetic set that copies the training data), the
//! `--augment-only` restriction, and errors that name what is wrong.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use std::process::Output;

use common::{data_dir, json, run, run_ok};
use serde_json::Value;

/// Converts lines `skip..skip + take` of an NSL-KDD file into a dataset at `out`.
fn convert_slice(dir: &Path, file: &str, skip: usize, take: usize, out: &Path) {
    let gz = std::fs::File::open(data_dir().join("nsl-kdd").join(file)).unwrap();
    let reader = BufReader::new(flate2::read::GzDecoder::new(gz));
    let csv = dir.join(format!("{file}-{skip}-{take}.csv"));
    let mut w = std::fs::File::create(&csv).unwrap();
    for line in reader.lines().skip(skip).take(take) {
        writeln!(w, "{}", line.unwrap()).unwrap();
    }
    drop(w);
    run_ok(&[
        "convert",
        "--preset",
        "nsl-kdd",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    train: String,
    test: String,
    synthetic: String,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (train, test, synthetic) = (root.join("train"), root.join("test"), root.join("synth"));
    convert_slice(&root, "KDDTrain+.txt.gz", 0, 3000, &train);
    convert_slice(&root, "KDDTest+.txt.gz", 0, 1200, &test);
    // Other real training rows stand in for a good generator's output.
    convert_slice(&root, "KDDTrain+.txt.gz", 3000, 1500, &synthetic);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    Fixture {
        train: s(&train),
        test: s(&test),
        synthetic: s(&synthetic),
        root,
        _tmp: tmp,
    }
}

/// `flowsynth eval` of `synthetic` against the fixture's splits, writing to `out`.
fn eval(f: &Fixture, synthetic: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "eval",
        "--train",
        &f.train,
        "--test",
        &f.test,
        "--synthetic",
        synthetic,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// As [`eval`], which must succeed; returns stdout.
fn eval_ok(f: &Fixture, synthetic: &str, out: &Path, extra: &[&str]) -> String {
    let res = eval(f, synthetic, out, extra);
    assert!(
        res.status.success(),
        "eval {extra:?} failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8_lossy(&res.stdout).into_owned()
}

fn unit(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!((0.0..=1.0).contains(&x), "{what} = {x} outside [0, 1]");
    x
}

#[test]
fn report_holds_every_metric_and_the_page_links_existing_plots() {
    let f = fixture();
    let out = f.root.join("report");
    let stdout = eval_ok(
        &f,
        &f.synthetic,
        &out,
        &["--seeds", "2", "--sample-rows", "600"],
    );
    assert!(stdout.contains("macro-F1"), "{stdout}");
    let r = json(&out.join("report.json"));
    for key in [
        "shape",
        "trend",
        "columns",
        "pairs",
        "alpha_precision",
        "beta_recall",
        "authenticity",
        "detection",
        "dcr",
        "validity",
        "downstream",
    ] {
        assert!(
            r.get(key).is_some_and(|v| !v.is_null()),
            "report.json lacks `{key}`"
        );
    }
    // Real rows against other real rows of the same file: close marginals and dependence.
    assert!(unit(&r["shape"], "shape") > 0.85, "{}", r["shape"]);
    assert!(unit(&r["trend"], "trend") > 0.8, "{}", r["trend"]);
    assert!(unit(&r["detection"]["score"], "detection") > 0.5);
    unit(&r["alpha_precision"], "alpha_precision");
    unit(&r["beta_recall"], "beta_recall");
    unit(&r["authenticity"], "authenticity");
    unit(&r["dcr"]["share_closer_to_train"], "dcr share");
    assert!(unit(&r["validity"]["share_valid_rows"], "validity") > 0.9);
    assert_eq!(r["validity"]["real_share_valid_rows"], 1.0);
    // One score per feature of the training data, one per pair.
    let features = json(&Path::new(&f.train).join("_dataset.json"))["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] != "label")
        .count();
    assert!(features >= 30, "{features}");
    // The label is a column too, as in the tables SDMetrics' QualityReport would be given.
    let columns = features + 1;
    assert_eq!(r["columns"].as_array().unwrap().len(), columns);
    assert_eq!(
        r["pairs"].as_array().unwrap().len(),
        columns * (columns - 1) / 2
    );
    // The headline is SDMetrics 0.32's QualityReport on these two tables (values from
    // eval/tests/reference/quality_report_reference.py).
    for (key, want) in [("shape", 0.9872072072183152), ("trend", 0.951790372752743)] {
        let got = r[key].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{key}: {got}, SDMetrics {want}");
    }
    // The test slice has attacks the training slice lacks: said in the notes.
    let notes = r["notes"].to_string();
    assert!(notes.contains("absent from training"), "{notes}");
    assert!(notes.contains("subsample"), "{notes}");

    let d = &r["downstream"];
    let settings: Vec<&str> = d["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        settings,
        ["real", "real+synthetic", "real+ros", "real+smote"]
    );
    // Every augmented setting adds the synthetic set's class counts.
    assert_eq!(
        d["added_per_class"],
        r["inputs"]["synthetic"]["class_counts"]
    );
    let detectors = d["detectors"].as_array().unwrap();
    assert_eq!(detectors.len(), 3);
    for det in detectors {
        let name = det["detector"].as_str().unwrap();
        for s in det["settings"].as_array().unwrap() {
            let f1 = &s["macro_f1"];
            assert_eq!(f1["values"].as_array().unwrap().len(), 2, "{name}");
            unit(&f1["mean"], "macro_f1");
            unit(&s["weighted_f1"]["mean"], "weighted_f1");
            assert!(!s["per_class"].as_array().unwrap().is_empty());
        }
        // A detector trained on real NSL-KDD rows is far better than chance on this slice.
        let real = &det["settings"][0];
        assert!(
            real["weighted_f1"]["mean"].as_f64().unwrap() > 0.5,
            "{name}: {}",
            real["weighted_f1"]
        );
    }

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let mut images = 0;
    for piece in html.split("src=\"").skip(1) {
        let src = &piece[..piece.find('"').unwrap()];
        let bytes = std::fs::read(out.join(src)).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{src} is not a PNG");
        images += 1;
    }
    // One plot per column, a heatmap and one F1 chart per detector at least.
    assert!(images > features + 3, "{images} images");
}

#[test]
fn copies_of_the_training_data_are_flagged_by_privacy_metrics() {
    let f = fixture();
    let out = f.root.join("copy-report");
    // A holdout from the training distribution, as large as the training slice, so the DCR
    // reference is the whole training slice (the default holdout, the test split, is smaller).
    let holdout = f.root.join("holdout");
    convert_slice(&f.root, "KDDTrain+.txt.gz", 6000, 3000, &holdout);
    eval_ok(
        &f,
        &f.train,
        &out,
        &[
            "--no-downstream",
            "--sample-rows",
            "5000",
            "--holdout",
            holdout.to_str().unwrap(),
        ],
    );
    let r = json(&out.join("report.json"));
    assert_eq!(r["shape"], 1.0);
    assert_eq!(r["trend"], 1.0);
    assert_eq!(r["validity"]["share_valid_rows"], 1.0);
    // Every synthetic row is a training row: none is authentic, and nearly all sit closer to
    // the training data than to the holdout.
    assert_eq!(r["authenticity"], 0.0);
    assert!(
        r["dcr"]["share_closer_to_train"].as_f64().unwrap() > 0.9,
        "{}",
        r["dcr"]
    );
    assert_eq!(r["dcr"]["median_dcr_train"], 0.0);
    assert!(r["dcr"]["holdout"].as_str().unwrap().contains("holdout"));
    assert!(r["downstream"].is_null());
}

#[test]
fn augment_only_keeps_the_named_classes_and_rejects_unknown_ones() {
    let f = fixture();
    let out = f.root.join("rare");
    let bad = eval(
        &f,
        &f.synthetic,
        &out,
        &["--augment-only", "satan,no_such_attack"],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("no_such_attack"), "{err}");
    assert!(
        !out.exists(),
        "a failed eval must not leave a report behind"
    );

    eval_ok(
        &f,
        &f.synthetic,
        &out,
        &[
            "--augment-only",
            "satan, portsweep",
            "--seeds",
            "1",
            "--detectors",
            "rf,mlp",
            "--sample-rows",
            "300",
        ],
    );
    let r = json(&out.join("report.json"));
    let counts = r["inputs"]["synthetic"]["class_counts"]
        .as_object()
        .unwrap();
    let classes: Vec<&String> = counts.keys().collect();
    assert_eq!(classes, ["portsweep", "satan"]);
    assert_eq!(
        r["downstream"]["added_per_class"],
        r["inputs"]["synthetic"]["class_counts"]
    );
    assert_eq!(r["downstream"]["detectors"].as_array().unwrap().len(), 2);
    // Per class: both kept classes, each next to its real held-out rows (the test slice).
    let per_class = r["per_class"].as_array().unwrap();
    let mut names: Vec<&str> = per_class
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["portsweep", "satan"]);
    for c in per_class {
        assert!(c["train_rows"].as_u64().unwrap() > 0, "{c}");
        unit(&c["shape"], "per-class shape");
        unit(&c["agreement"], "agreement");
        unit(&c["holdout_agreement"], "holdout agreement");
        // Real rows of other parts of the same file: rarely exact copies.
        assert!(c["copy_rate"].as_f64().unwrap() < 0.2, "{c}");
    }
    // The rare-class F1 averages the kept classes that the test slice holds, and the verdict
    // compares it with real-only and SMOTE in words.
    let rare = r["downstream"]["rare_classes"].as_array().unwrap();
    assert!(!rare.is_empty());
    for det in r["downstream"]["detectors"].as_array().unwrap() {
        for s in det["settings"].as_array().unwrap() {
            unit(&s["rare_f1"]["mean"], "rare_f1");
        }
    }
    let verdict = &r["verdict"];
    let lines = verdict["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{verdict}");
    assert!(
        lines[0].as_str().unwrap().contains("rare-class F1"),
        "{verdict}"
    );
    assert!(lines[0].as_str().unwrap().contains("SMOTE"), "{verdict}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("id=verdict") && html.contains("id=classes"));
    // Constraints come from all training rows: a value valid elsewhere in the data is not made
    // invalid by the few real rows of the kept classes.
    let valid = r["validity"]["share_valid_rows"].as_f64().unwrap();
    assert!(valid > 0.95, "{valid}");
    assert_eq!(
        r["inputs"]["augment_only"],
        serde_json::json!(["satan", "portsweep"])
    );
}

#[test]
fn bad_inputs_fail_with_the_dataset_and_column_named() {
    let f = fixture();
    // Not a dataset at all.
    let empty = f.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = eval(&f, empty.to_str().unwrap(), &f.root.join("r1"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a flowsynth dataset") && err.contains("empty"),
        "{err}"
    );

    // A dataset with other columns: the missing one is named.
    let csv = f.root.join("other.csv");
    std::fs::write(
        &csv,
        "duration,protocol_type,label\n1,tcp,normal\n2,udp,neptune\n",
    )
    .unwrap();
    let other = f.root.join("other");
    run_ok(&[
        "convert",
        "--preset",
        "generic",
        csv.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    let out = eval(&f, other.to_str().unwrap(), &f.root.join("r2"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`service`") && err.contains("other"), "{err}");
    assert!(!f.root.join("r2").exists());
}

#[test]
fn every_model_mode_runs_from_convert_through_train_and_sample_to_eval() {
    let f = fixture();
    for mode in ["tabular", "multimodal", "data-space"] {
        let ck = f.root.join(format!("ck-{mode}"));
        run_ok(&[
            "train",
            "--data",
            &f.train,
            "--checkpoints",
            ck.to_str().unwrap(),
            "--mode",
            mode,
            "--epochs",
            "1",
            "--diffusion-epochs",
            "1",
            "--batch-size",
            "256",
            "--device",
            "cpu",
        ]);
        let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
        let config = std::fs::read_to_string(ck.join(latest.trim()).join("config.toml")).unwrap();
        assert!(config.contains(&format!("mode = \"{mode}\"")), "{config}");
        let out = f.root.join(format!("sample-{mode}"));
        run_ok(&[
            "sample",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--classes",
            "normal=80,neptune=80",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        let sample = json(&out.join("_sample.json"));
        assert_eq!(sample["synthetic_rows"], 160, "{mode}");
        // The sampler's own time is recorded apart from loading and writing.
        let generation = sample["generation_seconds"].as_f64().unwrap();
        assert!(
            generation > 0.0 && generation.is_finite(),
            "{mode}: {generation}"
        );
        // The multimodal model reports how well its two decoders agree on the rows it made.
        let coherence = &sample["cross_modal_coherence"];
        if mode == "multimodal" {
            let c = coherence.as_f64().unwrap();
            assert!(c.is_finite() && c >= 0.0, "{c}");
        } else {
            assert!(coherence.is_null(), "{mode}: {coherence}");
        }
        let report = f.root.join(format!("report-{mode}"));
        eval_ok(
            &f,
            out.to_str().unwrap(),
            &report,
            &["--seeds", "1", "--detectors", "rf"],
        );
        let r = json(&report.join("report.json"));
        unit(&r["shape"], "shape");
        // A multimodal sample carries its image layout: eval draws the mean image per class.
        let view = &r["image_view"];
        if mode == "multimodal" {
            assert_eq!(sample["image_view"]["side"], view["side"]);
            let mut classes: Vec<&str> = view["classes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["class"].as_str().unwrap())
                .collect();
            classes.sort_unstable();
            assert_eq!(classes, ["neptune", "normal"]);
            assert!(report.join("plots/image-view.png").exists());
        } else {
            assert!(view.is_null() && sample["image_view"].is_null(), "{mode}");
        }
    }
}
