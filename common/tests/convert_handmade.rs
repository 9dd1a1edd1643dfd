//! `convert` on tiny hand-made files: every error names what to fix and leaves nothing at the
//! destination, and the cleaning and typing rules hold on the edge cases real files only
//! sometimes show.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use flowsynth_common::Error;
use flowsynth_common::convert::{ConvertOptions, Preset, VOCABULARY_CAP, convert};
use flowsynth_common::dataset;
use flowsynth_common::manifest::{
    ColumnRole, DType, DatasetManifest, DropReason, LEGACY_MANIFEST_NAME, MANIFEST_NAME,
    NonFinitePolicy,
};
use flowsynth_common::store::{Location, block_on};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn convert(&self, inputs: &[PathBuf], o: &ConvertOptions) -> Result<DatasetManifest, Error> {
        let out = Location::parse(self.out_dir().to_str().unwrap()).unwrap();
        convert(inputs, &out, o)
    }

    /// Converts and expects an error; the destination must hold nothing afterwards.
    fn fails(&self, inputs: &[PathBuf], o: &ConvertOptions) -> Error {
        let err = self.convert(inputs, o).unwrap_err();
        self.assert_destination_empty();
        err
    }

    fn assert_destination_empty(&self) {
        let left: Vec<String> = std::fs::read_dir(self.out_dir())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "the destination holds {left:?} after a failed conversion"
        );
    }

    fn batches(&self, m: &DatasetManifest) -> Vec<RecordBatch> {
        m.parts
            .iter()
            .flat_map(|p| {
                ParquetRecordBatchReaderBuilder::try_new(
                    File::open(self.out_dir().join(&p.path)).unwrap(),
                )
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
            })
            .collect()
    }
}

fn generic() -> ConvertOptions {
    ConvertOptions::default()
}

fn preset(p: Preset) -> ConvertOptions {
    ConvertOptions {
        preset: p,
        ..ConvertOptions::default()
    }
}

fn col<'a>(m: &'a DatasetManifest, name: &str) -> &'a flowsynth_common::manifest::ColumnInfo {
    m.columns
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn dropped(m: &DatasetManifest) -> BTreeMap<String, DropReason> {
    m.dropped_columns
        .iter()
        .map(|d| (d.name.clone(), d.reason.clone()))
        .collect()
}

#[test]
fn ragged_row_names_file_line_and_field_counts() {
    let c = Case::new();
    let csv = c.file("bad.csv", b"a,b,label\n1,2,x\n3,4\n");
    let err = c.fails(&[csv], &generic());
    assert!(
        matches!(
            err,
            Error::RaggedRow {
                line: 3,
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bad.csv:3") && msg.contains("2 fields") && msg.contains("expected 3"),
        "{msg}"
    );

    // Physical line numbers count blank lines and CRLF endings, and lines inside quotes.
    let csv = c.file(
        "crlf.csv",
        b"a,b,label\r\n\r\n1,\"two\nlines\",x\r\n3,4,y,z\r\n",
    );
    let err = c.fails(&[csv], &generic());
    assert!(
        matches!(
            err,
            Error::RaggedRow {
                line: 5,
                expected: 3,
                found: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unknown_label_lists_the_available_columns() {
    let c = Case::new();
    let csv = c.file("x.csv", b"a,b,kind\n1,2,x\n");
    let o = ConvertOptions {
        label: Some("Label".into()),
        ..generic()
    };
    let err = c.fails(std::slice::from_ref(&csv), &o);
    assert!(matches!(err, Error::UnknownLabelColumn { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("x.csv") && msg.contains("`Label`") && msg.contains("a, b, kind"),
        "{msg}"
    );
    // Without --label, generic looks for label/Label/class and says what to pass.
    let err = c.fails(&[csv], &generic());
    assert!(matches!(err, Error::NoLabelColumn { .. }), "{err:?}");
    assert!(err.to_string().contains("--label"), "{err}");
}

#[test]
fn empty_and_whitespace_only_files_are_empty_file_errors() {
    let c = Case::new();
    for (name, bytes) in [("zero.csv", &b""[..]), ("ws.csv", b" \n\t\r\n\n")] {
        let csv = c.file(name, bytes);
        for p in [Preset::Generic, Preset::NslKdd] {
            let err = c.fails(std::slice::from_ref(&csv), &preset(p));
            assert!(
                matches!(err, Error::EmptyFile { .. }),
                "{name} {p}: {err:?}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}

#[test]
fn header_without_rows_is_a_no_rows_error() {
    let c = Case::new();
    for (name, bytes) in [
        ("h.csv", &b"a,b,label\n"[..]),
        ("hb.csv", b"a,b,label\r\n\r\n  \r\n"),
    ] {
        let csv = c.file(name, bytes);
        let err = c.fails(&[csv], &generic());
        assert!(matches!(err, Error::NoRows { .. }), "{name}: {err:?}");
    }
}

#[test]
fn non_utf8_byte_in_a_feature_column_names_line_and_column() {
    let c = Case::new();
    let csv = c.file("latin1.csv", b"a,name,label\n1,ok,x\n2,caf\xe9,y\n");
    let err = c.fails(&[csv], &generic());
    match &err {
        Error::NotUtf8 { line, column, .. } => assert_eq!((*line, column.as_str()), (3, "name")),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("latin1.csv:3"), "{err}");
    // The cp1252 dash byte in a label is repaired only by the cic-ids-2017 preset.
    let csv = c.file("dash.csv", b"x,Label\n1,Web Attack \x96 XSS\n");
    let err = c.fails(std::slice::from_ref(&csv), &generic());
    assert!(
        matches!(err, Error::NotUtf8 { ref column, .. } if column == "Label"),
        "{err:?}"
    );
    // ... and in cic-ids-2017, a non-UTF-8 byte outside the label is still an error.
    let csv = c.file("dash2.csv", b"x,Label\n1\x96,BENIGN\n2,BENIGN\n");
    let err = c.fails(&[csv], &preset(Preset::CicIds2017));
    assert!(
        matches!(err, Error::NotUtf8 { ref column, line: 2, .. } if column == "x"),
        "{err:?}"
    );
}

#[test]
fn cic_ids_2017_labels_are_repaired_and_the_rewrites_recorded() {
    let c = Case::new();
    // 0x96: the cp1252 en dash; E2 80 93: the UTF-8 en dash.
    let csv = c.file(
        "day.csv",
        b" Flow Duration, Label\r\n5,BENIGN\r\n6,Web Attack \x96 Brute Force\r\n\
          7,Web Attack \xe2\x80\x93 Brute Force\r\n8,Web Attack  -  Brute Force\r\n",
    );
    let m = c.convert(&[csv], &preset(Preset::CicIds2017)).unwrap();
    assert_eq!(
        m.class_counts,
        [
            ("BENIGN".to_string(), 1),
            ("Web Attack - Brute Force".into(), 3)
        ]
        .into()
    );
    let rewrites: Vec<(&str, &str)> = m
        .source
        .label_rewrites
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        rewrites,
        [
            ("Web Attack  -  Brute Force", "Web Attack - Brute Force"),
            ("Web Attack \\x96 Brute Force", "Web Attack - Brute Force"),
            (
                "Web Attack \u{2013} Brute Force",
                "Web Attack - Brute Force"
            ),
        ]
    );
}

#[test]
fn all_rows_dropped_reports_the_counts_by_cause() {
    let c = Case::new();
    let csv = c.file(
        "inf.csv",
        b"rate,n,label\nInfinity,1,a\n-Infinity,2,b\n1.5,NaN,\n",
    );
    let err = c.fails(&[csv], &generic());
    assert!(matches!(err, Error::AllRowsDropped { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("3 rows read")
            && msg.contains("2 with NaN/Infinity")
            && msg.contains("1 with an empty label"),
        "{msg}"
    );
}

#[test]
fn gzip_input_is_read_whatever_its_name() {
    let c = Case::new();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"\xef\xbb\xbfa,b,label\r\n1,2.5,x\r\n3,4.5,y\r\n\r\n")
        .unwrap();
    let gz = enc.finish().unwrap();
    for name in ["in.csv.gz", "in.csv"] {
        let c2 = Case::new();
        let p = c2.file(name, &gz);
        let m = c2.convert(&[p], &generic()).unwrap();
        assert_eq!(m.total_rows, 2, "{name}");
        assert_eq!(col(&m, "a").dtype, DType::Int64);
        assert_eq!(col(&m, "b").dtype, DType::Float64);
        assert_eq!(
            col(&m, "a").source_name,
            "a",
            "the BOM is not part of the first name"
        );
    }
    drop(c);
}

#[test]
fn drop_names_must_exist_and_are_recorded() {
    let c = Case::new();
    let csv = c.file("d.csv", b"a, b ,c,label\n1,2,3,x\n4,5,6,y\n");
    let o = ConvertOptions {
        drop: vec!["nope".into()],
        ..generic()
    };
    let err = c.fails(std::slice::from_ref(&csv), &o);
    assert!(
        matches!(err, Error::UnknownDropColumn { ref column, .. } if column == "nope"),
        "{err:?}"
    );
    let o = ConvertOptions {
        drop: vec![" b".into()],
        ..generic()
    };
    let m = c.convert(&[csv], &o).unwrap();
    assert_eq!(dropped(&m), [("b".to_string(), DropReason::User)].into());
    assert_eq!(
        m.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "c", "label"]
    );
}

#[test]
fn inputs_with_different_headers_are_refused() {
    let c = Case::new();
    let a = c.file("a.csv", b"x,y,label\n1,2,p\n3,4,q\n");
    let b = c.file("b.csv", b"x,z,label\n1,2,p\n");
    let err = c.fails(&[a.clone(), b], &generic());
    assert!(matches!(err, Error::HeaderMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("b.csv") && msg.contains("a.csv") && msg.contains("`z`"),
        "{msg}"
    );
    // Leading spaces do not count as a difference.
    let b = c.file("b2.csv", b" x, y , label\n5,6,q\n");
    let m = c.convert(&[a, b], &generic()).unwrap();
    assert_eq!(m.total_rows, 3);
    assert_eq!(
        m.source
            .files
            .iter()
            .map(|f| f.rows_kept)
            .collect::<Vec<_>>(),
        [2, 1]
    );
}

#[test]
fn non_finite_policies_drop_zero_or_stop() {
    let c = Case::new();
    let csv = c.file(
        "nf.csv",
        b"n,rate,label\n1,0.5,a\n2,NaN,b\n3,,a\n4,Infinity,b\n5,2.5,a\n",
    );
    // Drop (default): the rows with NaN, an empty field and Infinity go.
    let m = c.convert(std::slice::from_ref(&csv), &generic()).unwrap();
    assert_eq!((m.total_rows, m.rows_dropped.non_finite), (2, 3));
    assert_eq!(m.class_counts, [("a".to_string(), 2)].into());
    let s = col(&m, "rate").stats.clone().unwrap();
    assert_eq!((s.min, s.max, s.mean), (0.5, 2.5, 1.5));

    // Zero: kept, written as 0 and counted in the statistics as 0.
    let c2 = Case::new();
    let o = ConvertOptions {
        non_finite: NonFinitePolicy::Zero,
        ..generic()
    };
    let m = c2.convert(std::slice::from_ref(&csv), &o).unwrap();
    assert_eq!((m.total_rows, m.rows_dropped.non_finite), (5, 0));
    let s = col(&m, "rate").stats.clone().unwrap();
    assert_eq!((s.min, s.max, s.mean), (0.0, 2.5, 0.6));
    let b = &c2.batches(&m)[0];
    let rate = b
        .column_by_name("rate")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(rate.values().to_vec(), [0.5, 0.0, 0.0, 0.0, 2.5]);
    assert_eq!(m.source.non_finite_policy, NonFinitePolicy::Zero);

    // Error: stops at the first one, naming line, column and value.
    let c3 = Case::new();
    let o = ConvertOptions {
        non_finite: NonFinitePolicy::Error,
        ..generic()
    };
    let err = c3.fails(&[csv], &o);
    match &err {
        Error::NonFinite {
            line,
            column,
            value,
            ..
        } => {
            assert_eq!((*line, column.as_str(), value.as_str()), (3, "rate", "NaN"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_existing_dataset_is_kept_unless_overwrite_and_then_fully_replaced() {
    let c = Case::new();
    let big = c.file("big.csv", b"v,label\n1,a\n2,b\n3,a\n4,b\n5,a\n");
    let small = c.file("small.csv", b"v,label\n7,a\n8,b\n");
    let o = ConvertOptions {
        rows_per_part: 2,
        ..generic()
    };
    let first = c.convert(std::slice::from_ref(&big), &o).unwrap();
    assert_eq!(first.parts.len(), 3);
    let before = std::fs::read(c.out_dir().join(MANIFEST_NAME)).unwrap();

    let err = c
        .convert(std::slice::from_ref(&small), &generic())
        .unwrap_err();
    assert!(matches!(err, Error::DatasetExists { .. }), "{err:?}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(
        std::fs::read(c.out_dir().join(MANIFEST_NAME)).unwrap(),
        before
    );

    // A failing conversion with overwrite leaves the old dataset alone.
    let bad = c.file("bad.csv", b"v,label\n1\n");
    let o = ConvertOptions {
        overwrite: true,
        ..generic()
    };
    assert!(c.convert(&[bad], &o).is_err());
    assert_eq!(
        std::fs::read(c.out_dir().join(MANIFEST_NAME)).unwrap(),
        before
    );

    let second = c.convert(&[small], &o).unwrap();
    assert_eq!(second.total_rows, 2);
    let mut names: Vec<String> = std::fs::read_dir(c.out_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["_dataset.json", "part-00000.parquet"],
        "old parts are removed"
    );
}

#[test]
fn a_dataset_with_the_legacy_manifest_name_is_read_and_replaced_cleanly() {
    let c = Case::new();
    let csv = c.file("a.csv", b"v,label\n1,a\n2,b\n3,a\n");
    let first = c.convert(std::slice::from_ref(&csv), &generic()).unwrap();
    std::fs::rename(
        c.out_dir().join(MANIFEST_NAME),
        c.out_dir().join(LEGACY_MANIFEST_NAME),
    )
    .unwrap();
    let loc = Location::parse(c.out_dir().to_str().unwrap()).unwrap();
    let loaded = block_on(dataset::load_manifest(&loc)).unwrap();
    assert_eq!(loaded.content_hash, first.content_hash);

    let err = c
        .convert(std::slice::from_ref(&csv), &generic())
        .unwrap_err();
    assert!(
        err.to_string().contains(LEGACY_MANIFEST_NAME) && err.to_string().contains("--overwrite"),
        "{err}"
    );
    let o = ConvertOptions {
        overwrite: true,
        ..generic()
    };
    c.convert(&[csv], &o).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(c.out_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [MANIFEST_NAME, "part-00000.parquet"]);
}

#[test]
fn a_failed_upload_removes_the_parts_it_uploaded_and_writes_no_manifest() {
    let c = Case::new();
    let csv = c.file("u.csv", b"v,label\n1,a\n2,b\n3,a\n4,b\n5,a\n");
    // A non-empty directory where the second part should go makes its upload fail after the
    // first part is already at the destination.
    let blocker = c.out_dir().join("part-00001.parquet");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let o = ConvertOptions {
        rows_per_part: 2,
        ..generic()
    };
    let err = c.convert(&[csv], &o).unwrap_err();
    assert!(matches!(err, Error::ObjectStore { .. }), "{err:?}");
    assert!(!c.out_dir().join(MANIFEST_NAME).exists());
    assert!(
        !c.out_dir().join("part-00000.parquet").exists(),
        "the uploaded part was removed"
    );
    assert!(!c.out_dir().join("part-00002.parquet").exists());
}

#[test]
fn empty_labels_are_dropped_and_bom_crlf_quotes_and_trailing_blank_lines_are_handled() {
    let c = Case::new();
    let csv = c.file(
        "q.csv",
        b"\xef\xbb\xbf\"svc\",n,label\r\n\"http, alt\",1,a\r\nftp,2,\r\nssh,3,  \r\n\"http, alt\",4,b\r\n\r\n\r\n",
    );
    let m = c.convert(&[csv], &generic()).unwrap();
    assert_eq!(m.rows_dropped.empty_label, 2);
    assert_eq!((m.source.files[0].rows_read, m.total_rows), (4, 2));
    // Only kept rows make up vocabularies: "http, alt" is the sole service left, so constant.
    assert_eq!(
        dropped(&m),
        [(
            "svc".to_string(),
            DropReason::Constant {
                value: "http, alt".into()
            }
        )]
        .into()
    );
}

#[test]
fn types_follow_the_values_int_float_flag_categorical_and_constant() {
    let c = Case::new();
    let csv = c.file(
        "t.csv",
        b"i,f,flag,flag3,cat,const,code,label\n\
          1,1.0,0,0,tcp,5,10,0\n\
          -2,2,1,1,udp,5,20,1\n\
          3,3.5,1,2,tcp,5,x1,1\n",
    );
    let m = c.convert(&[csv], &generic()).unwrap();
    let kinds: Vec<(&str, ColumnRole, DType)> = m
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.role, c.dtype))
        .collect();
    assert_eq!(
        kinds,
        [
            ("i", ColumnRole::Numeric, DType::Int64),
            ("f", ColumnRole::Numeric, DType::Float64),
            ("flag", ColumnRole::Categorical, DType::Int64),
            ("flag3", ColumnRole::Numeric, DType::Int64),
            ("cat", ColumnRole::Categorical, DType::String),
            ("code", ColumnRole::Categorical, DType::String),
            ("label", ColumnRole::Label, DType::Int64),
        ]
    );
    assert_eq!(col(&m, "flag").vocabulary.as_deref().unwrap(), ["0", "1"]);
    // A column that looked numeric until its last row keeps every value in its vocabulary.
    assert_eq!(
        col(&m, "code").vocabulary.as_deref().unwrap(),
        ["10", "20", "x1"]
    );
    assert_eq!(col(&m, "label").vocabulary.as_deref().unwrap(), ["0", "1"]);
    assert_eq!(
        m.class_counts,
        [("0".to_string(), 1), ("1".into(), 2)].into()
    );
    assert_eq!(
        dropped(&m),
        [(
            "const".to_string(),
            DropReason::Constant { value: "5".into() }
        )]
        .into()
    );
    let b = &c.batches(&m)[0];
    let i = b.column_by_name("i").unwrap().as_primitive::<Int64Type>();
    assert_eq!(i.values().to_vec(), [1, -2, 3]);
    let code = b.column_by_name("code").unwrap().as_string::<i32>();
    assert_eq!((code.value(0), code.value(2)), ("10", "x1"));
}

#[test]
fn row_cleaning_is_exact_when_a_column_type_settles_late() {
    // `late` holds NaN before its first number: it ends numeric, so that row is dropped.
    // `texty` looks numeric, drops a NaN row, then turns out to be text: that row comes back.
    let c = Case::new();
    let csv = c.file(
        "late.csv",
        b"late,texty,label\n\
          NaN,1,a\n\
          1,NaN,b\n\
          2,3,a\n\
          3,abc,b\n",
    );
    let m = c.convert(&[csv], &generic()).unwrap();
    assert_eq!(m.rows_dropped.non_finite, 1);
    assert_eq!(m.total_rows, 3);
    assert_eq!(
        m.class_counts,
        [("a".to_string(), 1), ("b".into(), 2)].into()
    );
    let late = col(&m, "late").stats.clone().unwrap();
    assert_eq!((late.min, late.max, late.mean), (1.0, 3.0, 2.0));
    assert_eq!(
        col(&m, "texty").vocabulary.as_deref().unwrap(),
        ["3", "NaN", "abc"]
    );
    let b = &c.batches(&m)[0];
    assert_eq!(b.num_rows(), 3);
}

#[test]
fn dedup_compares_kept_columns_and_the_normalised_label() {
    let c = Case::new();
    // Rows 1 and 3 differ only in the identifier column and label padding.
    let csv = c.file("d.csv", b"Flow ID,v,label\nf1,1,a\nf2,2,a\nf3,1, a\n");
    let o = ConvertOptions {
        dedup: true,
        ..generic()
    };
    let m = c.convert(&[csv], &o).unwrap();
    assert_eq!((m.total_rows, m.rows_dropped.duplicates), (2, 1));
    assert_eq!(dropped(&m)["Flow ID"], DropReason::Identifier);
}

#[test]
fn nsl_kdd_rows_must_have_43_fields() {
    let c = Case::new();
    let csv = c.file("kdd.txt", b"0,tcp,http,SF,1,2,0\n");
    let err = c.fails(&[csv], &preset(Preset::NslKdd));
    assert!(
        matches!(
            err,
            Error::RaggedRow {
                line: 1,
                expected: 43,
                found: 7,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_text_column_with_too_many_values_is_named_for_dropping() {
    let c = Case::new();
    let mut text = String::from("host,v,label\n");
    for i in 0..=VOCABULARY_CAP {
        text.push_str(&format!("h{i},{},{}\n", i % 7, i % 2));
    }
    let csv = c.file("hosts.csv", text.as_bytes());
    let err = c.fails(std::slice::from_ref(&csv), &generic());
    assert!(
        matches!(err, Error::TooManyCategories { ref column, .. } if column == "host"),
        "{err:?}"
    );
    assert!(err.to_string().contains("--drop"), "{err}");
    let o = ConvertOptions {
        drop: vec!["host".into()],
        ..generic()
    };
    assert_eq!(
        c.convert(&[csv], &o).unwrap().total_rows,
        VOCABULARY_CAP as u64 + 1
    );
}

#[test]
fn no_feature_left_is_an_error() {
    let c = Case::new();
    let csv = c.file("f.csv", b"Src IP,k,label\n1.2.3.4,7,a\n5.6.7.8,7,b\n");
    let err = c.fails(&[csv], &generic());
    assert!(matches!(err, Error::NoFeatures), "{err:?}");
}

#[test]
fn invalid_options_are_refused_before_reading() {
    let c = Case::new();
    let csv = c.file("o.csv", b"a,label\n1,x\n");
    for o in [
        ConvertOptions {
            rows_per_part: 0,
            ..generic()
        },
        ConvertOptions {
            row_group_rows: 0,
            ..generic()
        },
    ] {
        assert!(matches!(
            c.fails(std::slice::from_ref(&csv), &o),
            Error::InvalidOptions { .. }
        ));
    }
    assert!(matches!(
        c.fails(&[], &generic()),
        Error::InvalidOptions { .. }
    ));
    let missing = c.dir.path().join("missing.csv");
    let err = c.fails(&[missing], &generic());
    assert!(
        matches!(err, Error::ReadFile { .. }) && err.to_string().contains("missing.csv"),
        "{err}"
    );
}

/// Random garbage must produce an error or a dataset, never a panic, and never leave a partial
/// dataset behind.
#[test]
fn random_inputs_never_panic() {
    let tokens: [&[u8]; 16] = [
        b"1",
        b"0",
        b"2.5",
        b"-3",
        b"NaN",
        b"",
        b"abc",
        b"a\xff",
        b"Infinity",
        b"\"q,x\"",
        b" 3 ",
        b"x \x96 y",
        b"\"un",
        b"1e999",
        b"\r",
        b"\xe2\x80\x93",
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let c = Case::new();
    let mut ok = 0;
    for i in 0..300 {
        let mut bytes: Vec<u8> = if i % 10 == 0 {
            Vec::new()
        } else {
            b"x,y,label\n".to_vec()
        };
        for _ in 0..rng.random_range(0..12) {
            let width = if rng.random_bool(0.9) {
                3
            } else {
                rng.random_range(1..5)
            };
            for f in 0..width {
                if f > 0 {
                    bytes.push(b',');
                }
                bytes.extend_from_slice(tokens[rng.random_range(0..tokens.len())]);
            }
            bytes.extend_from_slice(if rng.random_bool(0.5) { b"\n" } else { b"\r\n" });
        }
        let csv = c.file("r.csv", &bytes);
        for p in [Preset::Generic, Preset::CicIds2017] {
            let o = ConvertOptions {
                label: Some("label".into()),
                overwrite: true,
                dedup: i % 2 == 0,
                non_finite: [
                    NonFinitePolicy::Drop,
                    NonFinitePolicy::Zero,
                    NonFinitePolicy::Error,
                ][i % 3],
                ..preset(p)
            };
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.convert(std::slice::from_ref(&csv), &o)
            }));
            match res {
                Err(_) => panic!("panicked on {:?}", String::from_utf8_lossy(&bytes)),
                Ok(Ok(m)) => {
                    ok += 1;
                    assert_eq!(m.parts.iter().map(|p| p.rows).sum::<u64>(), m.total_rows);
                    assert_eq!(
                        c.batches(&m)
                            .iter()
                            .map(|b| b.num_rows() as u64)
                            .sum::<u64>(),
                        m.total_rows
                    );
                    std::fs::remove_dir_all(c.out_dir()).unwrap();
                }
                Ok(Err(_)) => c.assert_destination_empty(),
            }
        }
    }
    assert!(
        ok > 10,
        "only {ok} random inputs converted; the generator is too hostile to test much"
    );
}

#[test]
fn a_column_that_shows_text_only_late_gets_its_whole_vocabulary() {
    // `code` looks numeric for 10,000 rows (several chunks), then holds text: it is categorical,
    // and its vocabulary must hold the early numbers' texts too, whether the input is kept in
    // memory for the second look or read again.
    let case = Case::new();
    let mut csv = String::from("code,x,label\n");
    for i in 0..10_000 {
        // The first chunk's codes (0-6) never come again after it.
        let code = if i < 4_096 { i % 7 } else { 100 + i % 3 };
        csv.push_str(&format!(
            "{code},{i},{}\n",
            if i % 2 == 0 { "a" } else { "b" }
        ));
    }
    csv.push_str("tcp,5,a\n");
    let input = case.file("late_text.csv", csv.as_bytes());
    let mut manifests = Vec::new();
    for memory_budget in [usize::MAX, 0] {
        let o = ConvertOptions {
            memory_budget,
            overwrite: true,
            ..generic()
        };
        let m = case.convert(std::slice::from_ref(&input), &o).unwrap();
        let code = col(&m, "code");
        assert_eq!(code.role, ColumnRole::Categorical);
        assert_eq!(
            code.vocabulary.as_deref().unwrap(),
            [
                "0", "1", "100", "101", "102", "2", "3", "4", "5", "6", "tcp"
            ]
        );
        assert_eq!(col(&m, "x").role, ColumnRole::Numeric);
        manifests.push(m);
    }
    assert_eq!(manifests[0], manifests[1]);
}
