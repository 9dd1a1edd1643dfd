//! Helpers shared by the end-to-end tests: the real NSL-KDD subset fixture, running the
//! `flowsynth` binary, child processes that die with the test, reading results back.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_flowsynth");

pub fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(
        dir.join("nsl-kdd/KDDTrain+.txt.gz").exists(),
        "real data not found at {} (the shared data folder must sit beside the checkout)",
        dir.display()
    );
    dir
}

/// Writes the first `rows` lines of the gzipped NSL-KDD train file as a plain CSV.
pub fn nsl_subset(dir: &Path, rows: usize) -> PathBuf {
    let gz = std::fs::File::open(data_dir().join("nsl-kdd/KDDTrain+.txt.gz")).unwrap();
    let reader = BufReader::new(flate2::read::GzDecoder::new(gz));
    let path = dir.join("kdd_subset.csv");
    let mut out = std::fs::File::create(&path).unwrap();
    for line in reader.lines().take(rows) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    path
}

/// Converts the first `rows` NSL-KDD rows (written to `dir`) into a dataset at `out` (a path or
/// URL) with `row_group_rows` rows per row group; `env` goes to the process (e.g. S3 settings).
pub fn convert_nsl_subset(
    dir: &Path,
    rows: usize,
    out: &str,
    row_group_rows: usize,
    env: &[(String, String)],
) {
    let csv = nsl_subset(dir, rows);
    run_env_ok(
        &[
            "convert",
            "--preset",
            "nsl-kdd",
            csv.to_str().unwrap(),
            "--out",
            out,
            "--row-group-rows",
            &row_group_rows.to_string(),
        ],
        env,
    );
}

pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

pub fn run_ok(args: &[&str]) -> String {
    run_env_ok(args, &[])
}

/// Runs flowsynth with extra environment variables (e.g. an S3 endpoint).
pub fn run_env(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("FLOWSYNTH_LOG", "warn")
        .output()
        .expect("cannot run flowsynth")
}

pub fn run_env_ok(args: &[&str], env: &[(String, String)]) -> String {
    let out = run_env(args, env);
    assert!(
        out.status.success(),
        "flowsynth {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed when dropped (a failing test leaves nothing running).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `flowsynth coordinator` on a free loopback port (with `extra` flags); returns it and
/// its URL.
pub fn start_coordinator(state: &str, extra: &[&str], envs: &[(String, String)]) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--store", state])
        .args(extra)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env("FLOWSYNTH_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start coordinator");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected coordinator output `{line}`"))
        .to_string();
    (Proc(child), format!("http://{addr}"))
}

/// Starts `flowsynth worker` processes connected to `coordinator`.
pub fn start_workers(n: usize, coordinator: &str, envs: &[(String, String)]) -> Vec<Proc> {
    (0..n)
        .map(|_| {
            Proc(
                Command::new(BIN)
                    .args(["worker", "--device", "cpu", "--coordinator", coordinator])
                    .envs(envs.iter().map(|(k, v)| (k, v)))
                    .env("FLOWSYNTH_LOG", "warn")
                    .spawn()
                    .expect("cannot start worker"),
            )
        })
        .collect()
}

pub fn read_parquet_bytes(bytes: bytes::Bytes) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    read_parquet_bytes(bytes::Bytes::from(std::fs::read(path).unwrap()))
}

pub fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The float32 tensors of a safetensors file, by name (parsed here, independently of libtorch:
/// an 8-byte little-endian header length, a JSON header, then the raw data).
pub fn safetensors_f32(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<f32>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = std::collections::BTreeMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" || info["dtype"] != "F32" {
            continue;
        }
        let start = info["data_offsets"][0].as_u64().unwrap() as usize;
        let end = info["data_offsets"][1].as_u64().unwrap() as usize;
        let values = data[start..end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(name.clone(), values);
    }
    out
}
