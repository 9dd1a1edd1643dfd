//! `convert` on the real research files in `../shared/data` (NSL-KDD: Tavallaee et al. 2009;
//! CIC-IDS-2017: Sharafaldin et al. 2018, re-extraction by Engelen et al. 2022; CICIoT2023: Neto
//! et al. 2023).
//!
//! Every expected figure below was computed independently of this crate, with Python 3's `csv`
//! and `gzip` modules over the same files (script outline in each test's comment): rows are
//! counted after the same cleaning rules (a numeric column is one whose labelled values all parse
//! as floats, NaN/Infinity/empty count as non-finite; a row with a non-finite value in a numeric
//! column is dropped), and the written Parquet is read back with the parquet crate's own reader.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use flowsynth_common::convert::{ConvertOptions, Preset, convert};
use flowsynth_common::manifest::{ColumnRole, DType, DatasetManifest, DropReason, MANIFEST_NAME};
use flowsynth_common::store::Location;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};

fn data(rel: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(
        dir.is_dir(),
        "the real test data folder {} is missing: it must sit beside the project checkout \
         (see shared/data/README.md); these tests do not skip",
        dir.display()
    );
    let path = dir.join(rel);
    assert!(
        path.is_file(),
        "{} is missing from the test data folder",
        path.display()
    );
    path
}

fn opts(preset: Preset) -> ConvertOptions {
    ConvertOptions {
        preset,
        ..ConvertOptions::default()
    }
}

/// Converts into a fresh temporary directory; returns it with the manifest.
fn run(inputs: &[PathBuf], o: &ConvertOptions) -> (tempfile::TempDir, DatasetManifest) {
    let dir = tempfile::tempdir().unwrap();
    let out = Location::parse(dir.path().to_str().unwrap()).unwrap();
    let m = convert(inputs, &out, o).unwrap();
    // The manifest on disk is the one returned, and it passes the reader's validation. (Bytes
    // are compared: serde_json without its `float_roundtrip` feature may parse a float back one
    // ulp off, so comparing parsed structs would test serde_json, not the converter.)
    let on_disk = std::fs::read(dir.path().join(MANIFEST_NAME)).unwrap();
    assert_eq!(on_disk, m.to_json());
    let parsed = DatasetManifest::from_json(&on_disk, "test").unwrap();
    assert_eq!(
        (parsed.total_rows, &parsed.content_hash),
        (m.total_rows, &m.content_hash)
    );
    (dir, m)
}

/// Reads every part back with the parquet crate (not through flowsynth code) and checks the
/// manifest's per-part figures against the files themselves.
fn read_back(dir: &Path, m: &DatasetManifest) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for part in &m.parts {
        let path = dir.join(&part.path);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, part.bytes);
        {
            use sha2::Digest;
            assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), part.sha256);
        }
        let meta = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let groups: Vec<u64> = meta
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as u64)
            .collect();
        assert_eq!(groups, part.row_groups, "{}", part.path);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut rows = 0;
        for b in reader {
            let b = b.unwrap();
            rows += b.num_rows() as u64;
            batches.push(b);
        }
        assert_eq!(rows, part.rows, "{}", part.path);
    }
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let want: Vec<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names, want,
        "Parquet columns are the manifest's columns, in order"
    );
    for (f, c) in schema.fields().iter().zip(&m.columns) {
        let dt = match c.dtype {
            DType::Int64 => DataType::Int64,
            DType::Float64 => DataType::Float64,
            DType::String => DataType::Utf8,
        };
        assert_eq!(f.data_type(), &dt, "{}", c.name);
    }
    batches
}

fn column<'a>(m: &'a DatasetManifest, name: &str) -> &'a flowsynth_common::manifest::ColumnInfo {
    m.columns
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("column `{name}` not kept"))
}

fn dropped(m: &DatasetManifest) -> BTreeMap<String, DropReason> {
    m.dropped_columns
        .iter()
        .map(|d| (d.name.clone(), d.reason.clone()))
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn first_str(b: &RecordBatch, name: &str, row: usize) -> String {
    b.column_by_name(name)
        .unwrap()
        .as_string::<i32>()
        .value(row)
        .to_string()
}

fn first_i64(b: &RecordBatch, name: &str, row: usize) -> i64 {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<Int64Type>()
        .value(row)
}

fn first_f64(b: &RecordBatch, name: &str, row: usize) -> f64 {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<Float64Type>()
        .value(row)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn nsl_kdd_train_gets_standard_names_categoricals_flags_and_drops_difficulty_and_constants() {
    let (dir, m) = run(&[data("nsl-kdd/KDDTrain+.txt.gz")], &opts(Preset::NslKdd));
    // Python: rows = list(csv.reader(gzip.open(path, 'rt'))); len(rows) -> 125973, every row
    // has 43 fields; Counter(r[41] for r in rows) -> the counts below (same as the data README).
    assert_eq!(m.total_rows, 125_973);
    assert_eq!(m.source.files[0].rows_read, 125_973);
    assert_eq!(m.source.files[0].rows_kept, 125_973);
    assert_eq!(m.rows_dropped, Default::default());
    assert_eq!(
        m.class_counts,
        counts(&[
            ("back", 956),
            ("buffer_overflow", 30),
            ("ftp_write", 8),
            ("guess_passwd", 53),
            ("imap", 11),
            ("ipsweep", 3599),
            ("land", 18),
            ("loadmodule", 9),
            ("multihop", 7),
            ("neptune", 41214),
            ("nmap", 1493),
            ("normal", 67343),
            ("perl", 3),
            ("phf", 4),
            ("pod", 201),
            ("portsweep", 2931),
            ("rootkit", 10),
            ("satan", 3633),
            ("smurf", 2646),
            ("spy", 2),
            ("teardrop", 892),
            ("warezclient", 890),
            ("warezmaster", 20),
        ])
    );
    assert_eq!(m.label_column, "label");
    assert_eq!(m.classes().unwrap().len(), 23);

    // Python: set(r[19] for r in rows) == {'0'} -> num_outbound_cmds is constant; no other
    // column is. difficulty (field 43) is the preset's drop.
    let d = dropped(&m);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(
        d["num_outbound_cmds"],
        DropReason::Constant { value: "0".into() }
    );
    assert!(matches!(d["difficulty"], DropReason::Preset { .. }));
    assert_eq!(m.columns.len(), 41); // 40 features + label

    // Python: sorted(set(r[1])) -> 3 protocols; set(r[2]) -> 70 services; set(r[3]) -> 11 flags.
    for (name, n) in [("protocol_type", 3), ("service", 70), ("flag", 11)] {
        let c = column(&m, name);
        assert_eq!(
            (c.role, c.dtype),
            (ColumnRole::Categorical, DType::String),
            "{name}"
        );
        assert_eq!(c.vocabulary.as_ref().unwrap().len(), n, "{name}");
    }
    assert_eq!(
        column(&m, "protocol_type").vocabulary.as_deref().unwrap(),
        ["icmp", "tcp", "udp"]
    );
    // Python: integer-literal columns whose value set is {'0','1'}: land, logged_in, root_shell,
    // is_host_login, is_guest_login. su_attempted has {0,1,2} and stays numeric.
    for name in [
        "land",
        "logged_in",
        "root_shell",
        "is_host_login",
        "is_guest_login",
    ] {
        let c = column(&m, name);
        assert_eq!(
            (c.role, c.dtype),
            (ColumnRole::Categorical, DType::Int64),
            "{name}"
        );
        assert_eq!(c.vocabulary.as_deref().unwrap(), ["0", "1"]);
    }
    let su = column(&m, "su_attempted");
    assert_eq!((su.role, su.dtype), (ColumnRole::Numeric, DType::Int64));
    let rate = column(&m, "serror_rate");
    assert_eq!(
        (rate.role, rate.dtype),
        (ColumnRole::Numeric, DType::Float64)
    );
    // Python: durations = [float(r[0]) for r in rows]; min 0, max 42908,
    // mean 287.1446500440571, population std 2604.504972253597.
    let s = column(&m, "duration").stats.as_ref().unwrap();
    assert_eq!((s.min, s.max), (0.0, 42908.0));
    assert!(close(s.mean, 287.1446500440571), "{}", s.mean);
    assert!(close(s.std, 2604.504972253597), "{}", s.std);
    // 125,973 rows: n_quantiles = clamp(125973 / 30, 10, 1000) = 1000 from a 100,000-row sample.
    assert_eq!(s.quantiles.len(), 1000);
    assert_eq!(m.quantile_sample_rows, 100_000);
    assert_eq!((s.quantiles[0], s.quantiles[999]), (0.0, 42908.0));

    let batches = read_back(dir.path(), &m);
    // Python: rows[0][:6] = ['0','tcp','ftp_data','SF','491','0'], rows[0][33] = '0.17',
    // rows[0][41] = 'normal'.
    let b = &batches[0];
    assert_eq!(first_i64(b, "duration", 0), 0);
    assert_eq!(first_str(b, "protocol_type", 0), "tcp");
    assert_eq!(first_str(b, "service", 0), "ftp_data");
    assert_eq!(first_i64(b, "src_bytes", 0), 491);
    assert_eq!(first_f64(b, "dst_host_same_srv_rate", 0), 0.17);
    assert_eq!(first_str(b, "label", 0), "normal");
    assert_eq!(first_i64(b, "logged_in", 0), 0);
    // The parts hold exactly the class counts.
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for b in &batches {
        let l = b.column_by_name("label").unwrap().as_string::<i32>();
        for i in 0..l.len() {
            *got.entry(l.value(i).to_string()).or_default() += 1;
        }
    }
    assert_eq!(got, m.class_counts);
}

#[test]
fn cic_ids_2017_improved_drops_identifiers_attempted_category_and_constant_columns() {
    let (dir, m) = run(
        &[data("cic-ids-2017/cicids2017_improved_rnd5000.csv.gz")],
        &opts(Preset::CicIds2017),
    );
    // Python: 43,419 data rows, no NaN/Infinity/empty value in any numeric column, no empty
    // label; Counter(row['Label']) -> the counts below (same as the data README).
    assert_eq!(m.total_rows, 43_419);
    assert_eq!(m.rows_dropped, Default::default());
    assert_eq!(
        m.class_counts,
        counts(&[
            ("BENIGN", 5000),
            ("Botnet", 736),
            ("DDoS", 5000),
            ("DoS GoldenEye", 5000),
            ("DoS Hulk", 5000),
            ("DoS Slowhttptest", 1740),
            ("DoS Slowloris", 3859),
            ("FTP-Patator", 3972),
            ("Heartbleed", 11),
            ("Infiltration", 36),
            ("Infiltration - Portscan", 5000),
            ("Portscan", 5000),
            ("SSH-Patator", 2961),
            ("Web Attack - Brute Force", 73),
            ("Web Attack - SQL Injection", 13),
            ("Web Attack - XSS", 18),
        ])
    );
    assert!(
        m.source.label_rewrites.is_empty(),
        "{:?}",
        m.source.label_rewrites
    );
    // Python: the columns whose kept values form a single value are 'Bwd URG Flags' and
    // 'Subflow Bwd Packets' (both '0'); 'Attempted Category' is always '-1' but is the preset's
    // drop; the identifiers are the six named in the data README.
    let d = dropped(&m);
    let mut want: BTreeMap<String, DropReason> =
        ["id", "Flow ID", "Src IP", "Src Port", "Dst IP", "Timestamp"]
            .iter()
            .map(|n| (n.to_string(), DropReason::Identifier))
            .collect();
    want.insert(
        "Bwd URG Flags".into(),
        DropReason::Constant { value: "0".into() },
    );
    want.insert(
        "Subflow Bwd Packets".into(),
        DropReason::Constant { value: "0".into() },
    );
    let attempted = d.get("Attempted Category").cloned();
    assert!(
        matches!(attempted, Some(DropReason::Preset { .. })),
        "{attempted:?}"
    );
    want.insert("Attempted Category".into(), attempted.unwrap());
    assert_eq!(d, want);
    assert_eq!(m.columns.len(), 91 - 9);
    // Destination port is a feature, not an identifier.
    let port = column(&m, "Dst Port");
    assert_eq!((port.role, port.dtype), (ColumnRole::Numeric, DType::Int64));
    let label = column(&m, "Label");
    assert_eq!(
        (label.role, label.dtype),
        (ColumnRole::Label, DType::String)
    );
    // Negative header lengths (the extractor overflow) are kept as they are.
    let fwd = column(&m, "Fwd Header Length").stats.clone().unwrap();
    assert_eq!((fwd.min, fwd.max), (-30036.0, 25936.0));

    // 43,419 rows fit in the 100,000-row sample, so the quantiles are exact and Python can
    // reproduce them: v = sorted(float(x) for x in column); n = clamp(43419 // 30, 10, 1000)
    // = 1000; q(p) = v[lo] + (v[hi] - v[lo]) * frac at pos = p * (len(v) - 1) (numpy 'linear').
    assert_eq!(m.quantile_sample_rows, 43_419);
    let fd = column(&m, "Flow Duration").stats.clone().unwrap();
    assert_eq!(fd.quantiles.len(), 1000);
    assert_eq!((fd.min, fd.max), (1.0, 119998839.0));
    assert!(close(fd.mean, 18781652.37930399), "{}", fd.mean);
    assert!(close(fd.std, 34235935.826446965), "{}", fd.std);
    for (i, want) in [
        (1, 1.0),
        (250, 181.3653653653655),
        (500, 5042595.730730731),
        (998, 119703686.05705705),
    ] {
        assert!(
            close(fd.quantiles[i], want),
            "q[{i}] = {} vs {want}",
            fd.quantiles[i]
        );
    }
    let fb = column(&m, "Flow Bytes/s").stats.clone().unwrap();
    assert_eq!(column(&m, "Flow Bytes/s").dtype, DType::Float64);
    assert!(
        close(fb.quantiles[250], 0.16000060772523128),
        "{}",
        fb.quantiles[250]
    );
    assert!(
        close(fb.quantiles[500], 328.8779026971328),
        "{}",
        fb.quantiles[500]
    );

    let batches = read_back(dir.path(), &m);
    // Python: first data row has Dst Port 53, Flow Bytes/s 702040.8163265307, Label BENIGN.
    let b = &batches[0];
    assert_eq!(first_i64(b, "Dst Port", 0), 53);
    assert_eq!(first_f64(b, "Flow Bytes/s", 0), 702040.8163265307);
    assert_eq!(first_str(b, "Label", 0), "BENIGN");
    assert!(b.column_by_name("Src IP").is_none() && b.column_by_name("Timestamp").is_none());
}

#[test]
fn cic_ids_2017_original_layout_trims_names_renames_the_duplicate_and_drops_non_finite_rows() {
    let path = data("cic-ids-2017/Friday-WorkingHours-Afternoon-DDos.pcap_ISCX.head9998.csv.gz");
    let (dir, m) = run(std::slice::from_ref(&path), &opts(Preset::CicIds2017));
    // Python: 9,998 data rows (CRLF line endings); rows holding 'NaN' or 'Infinity' in any field
    // are at physical lines 67, 1769, 1892, 3377, 6798, 8059, 8407 -> 7 rows (13 'Infinity' and
    // 1 'NaN' fields, all in Flow Bytes/s and Flow Packets/s); 9,991 kept, all BENIGN.
    assert_eq!(m.source.files[0].rows_read, 9_998);
    assert_eq!(m.rows_dropped.non_finite, 7);
    assert_eq!(m.total_rows, 9_991);
    assert_eq!(m.class_counts, counts(&[("BENIGN", 9_991)]));
    // Leading spaces trimmed, the raw header kept as source_name.
    let port = column(&m, "Destination Port");
    assert_eq!(port.source_name, " Destination Port");
    assert_eq!(column(&m, "Label").source_name, " Label");
    // 'Fwd Header Length' appears twice (fields 35 and 56): the second is renamed.
    assert_eq!(
        column(&m, "Fwd Header Length").source_name,
        " Fwd Header Length"
    );
    assert_eq!(
        column(&m, "Fwd Header Length_2").source_name,
        " Fwd Header Length"
    );
    assert!(
        m.columns
            .iter()
            .all(|c| c.name == c.name.trim() && !c.name.contains('\r'))
    );
    // Python: single-valued columns over the kept rows (all '0'): the ten below.
    let d = dropped(&m);
    let constant = [
        "Bwd PSH Flags",
        "Fwd URG Flags",
        "Bwd URG Flags",
        "CWE Flag Count",
        "Fwd Avg Bytes/Bulk",
        "Fwd Avg Packets/Bulk",
        "Fwd Avg Bulk Rate",
        "Bwd Avg Bytes/Bulk",
        "Bwd Avg Packets/Bulk",
        "Bwd Avg Bulk Rate",
    ];
    let want: BTreeMap<String, DropReason> = constant
        .iter()
        .map(|n| (n.to_string(), DropReason::Constant { value: "0".into() }))
        .collect();
    assert_eq!(d, want);
    assert_eq!(m.columns.len(), 79 - 10);
    // Python over kept rows: Flow Bytes/s max 2070000000.0, mean 1735635.9778427705;
    // Init_Win_bytes_forward min -1.
    let fb = column(&m, "Flow Bytes/s");
    assert_eq!(fb.dtype, DType::Float64);
    let s = fb.stats.as_ref().unwrap();
    assert_eq!(s.max, 2_070_000_000.0);
    assert!(close(s.mean, 1735635.9778427705), "{}", s.mean);
    assert_eq!(
        column(&m, "Init_Win_bytes_forward")
            .stats
            .as_ref()
            .unwrap()
            .min,
        -1.0
    );
    // 9,991 rows -> clamp(333, 10, 1000) = 333 quantiles.
    assert_eq!(s.quantiles.len(), 333);

    let batches = read_back(dir.path(), &m);
    // Python: first kept row: Destination Port 54865, Flow Bytes/s '4000000', Label BENIGN.
    let b = &batches[0];
    assert_eq!(first_i64(b, "Destination Port", 0), 54865);
    assert_eq!(first_f64(b, "Flow Bytes/s", 0), 4_000_000.0);
    assert_eq!(first_str(b, "Label", 0), "BENIGN");
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, 9_991);
    for b in &batches {
        let col = b
            .column_by_name("Flow Bytes/s")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert!(col.values().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn dedup_removes_the_exact_duplicate_rows_of_the_original_layout() {
    let path = data("cic-ids-2017/Friday-WorkingHours-Afternoon-DDos.pcap_ISCX.head9998.csv.gz");
    let o = ConvertOptions {
        dedup: true,
        ..opts(Preset::CicIds2017)
    };
    let (_dir, m) = run(&[path], &o);
    // Python: kept = rows without NaN/Infinity (9,991); len(kept) - len(set(map(tuple, kept)))
    // = 73 (the README's 73 exact duplicates; none of them holds NaN/Infinity) -> 9,918.
    assert_eq!(m.rows_dropped.non_finite, 7);
    assert_eq!(m.rows_dropped.duplicates, 73);
    assert_eq!(m.total_rows, 9_918);
    assert_eq!(m.source.files[0].rows_kept, 9_918);
    assert!(m.source.dedup);
}

#[test]
fn ciciot2023_converts_with_either_label_column() {
    let path = data("ciciot2023/CICIoT2023_sample.csv.gz");
    let (dir, m) = run(std::slice::from_ref(&path), &opts(Preset::CicIot2023));
    // Python: 19,252 rows; Counter(label_multiclass) -> 2,000 each except Uploading 1,252;
    // Counter(label_binary) -> {'0': 2000, '1': 17252}; no column is single-valued; every
    // feature parses as a float, and only 'Protocol Type' is written as integer literals.
    assert_eq!(m.total_rows, 19_252);
    assert_eq!(
        m.class_counts,
        counts(&[
            ("Benign", 2000),
            ("BruteForce", 2000),
            ("DDoS", 2000),
            ("DoS", 2000),
            ("Malware", 2000),
            ("Mirai", 2000),
            ("Recon", 2000),
            ("Spoofing", 2000),
            ("Uploading", 1252),
            ("WebAttack", 2000),
        ])
    );
    assert_eq!(m.label_column, "label_multiclass");
    assert_eq!(
        dropped(&m),
        [("label_binary".to_string(), DropReason::OtherLabel)].into()
    );
    assert_eq!(m.columns.len(), 40);
    assert!(m.features().all(|c| c.role == ColumnRole::Numeric));
    let ints: Vec<&str> = m
        .features()
        .filter(|c| c.dtype == DType::Int64)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(ints, ["Protocol Type"]);
    // Averaged flag columns (0.2, 0.5, ...) stay float features.
    assert_eq!(column(&m, "psh_flag_number").dtype, DType::Float64);
    let batches = read_back(dir.path(), &m);
    // Python: first row Header_Length 19.2, Protocol Type 6, label_multiclass Benign.
    assert_eq!(first_f64(&batches[0], "Header_Length", 0), 19.2);
    assert_eq!(first_i64(&batches[0], "Protocol Type", 0), 6);
    assert_eq!(first_str(&batches[0], "label_multiclass", 0), "Benign");

    let o = ConvertOptions {
        label: Some("label_binary".into()),
        ..opts(Preset::CicIot2023)
    };
    let (dir, m) = run(&[path], &o);
    assert_eq!(m.label_column, "label_binary");
    assert_eq!(m.class_counts, counts(&[("0", 2000), ("1", 17252)]));
    let label = column(&m, "label_binary");
    assert_eq!((label.role, label.dtype), (ColumnRole::Label, DType::Int64));
    assert_eq!(label.vocabulary.as_deref().unwrap(), ["0", "1"]);
    assert_eq!(
        dropped(&m),
        [("label_multiclass".to_string(), DropReason::OtherLabel)].into()
    );
    let batches = read_back(dir.path(), &m);
    assert_eq!(first_i64(&batches[0], "label_binary", 0), 0);
}

#[test]
fn same_input_gives_the_same_content_hash_and_parts_split_by_rows() {
    let path = data("cic-ids-2017/Friday-WorkingHours-Afternoon-DDos.pcap_ISCX.head9998.csv.gz");
    let o = ConvertOptions {
        rows_per_part: 4_000,
        row_group_rows: 1_500,
        ..opts(Preset::CicIds2017)
    };
    let (dir, a) = run(std::slice::from_ref(&path), &o);
    let (_dir2, b) = run(std::slice::from_ref(&path), &o);
    assert_eq!(a.content_hash, b.content_hash);
    assert_eq!(
        a, b,
        "the whole manifest is deterministic, quantile sample included"
    );
    // 9,991 rows -> parts of 4,000 / 4,000 / 1,991 rows, row groups of at most 1,500.
    let rows: Vec<u64> = a.parts.iter().map(|p| p.rows).collect();
    assert_eq!(rows, [4_000, 4_000, 1_991]);
    assert_eq!(a.parts[0].row_groups, [1_500, 1_500, 1_000]);
    assert_eq!(a.parts[2].row_groups, [1_500, 491]);
    let names: Vec<&str> = a.parts.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
    read_back(dir.path(), &a);
    // content_hash = sha256 over the parts' sha256 hex strings, in order.
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in &a.parts {
        h.update(p.sha256.as_bytes());
    }
    assert_eq!(hex::encode(h.finalize()), a.content_hash);
    // A different cleaning gives a different dataset, hence a different hash.
    let (_d3, c) = run(
        &[path],
        &ConvertOptions {
            dedup: true,
            ..o.clone()
        },
    );
    assert_ne!(c.content_hash, a.content_hash);
}

#[test]
fn thread_count_and_memory_budget_do_not_change_the_dataset() {
    // The original layout has non-finite rows, duplicates and repaired labels: every cleaning
    // path runs. Kept in memory, re-read for pass 2 (budget 0) and a budget exceeded midway must
    // all give the same manifest and the same part bytes, on one thread and on several.
    let path = data("cic-ids-2017/Friday-WorkingHours-Afternoon-DDos.pcap_ISCX.head9998.csv.gz");
    let base = ConvertOptions {
        rows_per_part: 4_000,
        row_group_rows: 1_500,
        dedup: true,
        ..opts(Preset::CicIds2017)
    };
    let (_d, reference) = run(
        std::slice::from_ref(&path),
        &ConvertOptions {
            threads: 1,
            ..base.clone()
        },
    );
    for (threads, memory_budget) in [(3, 0), (2, 1 << 20), (0, usize::MAX)] {
        let (_d, m) = run(
            std::slice::from_ref(&path),
            &ConvertOptions {
                threads,
                memory_budget,
                ..base.clone()
            },
        );
        assert_eq!(
            m, reference,
            "threads {threads}, memory budget {memory_budget}"
        );
    }
}

#[test]
fn several_inputs_form_one_dataset_with_counts_per_file() {
    // The same day file twice, once gzip and once as plain text under a misleading name: the
    // gzip magic, not the extension, decides.
    let gz = data("cic-ids-2017/Friday-WorkingHours-Afternoon-DDos.pcap_ISCX.head9998.csv.gz");
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("copy.csv.gz");
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(File::open(&gz).unwrap()),
        &mut text,
    )
    .unwrap();
    std::fs::write(&plain, &text).unwrap();
    let (_dir, m) = run(&[gz, plain.clone()], &opts(Preset::CicIds2017));
    assert_eq!(m.source.files.len(), 2);
    for f in &m.source.files {
        assert_eq!((f.rows_read, f.rows_kept), (9_998, 9_991));
    }
    assert_eq!(m.source.files[1].path, plain.display().to_string());
    assert_eq!(m.total_rows, 2 * 9_991);
    assert_eq!(m.rows_dropped.non_finite, 14);
}
