//! End to end on S3: every location is an `s3://` URL on a real S3 endpoint (moto's server on
//! loopback; `make setup` installs it). `flowsynth convert` writes the dataset to S3, a
//! coordinator keeps its job records there, two worker processes train (checkpoints to S3) and
//! sample (Parquet to S3), and the test reads everything back from S3 itself: the committed
//! checkpoint, `_SUCCESS`, `_sample.json` and the Parquet parts (with the `parquet` crate).
//!
//! The endpoint and credentials go to the child processes only (`Command::env`), never into
//! this process's environment; the test's own reads use `StoreOptions` with the same settings.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../common/tests/support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use common::*;
use flowsynth_common::checkpoint;
use flowsynth_common::store::{Location, StoreOptions, block_on};
use serde_json::Value;

use moto::Moto;

const BUCKET: &str = "flowsynth-e2e";

/// Workers in the training and sampling jobs.
const WORKERS: usize = 2;

/// Small, real model; one libtorch thread per worker so the workers share 2 CI cores.
const CONFIG: &str = r#"
[train]
epochs = 1
diffusion_epochs = 2
batch_size = 256
checkpoint_every = 1
keep_checkpoints = 2
threads = 1
# ~2,850 training rows in six 500-row groups: the workers stream them from S3, windows of two
# groups read by ranged GETs conditional on the verified ETag.
shuffle_window_rows = 1000

[model]
ffn_dim = 16
denoiser_width = 32
sampler_steps = 8
"#;

/// `flowsynth ARGS` with the S3 settings in the child's environment.
/// Checks that the job `submit` reported ran on `WORKERS` workers (`status JOB` lists them).
fn assert_ran_on_all_workers(submit_stdout: &str, coordinator: &str, env: &[(String, String)]) {
    let job = submit_stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in `{submit_stdout}`"));
    let status = run_env_ok(&["status", job, "--coordinator", coordinator], env);
    let workers = status
        .lines()
        .find_map(|l| l.strip_prefix("workers:"))
        .unwrap_or_else(|| panic!("no workers line in `{status}`"));
    assert_eq!(
        workers.split(',').filter(|w| !w.trim().is_empty()).count(),
        WORKERS,
        "{status}"
    );
}

fn s3_json(loc: &Location, rel: &str) -> Value {
    serde_json::from_slice(&block_on(loc.get(rel)).unwrap()).unwrap()
}

/// Relative names of every object below `loc`, sorted.
fn s3_names(loc: &Location) -> Vec<String> {
    let mut names: Vec<String> = block_on(loc.list(""))
        .unwrap()
        .iter()
        .map(|m| loc.relative(&m.location))
        .collect();
    names.sort();
    names
}

#[test]
fn convert_train_and_sample_with_every_location_on_s3() {
    let moto = Moto::with_bucket(BUCKET);
    let env = moto.env();
    let options = StoreOptions::from_iter(env.clone());
    let open = |rel: &str| Location::parse_with(&format!("s3://{BUCKET}/{rel}"), &options).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data_url = format!("s3://{BUCKET}/data/nsl");
    let ckpt_url = format!("s3://{BUCKET}/ckpt");
    let out_url = format!("s3://{BUCKET}/out/augmented");

    // 1. convert straight to S3.
    let started = Instant::now();
    convert_nsl_subset(tmp.path(), 3000, &data_url, 500, &env);
    eprintln!("convert took {:?}", started.elapsed());
    let data = open("data/nsl");
    let ds = s3_json(&data, "_dataset.json");
    assert_eq!(ds["total_rows"], 3000);
    let classes: BTreeMap<String, u64> = ds["class_counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert!(classes.contains_key("neptune") && classes.contains_key("satan"));
    let data_objects = s3_names(&data);
    assert!(
        data_objects.iter().any(|n| n.ends_with(".parquet")),
        "{data_objects:?}"
    );

    // 2. coordinator (job records in S3) and workers as processes.
    let (_coordinator, url) = start_coordinator(&format!("s3://{BUCKET}/coord"), &[], &env);
    let _workers = start_workers(WORKERS, &url, &env);

    // 3. train: checkpoints committed to S3.
    let config = tmp.path().join("job.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let workers = WORKERS.to_string();
    let started = Instant::now();
    let stdout = run_env_ok(
        &[
            "submit",
            "train",
            "--coordinator",
            &url,
            "--data",
            &data_url,
            "--checkpoints",
            &ckpt_url,
            "--config",
            config.to_str().unwrap(),
            "--seed",
            "3",
            "--workers",
            &workers,
            "--wait",
        ],
        &env,
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    eprintln!("training took {:?}", started.elapsed());
    assert_ran_on_all_workers(&stdout, &url, &env);

    let ckpts = open("ckpt");
    let latest =
        String::from_utf8(block_on(ckpts.get(checkpoint::LATEST)).unwrap().to_vec()).unwrap();
    let committed = block_on(checkpoint::committed(&ckpts)).unwrap();
    assert!(
        !committed.is_empty() && committed.len() <= 2,
        "keep_checkpoints = 2: {committed:?}"
    );
    assert_eq!(committed.last(), Some(&latest), "latest names the newest");
    let manifest = s3_json(&ckpts.join(&latest), checkpoint::CHECKPOINT_MANIFEST);
    assert_eq!(manifest["stage"], "done");
    assert_eq!(manifest["dataset_url"], data_url.as_str());
    // Every file listed in the manifest is there and matches its sha256.
    let loaded = block_on(checkpoint::resolve_at(&ckpts)).unwrap();
    assert_eq!(loaded.url, format!("{ckpt_url}/{latest}"));
    for needed in [
        "weights.safetensors",
        "optimizer.safetensors",
        "dataset.json",
        "config.toml",
        "state.json",
    ] {
        assert!(loaded.file(needed).is_ok(), "{needed} missing");
    }
    let saved_config = String::from_utf8(loaded.file("config.toml").unwrap().to_vec()).unwrap();
    assert!(saved_config.contains("seed = 3"), "{saved_config}");
    assert!(
        saved_config.contains("denoiser_width = 32"),
        "{saved_config}"
    );
    // The coordinator persisted its job records in S3.
    assert!(!s3_names(&open("coord")).is_empty());

    // 4. sample from the S3 checkpoint, real rows included, parts to S3.
    let started = Instant::now();
    let stdout = run_env_ok(
        &[
            "submit",
            "sample",
            "--coordinator",
            &url,
            "--checkpoint",
            &ckpt_url,
            "--classes",
            "neptune=300,satan=4500",
            "--with-real",
            "--seed",
            "11",
            "--out",
            &out_url,
            "--workers",
            &workers,
            "--wait",
        ],
        &env,
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    eprintln!("sampling took {:?}", started.elapsed());
    assert_ran_on_all_workers(&stdout, &url, &env);

    // 5. read the output back from S3.
    let out = open("out/augmented");
    let names = s3_names(&out);
    assert!(names.iter().any(|n| n == "_SUCCESS"), "{names:?}");
    let sample = s3_json(&out, "_sample.json");
    assert_eq!(sample["synthetic_rows"], 4800);
    assert_eq!(sample["real_rows"], 3000);
    let label = ds["label_column"].as_str().unwrap().to_string();
    let columns = ds["columns"].as_array().unwrap();
    let label_index = columns
        .iter()
        .position(|c| c["name"] == label.as_str())
        .unwrap();
    let label_vocab: Vec<String> = columns[label_index]["vocabulary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let parts: Vec<&String> = names.iter().filter(|n| n.ends_with(".parquet")).collect();
    // Real rows and synthetic rows go to parts of their own.
    assert!(parts.len() >= 2, "{names:?}");
    let mut synthetic: BTreeMap<String, u64> = BTreeMap::new();
    let mut real: BTreeMap<String, u64> = BTreeMap::new();
    for part in parts {
        for batch in read_parquet_bytes(block_on(out.get(part)).unwrap()) {
            let schema = batch.schema();
            assert_eq!(schema.fields().len(), columns.len() + 1, "{part}");
            assert_eq!(schema.field(label_index).name(), &label);
            assert_eq!(schema.field(columns.len()).name(), "synthetic");
            let flags = batch.column(columns.len()).as_boolean().clone();
            let labels: Vec<String> = match batch.column(label_index).data_type() {
                arrow_schema::DataType::Int64 => batch
                    .column(label_index)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .map(|v| v.to_string())
                    .collect(),
                _ => batch
                    .column(label_index)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string())
                    .collect(),
            };
            for (row, l) in labels.into_iter().enumerate() {
                assert!(label_vocab.contains(&l), "label `{l}` not in vocabulary");
                let counts = if flags.value(row) {
                    &mut synthetic
                } else {
                    &mut real
                };
                *counts.entry(l).or_default() += 1;
            }
        }
    }
    assert_eq!(
        synthetic,
        BTreeMap::from([("neptune".to_string(), 300), ("satan".to_string(), 4500)])
    );
    assert_eq!(real, classes, "the real rows must be the training rows");

    // A finished sample on S3 is never overwritten.
    let again = run_env(
        &[
            "submit",
            "sample",
            "--coordinator",
            &url,
            "--checkpoint",
            &ckpt_url,
            "--classes",
            "normal=5",
            "--out",
            &out_url,
            "--wait",
        ],
        &env,
    );
    assert!(!again.status.success());
    assert_eq!(s3_json(&out, "_sample.json")["synthetic_rows"], 4800);

    // eval reads all three inputs from S3 and writes its report there.
    let report_url = format!("s3://{BUCKET}/out/report");
    run_env_ok(
        &[
            "eval",
            "--train",
            &data_url,
            "--test",
            &data_url,
            "--synthetic",
            &out_url,
            "--out",
            &report_url,
            "--seeds",
            "1",
            "--detectors",
            "gbt",
            "--sample-rows",
            "400",
        ],
        &env,
    );
    let report_loc = open("out/report");
    let report = s3_json(&report_loc, "report.json");
    assert_eq!(report["inputs"]["synthetic"]["rows"], 4800);
    assert_eq!(report["inputs"]["synthetic"]["url"], out_url.as_str());
    let names = s3_names(&report_loc);
    assert!(
        names.iter().any(|n| n.ends_with("report.html")),
        "{names:?}"
    );
    assert!(
        names.iter().filter(|n| n.ends_with(".png")).count() > 10,
        "{names:?}"
    );
}

/// A bucket that does not exist is an error naming the URL (not a hang, not a silent success).
#[test]
fn convert_to_a_missing_s3_bucket_fails_naming_the_url() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let csv = nsl_subset(tmp.path(), 200);
    let url = "s3://no-such-bucket/data";
    let res = run_env(
        &[
            "convert",
            "--preset",
            "nsl-kdd",
            csv.to_str().unwrap(),
            "--out",
            url,
        ],
        &moto.env(),
    );
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains(url) && err.contains("NoSuchBucket"), "{err}");
}

/// A TCP forwarder in front of moto that can be shut like a store going away: while closed,
/// nothing listens on its port (connections are refused) and the connections it carried are
/// cut; opened again, it listens on the same port.
struct Gate {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    fn new(target: u16) -> Self {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering::Relaxed;
        use std::sync::{Arc, Mutex};
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (is_open, stopped) = (open.clone(), stop.clone());
        std::thread::spawn(move || {
            let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            let mut listener = Some(first);
            while !stopped.load(Relaxed) {
                match (&listener, is_open.load(Relaxed)) {
                    (Some(_), false) => {
                        listener = None;
                        for c in conns.lock().unwrap().drain(..) {
                            let _ = c.shutdown(Shutdown::Both);
                        }
                    }
                    (None, true) => {
                        listener = TcpListener::bind(("127.0.0.1", port)).ok();
                    }
                    _ => {}
                }
                let Some(l) = &listener else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut held = conns.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Self { port, open, stop }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
    }

    /// `env` with the S3 endpoint moved to this gate.
    fn env(&self, env: &[(String, String)]) -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| match k.as_str() {
                "AWS_ENDPOINT_URL" => (k.clone(), format!("http://127.0.0.1:{}", self.port)),
                _ => (k.clone(), v.clone()),
            })
            .collect()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Fault 6: the S3 server goes away for a few seconds in the middle of a training job (its
/// connections cut, new ones refused). The store client retries with backoff and the job
/// finishes with sound checkpoints. An outage that outlasts the retries fails the job with the
/// location in the message.
#[test]
fn a_store_outage_mid_job_is_retried_and_a_lasting_one_fails_naming_the_url() {
    let moto = Moto::with_bucket(BUCKET);
    let direct = moto.env();
    let gate = Gate::new(moto.port());
    let env = gate.env(&direct);
    let options = StoreOptions::from_iter(direct.clone());
    let tmp = tempfile::tempdir().unwrap();
    let data_url = format!("s3://{BUCKET}/data/nsl");
    let ckpt_url = format!("s3://{BUCKET}/ckpt");
    convert_nsl_subset(tmp.path(), 3000, &data_url, 500, &direct);
    let config = tmp.path().join("job.toml");
    std::fs::write(&config, CONFIG.replace("epochs = 1\n", "epochs = 8\n")).unwrap();
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_flowsynth"))
        .args(["train", "--data", &data_url, "--checkpoints", &ckpt_url])
        .arg("--config")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("FLOWSYNTH_LOG", "warn,object_store=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = Location::parse_with(&ckpt_url, &options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while block_on(checkpoint::committed(&ckpt)).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no checkpoint committed");
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    gate.set_open(false);
    std::thread::sleep(Duration::from_secs(4));
    gate.set_open(true);
    let out = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The client said it retried (object_store logs each retry).
    assert!(stderr.contains("backing off"), "{stderr}");
    let done = block_on(checkpoint::latest(&ckpt))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a committed checkpoint");
    assert_eq!(done.manifest.meta.stage, "done");
    assert!(done.skipped.is_empty(), "{:?}", done.skipped);

    // An outage for good: the retries give up and the job fails naming the location.
    gate.set_open(false);
    let mut env = env;
    env.push(("FLOWSYNTH_STORE_RETRY_TIMEOUT".into(), "2".into()));
    let started = Instant::now();
    let res = run_env(
        &[
            "sample",
            "--checkpoint",
            &ckpt_url,
            "--classes",
            "neptune=10",
            "--out",
            &format!("s3://{BUCKET}/out"),
        ],
        &env,
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{err}");
    assert!(err.contains(&ckpt_url), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "{err}");
}
