//! End to end through every layer with real processes: `flowsynth convert` on a subset of the
//! real NSL-KDD file, a coordinator and two workers as separate processes on loopback gRPC with a
//! file-backed object store, a two-worker data-parallel training job, a two-worker sampling job,
//! and the results read back with the `parquet` crate (independently of flowsynth's own reader).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use common::*;

#[test]
fn convert_train_and_sample_through_coordinator_and_worker_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dataset = root.join("dataset");
    let ckpts = root.join("checkpoints");
    let out = root.join("augmented");

    // 1. convert
    convert_nsl_subset(root, 6000, dataset.to_str().unwrap(), 2000, &[]);
    let ds = json(&dataset.join("_dataset.json"));
    assert_eq!(ds["total_rows"], 6000);
    let columns = ds["columns"].as_array().unwrap().clone();
    let classes: BTreeMap<String, u64> = ds["class_counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert!(classes.contains_key("neptune") && classes.contains_key("satan"));
    // The folder is a Parquet dataset to other tools: the manifest does not get in the way.
    let label_column = ds["label_column"].as_str().unwrap();
    assert_eq!(
        pyarrow_read_folder(&dataset, label_column),
        (6000, classes.clone())
    );

    // 2. coordinator + two workers as processes
    let (_coord, url) = start_coordinator(root.join("state").to_str().unwrap(), &[], &[]);
    let _workers = start_workers(2, &url, &[]);

    // 3. train through the coordinator
    let config = root.join("job.toml");
    std::fs::write(
        &config,
        "[train]\nepochs = 2\ndiffusion_epochs = 3\nbatch_size = 512\ncheckpoint_every = 2\nthreads = 1\n\n[model]\ndenoiser_width = 64\nsampler_steps = 8\n",
    )
    .unwrap();
    let started = Instant::now();
    let stdout = run_ok(&[
        "submit",
        "train",
        "--coordinator",
        &url,
        "--data",
        dataset.to_str().unwrap(),
        "--checkpoints",
        ckpts.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--seed",
        "3",
        "--workers",
        "2",
        "--wait",
    ]);
    assert!(stdout.contains("succeeded"), "{stdout}");
    eprintln!("training took {:?}", started.elapsed());

    // The checkpoint: committed manifest listing every file with a matching sha256.
    let latest = std::fs::read_to_string(ckpts.join("latest")).unwrap();
    let ck = ckpts.join(latest.trim());
    let manifest = json(&ck.join("manifest.json"));
    assert_eq!(manifest["stage"], "done");
    let files: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    for needed in [
        "weights.safetensors",
        "optimizer.safetensors",
        "dataset.json",
        "config.toml",
        "state.json",
    ] {
        assert!(
            files.iter().any(|f| f == needed),
            "{needed} missing from {files:?}"
        );
        assert!(ck.join(needed).exists());
    }
    let config_saved = std::fs::read_to_string(ck.join("config.toml")).unwrap();
    assert!(
        config_saved.contains("seed = 3"),
        "flag must override the file: {config_saved}"
    );

    // 4. sample through the coordinator
    let stdout = run_ok(&[
        "submit",
        "sample",
        "--coordinator",
        &url,
        "--checkpoint",
        ckpts.to_str().unwrap(),
        "--classes",
        "neptune=300,satan=5000",
        "--with-real",
        "--seed",
        "11",
        "--out",
        out.to_str().unwrap(),
        "--workers",
        "2",
        "--wait",
    ]);
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(out.join("_SUCCESS").exists());
    let sample = json(&out.join("_sample.json"));
    assert_eq!(sample["synthetic_rows"], 5300);
    assert_eq!(sample["real_rows"], 6000);

    // 5. read every part back with the parquet crate and check schema, counts and validity.
    let label = ds["label_column"].as_str().unwrap().to_string();
    let mut synthetic_counts: HashMap<String, u64> = HashMap::new();
    let mut real_counts: HashMap<String, u64> = HashMap::new();
    let parts: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(parts.len() >= 3, "{parts:?}");
    for part in &parts {
        for batch in read_parquet(part) {
            let schema = batch.schema();
            assert_eq!(schema.fields().len(), columns.len() + 1);
            assert_eq!(schema.field(columns.len()).name(), "synthetic");
            let flags = batch.column(columns.len()).as_boolean().clone();
            for (ci, col) in columns.iter().enumerate() {
                let name = col["name"].as_str().unwrap();
                assert_eq!(schema.field(ci).name(), name);
                let array = batch.column(ci);
                assert_eq!(array.null_count(), 0, "{name} has nulls");
                match (
                    col["role"].as_str().unwrap(),
                    col["dtype"].as_str().unwrap(),
                ) {
                    ("numeric", dtype) => {
                        let (min, max) = (
                            col["stats"]["min"].as_f64().unwrap(),
                            col["stats"]["max"].as_f64().unwrap(),
                        );
                        let values: Vec<f64> = if dtype == "int64" {
                            assert_eq!(array.data_type(), &arrow_schema::DataType::Int64, "{name}");
                            array
                                .as_primitive::<Int64Type>()
                                .values()
                                .iter()
                                .map(|&v| v as f64)
                                .collect()
                        } else {
                            assert_eq!(
                                array.data_type(),
                                &arrow_schema::DataType::Float64,
                                "{name}"
                            );
                            array.as_primitive::<Float64Type>().values().to_vec()
                        };
                        for v in values {
                            assert!(
                                v.is_finite() && v >= min - 1e-9 && v <= max + 1e-9,
                                "{name}: {v} outside [{min}, {max}]"
                            );
                        }
                    }
                    (_, dtype) => {
                        let vocab: Vec<&str> = col["vocabulary"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_str().unwrap())
                            .collect();
                        let texts: Vec<String> = if dtype == "int64" {
                            array
                                .as_primitive::<Int64Type>()
                                .values()
                                .iter()
                                .map(|v| v.to_string())
                                .collect()
                        } else {
                            array
                                .as_string::<i32>()
                                .iter()
                                .map(|v| v.unwrap().to_string())
                                .collect()
                        };
                        for (row, t) in texts.iter().enumerate() {
                            assert!(
                                vocab.contains(&t.as_str()),
                                "{name}: `{t}` not in vocabulary"
                            );
                            if name == label {
                                let counts = if flags.value(row) {
                                    &mut synthetic_counts
                                } else {
                                    &mut real_counts
                                };
                                *counts.entry(t.clone()).or_default() += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(synthetic_counts.len(), 2, "{synthetic_counts:?}");
    assert_eq!(synthetic_counts["neptune"], 300);
    assert_eq!(synthetic_counts["satan"], 5000);
    let real: BTreeMap<String, u64> = real_counts.into_iter().collect();
    assert_eq!(real, classes, "real rows must be the training rows");
    let (rows, _) = pyarrow_read_folder(&out, "synthetic");
    assert_eq!(
        rows,
        5300 + 6000,
        "pyarrow reads the sample output as one dataset"
    );

    // 6. status lists both jobs as succeeded.
    let status = run_ok(&["status", "--coordinator", &url]);
    assert_eq!(status.matches("succeeded").count(), 2, "{status}");

    // 7. eval reads the sample output: its generated rows only (the copied real rows are not
    // synthetic), here against the training data standing in for a test split.
    let report_dir = root.join("report");
    run_ok(&[
        "eval",
        "--train",
        dataset.to_str().unwrap(),
        "--test",
        dataset.to_str().unwrap(),
        "--synthetic",
        out.to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
        "--seeds",
        "1",
        "--detectors",
        "rf",
        "--sample-rows",
        "500",
    ]);
    let report = json(&report_dir.join("report.json"));
    assert_eq!(report["inputs"]["synthetic"]["rows"], 5300);
    assert_eq!(report["inputs"]["synthetic"]["class_counts"]["satan"], 5000);
    assert_eq!(report["downstream"]["added_per_class"]["neptune"], 300);
    assert!(report_dir.join("report.html").exists());
}

#[test]
fn embedded_train_resumes_and_sampling_rejects_unknown_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dataset = root.join("dataset");
    // 65,536 rows per row group: convert's default.
    convert_nsl_subset(root, 3000, dataset.to_str().unwrap(), 65_536, &[]);
    let ckpts = root.join("ck");
    let args = [
        "train",
        "--data",
        dataset.to_str().unwrap(),
        "--checkpoints",
        ckpts.to_str().unwrap(),
        "--epochs",
        "1",
        "--diffusion-epochs",
        "1",
        "--batch-size",
        "256",
        "--device",
        "cpu",
    ];
    run_ok(&args);
    let first = std::fs::read_to_string(ckpts.join("latest")).unwrap();
    // A second run finds the finished checkpoint, does no further work and says how to go on.
    let again = run(&args);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("nothing to train") && err.contains("--diffusion-epochs above 1"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(ckpts.join("latest")).unwrap(),
        first
    );
    // More denoiser epochs continue from the finished checkpoint.
    let mut more = args.to_vec();
    let at = more
        .iter()
        .position(|a| *a == "--diffusion-epochs")
        .unwrap();
    more[at + 1] = "2";
    run_ok(&more);
    let state = json(
        &ckpts
            .join(
                std::fs::read_to_string(ckpts.join("latest"))
                    .unwrap()
                    .trim(),
            )
            .join("state.json"),
    );
    assert_eq!(state["stage"], "done");
    assert_eq!(state["epoch_in_stage"], 2);

    let out = root.join("s");
    let sample_args = |classes: &'static str| {
        [
            "sample",
            "--checkpoint",
            ckpts.to_str().unwrap(),
            "--classes",
            classes,
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]
    };
    let bad = run(&sample_args("no_such_attack=10"));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no_such_attack") && err.contains("neptune"),
        "{err}"
    );
    assert!(!out.join("_SUCCESS").exists());

    run_ok(&sample_args("normal=100"));
    let sample = json(&out.join("_sample.json"));
    assert_eq!(sample["synthetic_rows"], 100);
    assert_eq!(sample["real_rows"], 0);

    // A finished sample is never overwritten.
    let again = run(&sample_args("normal=5"));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a finished sample"));
    assert_eq!(json(&out.join("_sample.json"))["synthetic_rows"], 100);
}

#[test]
fn convert_of_a_ragged_file_fails_with_file_and_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("bad.csv");
    std::fs::write(&csv, "a,b,label\n1,2,x\n3,4\n").unwrap();
    let out = tmp.path().join("out");
    let res = run(&[
        "convert",
        "--preset",
        "generic",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("bad.csv") && err.contains(":3"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn help_lists_every_subcommand() {
    let out = run_ok(&["--help"]);
    for sub in [
        "convert",
        "train",
        "sample",
        "coordinator",
        "worker",
        "submit",
        "status",
        "cancel",
        "eval",
    ] {
        assert!(out.contains(sub), "{sub} missing from --help:\n{out}");
    }
}

#[test]
fn sample_help_and_flags_say_what_they_do() {
    let help = run_ok(&["sample", "--help"]);
    assert!(help.contains("_sample.json"), "{help}");
    assert!(!help.contains("[default: ]"), "{help}");
    for flag in ["--strength", "--threads", "--seed"] {
        let line = help.lines().find(|l| l.contains(flag)).unwrap_or_default();
        assert!(!line.is_empty(), "{flag} missing:\n{help}");
    }
    // The seed's line is followed by its description, not by the next flag.
    let seed = help.split("--seed").nth(1).unwrap_or_default();
    assert!(seed.contains("same rows"), "{help}");
    let bad = |args: &[&str], needle: &str| {
        let mut all = vec!["sample", "--checkpoint", "ck", "--out", "o"];
        all.extend_from_slice(args);
        let out = run(&all);
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    bad(&["--classes", "a=1", "--steps", "0"], "--steps");
    bad(&["--classes", "a=1", "--strength", "1.5"], "--strength");
    bad(&["--classes", "a=1", "--threads", "0"], "--threads");
    // No classes and no --with-real: nothing to do, said before anything runs.
    bad(&[], "--classes");
}

#[test]
fn convert_onto_an_existing_dataset_names_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d");
    convert_nsl_subset(tmp.path(), 200, out.to_str().unwrap(), 65_536, &[]);
    let csv = nsl_subset(tmp.path(), 100);
    let again = run(&[
        "convert",
        "--preset",
        "nsl-kdd",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("--overwrite"), "{err}");
}

/// A `worker --max-jobs 1` (a Kubernetes Indexed Job's pod) exits when its job ends, with 3 when
/// its part failed, so the Job's podFailurePolicy fails the Job instead of retrying the pod.
#[test]
fn worker_with_max_jobs_exits_with_the_outcome_of_its_job() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dataset = root.join("dataset");
    convert_nsl_subset(root, 500, dataset.to_str().unwrap(), 500, &[]);
    let (_coord, url) = start_coordinator(root.join("state").to_str().unwrap(), &[], &[]);
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_flowsynth"))
        .args(["worker", "--max-jobs", "1", "--coordinator", &url])
        .env("FLOWSYNTH_LOG", "warn")
        .spawn()
        .unwrap();
    // The job asks for a CUDA device this machine lacks: the worker takes it and fails it.
    let out = run(&[
        "submit",
        "train",
        "--coordinator",
        &url,
        "--data",
        dataset.to_str().unwrap(),
        "--checkpoints",
        root.join("ckpt").to_str().unwrap(),
        "--device",
        "cuda:7",
        "--wait",
    ]);
    assert!(!out.status.success(), "the job fails");
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not exit after its one job"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(3),
        "exit code of a worker whose job failed"
    );
}
