//! Mutation fuzzing of the parsers that read user and store input, on the stable toolchain (no
//! cargo-fuzz here: it needs nightly): the CSV reader with type inference (a whole `convert` of
//! the mutated file), the dataset manifest (`_dataset.json`) and the checkpoint manifest
//! (`manifest.json`). Each target starts from valid seeds and applies seeded random mutations
//! (bit flips, interesting bytes and tokens, insertions, deletions, duplications, truncation,
//! splices of two inputs); every input must give `Ok` or an error, never a panic.
//!
//! Inputs that once failed live in `tests/fuzz_regressions/<target>/` and are replayed first,
//! every run. `FUZZ_SECONDS` sets the time per target (default 2: the quick version in
//! `make test`); `scripts/fuzz.sh` runs longer and reports the crash-free time.

#![allow(clippy::unwrap_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowsynth_common::checkpoint;
use flowsynth_common::convert::{self, ConvertOptions};
use flowsynth_common::manifest::DatasetManifest;
use flowsynth_common::store::Location;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const TOKENS: &[&[u8]] = &[
    b"NaN",
    b"inf",
    b"-inf",
    b"1e309",
    b"-1",
    b"0",
    b"18446744073709551616",
    b"\"\"",
    b"null",
    b"[]",
    b"{}",
    b"\"",
    b",",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff\xfe",
    b"\xc3\x28",
    b"true",
    b"-0.0",
    b"4294967296",
    b"\"format_version\": 1",
    b"\"rows\": 99999999999",
    b"../",
    b"\\u0000",
];

fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn mutate(rng: &mut SmallRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = *[0u8, 0xff, b'"', b',', b'\n', b'{', b'}', b'-', b'9', b'e']
                    .get(rng.random_range(0..10))
                    .unwrap();
            }
            2 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                let i = rng.random_range(0..=len);
                v.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let piece = v[a..b].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, piece);
            }
            5 if len > 0 => v.truncate(rng.random_range(0..len)),
            6 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
        }
    }
    v
}

fn regressions(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target)
}

/// Replays the target's regression inputs, then fuzzes it for the budget; a panicking input is
/// saved as a new regression file and fails the test.
fn fuzz(target: &str, seeds: &[Vec<u8>], run: impl Fn(&[u8])) {
    let check = |input: &[u8]| catch_unwind(AssertUnwindSafe(|| run(input))).is_ok();
    let dir = regressions(target);
    let mut replayed = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let input = std::fs::read(e.path()).unwrap();
        assert!(
            check(&input),
            "{target}: regression {} panics again",
            e.path().display()
        );
        replayed += 1;
    }
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() {
        let base = &seeds[rng.random_range(0..seeds.len())];
        let other = &seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, base, other);
        if !check(&input) {
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}-{runs}", seed));
            std::fs::write(&path, &input).unwrap();
            panic!("{target}: input {runs} panics; saved as {}", path.display());
        }
        runs += 1;
    }
    eprintln!(
        "fuzz {target}: {runs} inputs in {:.1} s without a panic ({replayed} regressions replayed)",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn csv_reader_and_type_inference() {
    let tmp = tempfile::tempdir().unwrap();
    let seeds: Vec<Vec<u8>> = vec![
        b"dur,proto,bytes,flag,label\n0.5,tcp,100,1,normal\n1.25,udp,2048,0,attack\n3,tcp,7,1,normal\n".to_vec(),
        b"a;b;class\n1;x;A\n2;y;B\n".to_vec(),
        b"\"quoted, field\",n,label\n\"a\"\"b\",1e3,x\n,NaN,y\n\"multi\nline\",-0,x\n".to_vec(),
        b"id,ts,v,Label\n1,2024-01-01,Infinity,BENIGN\n2,2024-01-02,-1,DDoS\n3,,5,BENIGN\n".to_vec(),
    ];
    let input = tmp.path().join("in.csv");
    let out = tmp.path().join("out");
    fuzz("csv", &seeds, |bytes| {
        std::fs::write(&input, bytes).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let loc = Location::parse(out.to_str().unwrap()).unwrap();
        let opts = ConvertOptions {
            threads: 1,
            overwrite: true,
            ..Default::default()
        };
        let _ = convert::convert(std::slice::from_ref(&input), &loc, &opts);
    });
}

#[test]
fn dataset_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("in.csv");
    std::fs::write(
        &csv,
        "dur,proto,label\n0.5,tcp,normal\n1.5,udp,attack\n2.5,tcp,normal\n",
    )
    .unwrap();
    let out = tmp.path().join("ds");
    std::fs::create_dir_all(&out).unwrap();
    let loc = Location::parse(out.to_str().unwrap()).unwrap();
    let m = convert::convert(&[csv], &loc, &ConvertOptions::default()).unwrap();
    let seeds = vec![m.to_json()];
    fuzz("dataset_json", &seeds, |bytes| {
        if let Ok(m) = DatasetManifest::from_json(bytes, "fuzz/_dataset.json") {
            // A manifest that parses must be usable without panicking.
            let _ = m.classes();
            let _ = m.label();
            let _ = m.arrow_schema();
            let _ = m.features().count();
        }
    });
}

#[test]
fn checkpoint_manifest() {
    let seeds = vec![
        br#"{"format_version":1,"step":12,"stage":"vae","epoch_in_stage":1,"job_id":"job-1","dataset_url":"/d","dataset_content_hash":"ab","created_unix_ms":1,"files":[{"name":"weights.safetensors","bytes":10,"sha256":"00"},{"name":"state.json","bytes":2,"sha256":"11"}]}"#.to_vec(),
    ];
    assert!(
        checkpoint::parse_manifest(&seeds[0], "seed").is_ok(),
        "the seed is valid"
    );
    fuzz("checkpoint_manifest", &seeds, |bytes| {
        if let Ok(m) = checkpoint::parse_manifest(bytes, "fuzz/ckpt") {
            for f in &m.files {
                assert!(!f.name.contains('/') && f.name != "..", "{}", f.name);
            }
        }
    });
}

#[test]
fn a_manifest_cannot_name_files_outside_its_checkpoint() {
    for name in ["../weights.safetensors", "/etc/passwd", "a/b", "..", ""] {
        let raw = format!(
            r#"{{"format_version":1,"step":1,"stage":"vae","epoch_in_stage":1,"job_id":"j","dataset_url":"/d","dataset_content_hash":"h","created_unix_ms":1,"files":[{{"name":"{name}","bytes":1,"sha256":"0"}}]}}"#
        );
        let err = checkpoint::parse_manifest(raw.as_bytes(), "ck").unwrap_err();
        assert!(err.to_string().contains("not a file name"), "{name}: {err}");
    }
}
