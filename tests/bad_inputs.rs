//! The bad-input corpus (`tests/bad_inputs/`, table in its README): every malformed input a user
//! can hand flowsynth, on every surface (CSV, job TOML, `--classes` and sampler flags, dataset
//! manifests and Parquet parts, checkpoint manifests and files), must end in a non-zero exit
//! whose message names the file, line, key or field, never a panic, and never leave output
//! behind. Malformed RPCs are in coordinator/tests/scheduling.rs.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn corpus(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bad_inputs")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// Runs one case: it must fail, say every `expect`, not panic, and leave `out` absent.
fn refuse(case: &str, args: &[&str], expect: &[&str], out: &Path) {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{case}: succeeded\n{stderr}");
    assert!(
        !stderr.contains("panicked") && o.status.code().is_some(),
        "{case}: panicked or was killed\n{stderr}"
    );
    for e in expect {
        assert!(
            stderr.contains(e),
            "{case}: the message lacks `{e}`:\n{stderr}"
        );
    }
    assert!(!out.exists(), "{case}: left {} behind", out.display());
}

/// A copy of the directory `from` at `to`, with `damage` done to it.
fn damaged_copy(from: &Path, to: &Path, damage: impl FnOnce(&Path)) -> String {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    damage(to);
    to.to_str().unwrap().to_string()
}

/// Top-level keys of the JSON object in `patch` written over the JSON file `target`.
fn merge_json(target: &Path, patch: &str) {
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(target).unwrap()).unwrap();
    let patch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(corpus(patch)).unwrap()).unwrap();
    for (k, v) in patch.as_object().unwrap() {
        doc[k] = v.clone();
    }
    std::fs::write(target, serde_json::to_vec(&doc).unwrap()).unwrap();
}

#[test]
fn every_bad_input_is_refused_with_a_message_that_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = root.join("out");
    let o = out.to_str().unwrap();
    let mut cases = 0;
    let mut check = |case: &str, args: &[&str], expect: &[&str]| {
        refuse(case, args, expect, &out);
        cases += 1;
    };

    // ---- CSV -------------------------------------------------------------------------------
    let convert = |file: &str, extra: &[&str]| -> Vec<String> {
        let mut a = vec!["convert".to_string(), "--preset".into(), "generic".into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["--out".into(), o.to_string(), corpus(file)]);
        a
    };
    let csv: &[(&str, &[&str], &[&str])] = &[
        (
            "csv_ragged.csv",
            &[],
            &["csv_ragged.csv:3", "row has 4 fields, expected 3"],
        ),
        ("csv_empty.csv", &[], &["csv_empty.csv", "empty"]),
        (
            "csv_header_only.csv",
            &[],
            &["csv_header_only.csv", "no data rows"],
        ),
        (
            "csv_latin1.csv",
            &[],
            &["csv_latin1.csv:2", "column `label`", "UTF-8"],
        ),
        (
            "csv_nul.csv",
            &[],
            &["csv_nul.csv:2", "field 2", "NUL byte"],
        ),
        ("csv_truncated.csv.gz", &[], &["csv_truncated.csv.gz"]),
        ("csv_no_label.csv", &[], &["csv_no_label.csv", "--label"]),
        (
            "csv_good.csv",
            &["--label", "nope"],
            &["csv_good.csv", "label column `nope`"],
        ),
        (
            "csv_good.csv",
            &["--drop", "nope"],
            &["csv_good.csv", "`nope`", "--drop"],
        ),
        (
            "csv_nonfinite.csv",
            &["--non-finite", "error"],
            &["csv_nonfinite.csv:2", "column `b`", "inf"],
        ),
    ];
    for (file, extra, expect) in csv {
        let args = convert(file, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(file, &args, expect);
    }
    let (good, other) = (corpus("csv_good.csv"), corpus("csv_other_header.csv"));
    check(
        "two inputs, different headers",
        &["convert", "--preset", "generic", "--out", o, &good, &other],
        &["csv_other_header.csv", "header differs", "column 2"],
    );
    check(
        "nsl-kdd preset on a 3-column file",
        &["convert", "--preset", "nsl-kdd", "--out", o, &good],
        &["csv_good.csv:1", "expected 43"],
    );
    check(
        "missing input",
        &[
            "convert",
            "--preset",
            "generic",
            "--out",
            o,
            "/nonexistent/flows.csv",
        ],
        &["/nonexistent/flows.csv"],
    );
    let huge = root.join("csv_huge.csv");
    std::fs::write(
        &huge,
        format!("a,b,label\n1,{},x\n2,3,y\n", "x".repeat(3 << 20)),
    )
    .unwrap();
    check(
        "a 3 MiB field",
        &[
            "convert",
            "--preset",
            "generic",
            "--out",
            o,
            huge.to_str().unwrap(),
        ],
        &["csv_huge.csv:2", "field 2", "1 MiB"],
    );

    // ---- job TOML (refused before any data is read) -------------------------------------------
    let toml: &[(&str, &[&str])] = &[
        (
            "toml_wrong_type.toml",
            &["`train.epochs` (line 2)", "invalid type"],
        ),
        (
            "toml_unknown_key.toml",
            &["`train.epoch` (line 2)", "unknown field"],
        ),
        ("toml_negative.toml", &["`train.batch_size` (line 2)", "-5"]),
        (
            "toml_zero_batch.toml",
            &["train.batch_size must be at least 1 (line 2)"],
        ),
        ("toml_syntax.toml", &["line 1"]),
        ("toml_unknown_table.toml", &["line 1", "`trian`"]),
        ("toml_bad_mode.toml", &["`model.mode` (line 2)", "fancy"]),
    ];
    for (file, expect) in toml {
        let path = corpus(file);
        let mut expect = expect.to_vec();
        expect.push(file);
        check(
            file,
            &[
                "train",
                "--data",
                "/nonexistent",
                "--checkpoints",
                o,
                "--config",
                &path,
            ],
            &expect,
        );
    }

    // ---- a real dataset and checkpoint to damage -----------------------------------------------
    let dataset = root.join("dataset");
    convert_nsl_subset(root, 600, dataset.to_str().unwrap(), 600, &[]);
    let ckpts = root.join("ckpt");
    run_ok(&[
        "train",
        "--data",
        dataset.to_str().unwrap(),
        "--checkpoints",
        ckpts.to_str().unwrap(),
        "--epochs",
        "1",
        "--diffusion-epochs",
        "1",
    ]);
    let ck = ckpts.to_str().unwrap();

    // ---- --classes and sampler flags (refused before anything starts) ------------------------------
    let sample: &[(&str, &[&str], &[&str])] = &[
        (
            "classes without a count",
            &["--classes", "neptune"],
            &["--classes", "`neptune` is not NAME=COUNT"],
        ),
        (
            "classes count not a number",
            &["--classes", "neptune=abc"],
            &["--classes", "`abc`"],
        ),
        (
            "a class named twice",
            &["--classes", "neptune=1,neptune=2"],
            &["`neptune` twice"],
        ),
        (
            "strength out of range",
            &["--classes", "neptune=1", "--strength", "2"],
            &["--strength 2", "(0, 1]"],
        ),
        (
            "guidance NaN",
            &["--classes", "neptune=1", "--guidance", "NaN"],
            &["--guidance NaN"],
        ),
        (
            "an unknown class",
            &["--classes", "mirai=10"],
            &["`mirai`", "known classes"],
        ),
        (
            "10^12 rows",
            &["--classes", "neptune=1000000000000"],
            &["1000000000000 rows", "at most"],
        ),
    ];
    for (case, extra, expect) in sample {
        let mut args = vec!["sample", "--checkpoint", ck, "--out", o];
        args.extend_from_slice(extra);
        check(case, &args, expect);
    }

    // ---- dataset manifests and parts ---------------------------------------------------------
    let train_on = |dir: &str| -> Vec<String> {
        [
            "train",
            "--data",
            dir,
            "--checkpoints",
            o,
            "--epochs",
            "1",
            "--diffusion-epochs",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let manifest = "_dataset.json";
    let datasets: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "no dataset manifest",
            damaged_copy(&dataset, &root.join("d1"), |d| {
                std::fs::remove_file(d.join(manifest)).unwrap()
            }),
            vec!["no _dataset.json"],
        ),
        (
            "dataset manifest not JSON",
            damaged_copy(&dataset, &root.join("d2"), |d| {
                std::fs::copy(corpus("dataset_invalid.json"), d.join(manifest)).unwrap();
            }),
            vec!["_dataset.json", "line 1"],
        ),
        (
            "dataset manifest of another version",
            damaged_copy(&dataset, &root.join("d3"), |d| {
                merge_json(&d.join(manifest), "dataset_wrong_version.json")
            }),
            vec!["_dataset.json", "version 999"],
        ),
        (
            "dataset counts that disagree",
            damaged_copy(&dataset, &root.join("d4"), |d| {
                merge_json(&d.join(manifest), "dataset_wrong_counts.json")
            }),
            vec!["_dataset.json", "total_rows is 605"],
        ),
        (
            "a truncated Parquet part",
            damaged_copy(&dataset, &root.join("d5"), |d| {
                let p = d.join("part-00000.parquet");
                let len = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }),
            vec!["part-00000.parquet", "sha256"],
        ),
    ];
    for (case, dir, expect) in &datasets {
        let args = train_on(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(case, &args, expect);
    }

    // ---- checkpoint manifests and files (one checkpoint directory, given directly) -------------------
    let newest: PathBuf = {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&ckpts)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs.pop().unwrap()
    };
    let ck_manifest = "manifest.json";
    let checkpoints: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "checkpoint manifest not JSON",
            damaged_copy(&newest, &root.join("c1"), |d| {
                std::fs::copy(corpus("checkpoint_invalid.json"), d.join(ck_manifest)).unwrap();
            }),
            vec!["c1", "manifest.json"],
        ),
        (
            "checkpoint of another format version",
            damaged_copy(&newest, &root.join("c2"), |d| {
                merge_json(&d.join(ck_manifest), "checkpoint_wrong_version.json")
            }),
            vec!["c2", "format version 42"],
        ),
        (
            "a checkpoint file missing",
            damaged_copy(&newest, &root.join("c3"), |d| {
                std::fs::remove_file(d.join("weights.safetensors")).unwrap()
            }),
            vec!["c3", "weights.safetensors"],
        ),
        (
            "a checkpoint file with another hash",
            damaged_copy(&newest, &root.join("c4"), |d| {
                let p = d.join("state.json");
                let mut b = std::fs::read(&p).unwrap();
                b[0] ^= 1;
                std::fs::write(&p, b).unwrap();
            }),
            vec!["c4", "state.json", "sha256"],
        ),
    ];
    for (case, dir, expect) in &checkpoints {
        check(
            case,
            &[
                "sample",
                "--checkpoint",
                dir,
                "--classes",
                "neptune=5",
                "--out",
                o,
            ],
            expect,
        );
    }
    assert!(cases >= 36, "{cases} cases");
}

/// Case 46: a store retry setting that is not a number of seconds is refused, naming the
/// variable, before anything is read or written.
#[test]
fn a_bad_store_retry_setting_is_refused_naming_the_variable() {
    for (var, value) in [
        ("FLOWSYNTH_STORE_RETRY_TIMEOUT", "soon"),
        ("FLOWSYNTH_STORE_MAX_RETRIES", "-1"),
    ] {
        let o = run_env(
            &[
                "convert",
                "--preset",
                "nsl-kdd",
                &corpus("csv_good.csv"),
                "--out",
                "s3://bucket/data",
            ],
            &[(var.to_string(), value.to_string())],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{var}={value}: succeeded\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains(var) && stderr.contains(value),
            "{var}={value}: {stderr}"
        );
    }
}
