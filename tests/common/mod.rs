//! Helpers shared by the end-to-end tests: the real NSL-KDD subset fixture, running the
//! `flowsynth` binary, child processes that die with the test, reading results back.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
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
    let mut cmd = Command::new(BIN);
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--store", state])
        .args(extra)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env("FLOWSYNTH_LOG", "warn");
    let (proc, addr) = spawn_coordinator(cmd);
    (proc, format!("http://{addr}"))
}

/// Spawns a `flowsynth coordinator` command (its arguments, environment and stderr set by the
/// caller) and waits for the `listening on` line; returns it and its bound `host:port`.
pub fn spawn_coordinator(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd
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
    (Proc(child), addr)
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

/// Reads the Parquet dataset folder `dir` with pyarrow (the tests' independent reader, installed
/// by `make setup` into `.deps/moto`) as `pyarrow.dataset` does for pandas, polars and DuckDB:
/// every non-hidden file must be Parquet. Returns the row count and the rows per value of
/// `column`.
pub fn pyarrow_read_folder(dir: &Path, column: &str) -> (u64, BTreeMap<String, u64>) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/moto/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make setup` (scripts/setup-moto.sh installs pyarrow)",
        python.display()
    );
    let script = "import json, sys, pyarrow.parquet as pq, pyarrow.compute as pc\n\
        t = pq.read_table(sys.argv[1])\n\
        counts = pc.value_counts(pc.cast(t[sys.argv[2]], 'string')).to_pylist()\n\
        print(json.dumps({'rows': t.num_rows, 'counts': {c['values']: c['counts'] for c in counts}}))";
    let out = Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap(), column])
        .output()
        .expect("cannot run python");
    assert!(
        out.status.success(),
        "pyarrow could not read {} as a Parquet dataset:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = v["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect();
    (v["rows"].as_u64().unwrap(), counts)
}
