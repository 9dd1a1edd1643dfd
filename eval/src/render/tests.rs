//! Rendering tests on fabricated reports: a small one with the awkward cases (a column named
//! `<b>&"x"`, names that sanitize to the same or to nothing, missing scores, a font-less host)
//! and a CIC-IDS-sized one with realistic numbers. Set `FLOWSYNTH_RENDER_DEMO=<dir>` to have the
//! big one written to `<dir>` for looking at in a browser.

use std::collections::{BTreeMap, HashSet};
use std::io::Cursor;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::frame::{ColumnSpec, Values};
use crate::image_view::{ClassImages, ImageViewReport};
use crate::report::{
    ClassFidelity, ClassMatched, ClassResult, ColumnScore, Constraint, DatasetInfo, Dcr, Detection,
    DetectorResult, Downstream, Inputs, PairScore, QualityCurves, REPORT_FORMAT_VERSION,
    SettingResult, Skipped, Stat, Validity,
};

const NASTY: &str = r#"<b>&"x""#;

/// How a fabricated numeric column is distributed.
#[derive(Clone, Copy)]
enum Gen {
    /// Mostly zero, log-normal tail up to ~1e9 (byte counts, durations, rates).
    HeavyTail { zeros: f64, scale: f64 },
    /// Ports: 80 / 443 / 53 or ephemeral.
    Port,
    /// 0/1 flag with P(1) = p.
    Flag { p: f64 },
    /// Small counts 0..=max.
    Small { max: u32 },
    /// Uniform on [0, hi].
    Uniform { hi: f64 },
    /// Constant value.
    Constant(f64),
}

fn draw(rng: &mut SmallRng, g: Gen, drift: f64) -> f64 {
    match g {
        Gen::HeavyTail { zeros, scale } => {
            if rng.random::<f64>() < zeros * (1.0 + drift) {
                0.0
            } else {
                let z: f64 = (0..6).map(|_| rng.random::<f64>()).sum::<f64>() - 3.0;
                (scale * (z * (2.2 + drift)).exp()).round().min(1.2e9)
            }
        }
        Gen::Port => {
            let u = rng.random::<f64>();
            if u < 0.45 - drift {
                80.0
            } else if u < 0.75 {
                443.0
            } else if u < 0.85 {
                53.0
            } else {
                f64::from(rng.random_range(1024..65535u32))
            }
        }
        Gen::Flag { p } => f64::from(u8::from(rng.random::<f64>() < p + drift)),
        Gen::Small { max } => f64::from(rng.random_range(0..=max)),
        Gen::Uniform { hi } => rng.random::<f64>() * hi * (1.0 + drift),
        Gen::Constant(c) => c,
    }
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    let r = sxy / (sxx * syy).sqrt();
    r.is_finite().then_some(r)
}

struct Fixture {
    report: Report,
    schema: Schema,
    real: Frame,
    synthetic: Frame,
}

/// A report over `numeric` fabricated columns (plus categorical ones), with scores and
/// correlations computed from the fabricated data where that is cheap, made up elsewhere.
fn fixture(numeric: usize, rows: usize, classes: &[&str]) -> Fixture {
    let mut rng = SmallRng::seed_from_u64(7);
    let base: Vec<(&str, Gen)> = vec![
        ("Destination Port", Gen::Port),
        (
            "Flow Duration",
            Gen::HeavyTail {
                zeros: 0.05,
                scale: 2e4,
            },
        ),
        (
            "Total Fwd Packets",
            Gen::HeavyTail {
                zeros: 0.0,
                scale: 4.0,
            },
        ),
        (
            "Total Backward Packets",
            Gen::HeavyTail {
                zeros: 0.2,
                scale: 3.0,
            },
        ),
        (
            "Total Length of Fwd Packets",
            Gen::HeavyTail {
                zeros: 0.3,
                scale: 200.0,
            },
        ),
        (
            "Flow Bytes/s",
            Gen::HeavyTail {
                zeros: 0.25,
                scale: 3e3,
            },
        ),
        (
            "Flow Bytes s",
            Gen::HeavyTail {
                zeros: 0.25,
                scale: 2.5e3,
            },
        ),
        (
            "Flow IAT Mean",
            Gen::HeavyTail {
                zeros: 0.05,
                scale: 5e3,
            },
        ),
        ("FIN Flag Count", Gen::Flag { p: 0.1 }),
        ("SYN Flag Count", Gen::Flag { p: 0.35 }),
        ("Down/Up Ratio", Gen::Small { max: 4 }),
        ("Init_Win_bytes_forward", Gen::Uniform { hi: 65535.0 }),
        ("Bwd Avg Bulk Rate", Gen::Constant(0.0)),
        (NASTY, Gen::Uniform { hi: 1.0 }),
        ("///", Gen::Small { max: 30 }),
    ];
    let mut specs: Vec<(String, Gen)> = base
        .into_iter()
        .take(numeric)
        .map(|(n, g)| (n.to_string(), g))
        .collect();
    let stems = [
        "Fwd Packet Length",
        "Bwd Packet Length",
        "Fwd IAT",
        "Bwd IAT",
        "Active",
        "Idle",
        "Packet Length",
        "Subflow Fwd Bytes",
    ];
    let stats = [
        "Max", "Min", "Mean", "Std", "Variance", "Total", "Median", "Q1", "Q3", "Count",
    ];
    let mut k = 0;
    while specs.len() < numeric {
        let name = format!(
            "{} {}",
            stems[k % stems.len()],
            stats[(k / stems.len()) % stats.len()]
        );
        let generator = if k % 3 == 0 {
            Gen::Uniform { hi: 1500.0 }
        } else {
            Gen::HeavyTail {
                zeros: 0.4,
                scale: 50.0 * (k as f64 + 1.0),
            }
        };
        specs.push((name, generator));
        k += 1;
    }
    let protocols: Vec<String> = ["tcp", "udp", "icmp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let services: Vec<String> = (0..28)
        .map(|i| match i {
            0 => "http".to_string(),
            1 => "private".to_string(),
            2 => "domain_u".to_string(),
            3 => "a-very-long-service-name-that-needs-truncation".to_string(),
            _ => format!("svc_{i}"),
        })
        .collect();

    let mut columns: Vec<ColumnSpec> = specs
        .iter()
        .map(|(n, g)| ColumnSpec {
            name: n.clone(),
            kind: Kind::Numeric {
                integer: !matches!(g, Gen::Uniform { .. }),
            },
        })
        .collect();
    columns.push(ColumnSpec {
        name: "protocol_type".into(),
        kind: Kind::Categorical {
            vocabulary: protocols,
        },
    });
    columns.push(ColumnSpec {
        name: "service".into(),
        kind: Kind::Categorical {
            vocabulary: services.clone(),
        },
    });
    let schema = Schema {
        columns,
        label: "Label".into(),
        classes: classes.iter().map(|c| c.to_string()).collect(),
    };

    let mut make = |rows: usize, drift: f64| {
        let mut cols: Vec<Values> = specs
            .iter()
            .map(|(_, g)| Values::Numeric((0..rows).map(|_| draw(&mut rng, *g, drift)).collect()))
            .collect();
        cols.push(Values::Categorical(
            (0..rows)
                .map(|_| {
                    let u = rng.random::<f64>();
                    if u < 0.7 + drift {
                        0
                    } else if u < 0.95 {
                        1
                    } else {
                        2
                    }
                })
                .collect(),
        ));
        cols.push(Values::Categorical(
            (0..rows)
                .map(|_| {
                    // Zipf-like over the services; the synthetic side invents an unknown code.
                    let r = (rng.random::<f64>().powf(3.0) * services.len() as f64) as u32;
                    if drift > 0.0 && rng.random::<f64>() < 0.01 {
                        99
                    } else {
                        r
                    }
                })
                .collect(),
        ));
        let labels = (0..rows)
            .map(|_| (rng.random::<f64>().powf(2.5) * classes.len() as f64) as u32)
            .collect();
        Frame {
            columns: cols,
            labels,
        }
    };
    let real = make(rows, 0.0);
    let synthetic = make(rows * 3 / 4, 0.04);

    let mut col_scores = Vec::new();
    let mut skipped = Vec::new();
    for (i, (name, g)) in specs.iter().enumerate() {
        if matches!(g, Gen::Constant(_)) {
            col_scores.push(ColumnScore {
                column: name.clone(),
                metric: "KSComplement".into(),
                score: None,
            });
            skipped.push(Skipped {
                column: name.clone(),
                reason: "constant in the real data".into(),
            });
        } else {
            let s = 0.97 - 0.25 * ((i * 37) % 11) as f64 / 11.0;
            col_scores.push(ColumnScore {
                column: name.clone(),
                metric: "KSComplement".into(),
                score: Some(s),
            });
        }
    }
    col_scores.push(ColumnScore {
        column: "protocol_type".into(),
        metric: "TVComplement".into(),
        score: Some(0.953),
    });
    col_scores.push(ColumnScore {
        column: "service".into(),
        metric: "TVComplement".into(),
        score: Some(0.871),
    });

    let mut pairs = Vec::new();
    for i in 0..specs.len() {
        for j in i + 1..specs.len() {
            let r = pearson(real.columns[i].numeric(), real.columns[j].numeric());
            let s = pearson(
                synthetic.columns[i].numeric(),
                synthetic.columns[j].numeric(),
            );
            let score = match (r, s) {
                (Some(r), Some(s)) => Some(1.0 - (r - s).abs() / 2.0),
                _ => None,
            };
            pairs.push(PairScore {
                a: specs[i].0.clone(),
                b: specs[j].0.clone(),
                metric: "CorrelationSimilarity".into(),
                score,
                real: r,
                synthetic: s,
                real_association: r.map(f64::abs),
                counted: r.is_some_and(|r| r.abs() > 0.5),
            });
        }
    }
    pairs.push(PairScore {
        a: "protocol_type".into(),
        b: "service".into(),
        metric: "ContingencySimilarity".into(),
        score: Some(0.82),
        real: None,
        synthetic: None,
        real_association: Some(0.4),
        counted: true,
    });

    let counts = |f: &Frame| -> BTreeMap<String, usize> {
        f.class_counts(classes.len())
            .into_iter()
            .zip(classes)
            .map(|(n, c)| (c.to_string(), n))
            .collect()
    };
    let settings = ["real", "real+synthetic", "real+ros", "real+smote"];
    let stat = |rng: &mut SmallRng, m: f64| {
        Stat::new(
            (0..3)
                .map(|_| (m + (rng.random::<f64>() - 0.5) * 0.04).clamp(0.0, 1.0))
                .collect(),
        )
    };
    let mut detectors = Vec::new();
    for (d, detector) in ["random_forest", "gradient_boosting", "mlp"]
        .iter()
        .enumerate()
    {
        let mut results = Vec::new();
        for (s, setting) in settings.iter().enumerate() {
            let per_class: Vec<ClassResult> = classes
                .iter()
                .enumerate()
                .map(|(c, class)| {
                    let base =
                        0.98 - 0.6 * (c as f64 / classes.len() as f64).powf(1.5) - 0.03 * d as f64;
                    let lift = if c > 0 { 0.03 * s as f64 } else { 0.0 };
                    ClassResult {
                        class: class.to_string(),
                        support: 5000 / (c + 1),
                        precision: stat(&mut rng, base + lift),
                        recall: stat(&mut rng, base - 0.02 + lift),
                        f1: stat(&mut rng, base - 0.01 + lift),
                    }
                })
                .collect();
            let mut macro_f1 = Stat::new(vec![
                0.80 + 0.012 * s as f64 - 0.03 * d as f64,
                0.81 + 0.01 * s as f64 - 0.03 * d as f64,
                0.805 + 0.011 * s as f64 - 0.03 * d as f64,
            ]);
            if d == 2 && s == 3 {
                // A setting whose detector failed on every seed.
                macro_f1 = Stat::new(vec![]);
            }
            let rare_f1 = (macro_f1.mean.is_finite())
                .then(|| Stat::new(vec![0.4 + 0.1 * s as f64, 0.42 + 0.1 * s as f64]));
            results.push(SettingResult {
                setting: setting.to_string(),
                macro_f1,
                rare_f1,
                weighted_f1: stat(&mut rng, 0.95),
                accuracy: stat(&mut rng, 0.96),
                per_class,
                train_seconds: 4.2 * (d + 1) as f64,
            });
        }
        detectors.push(DetectorResult {
            detector: detector.to_string(),
            settings: results,
        });
    }

    let alphas: Vec<f64> = (0..=20).map(|k| f64::from(k) / 20.0).collect();
    let report = Report {
        format_version: REPORT_FORMAT_VERSION,
        inputs: Inputs {
            train: DatasetInfo { url: "s3://flows/cic-ids2017/train?x=1&y=<2>".into(), rows: real.rows(), class_counts: counts(&real) },
            test: DatasetInfo { url: "s3://flows/cic-ids2017/test".into(), rows: 20_000, class_counts: counts(&real) },
            synthetic: DatasetInfo { url: "file:///data/synth/run-42".into(), rows: synthetic.rows(), class_counts: counts(&synthetic) },
            augment_only: vec![],
            seeds: 3,
            label_column: "Label".into(),
        },
        verdict: None,
        shape: None,
        trend: Some(f64::NAN),
        columns: col_scores,
        pairs,
        class_matched: Some(ClassMatched { shape: Some(0.91), trend: None, reference_rows: 1200, mix_difference: 0.4, remaining_mix_difference: 0.05 }),
        per_class: classes
            .iter()
            .skip(1)
            .map(|c| ClassFidelity {
                class: c.to_string(),
                train_rows: 40,
                synthetic_rows: 500,
                holdout_rows: 12,
                shape: Some(0.9),
                trend: Some(0.85),
                detection: Some(0.7),
                detection_auc: Some(0.65),
                holdout_shape: Some(0.95),
                holdout_trend: None,
                holdout_detection: Some(0.9),
                holdout_detection_auc: Some(0.55),
                agreement: Some(0.8),
                holdout_agreement: Some(0.9),
                copy_rate: Some(0.0),
                holdout_copy_rate: Some(0.01),
            })
            .collect(),
        skipped,
        alpha_precision: Some(0.912),
        beta_recall: Some(0.443),
        authenticity: Some(0.781),
        quality_curves: Some(QualityCurves {
            alpha_precision: alphas.iter().map(|a| (a * 0.95 + 0.02).min(1.0)).collect(),
            beta_recall: alphas.iter().map(|a| a * a * 0.8).collect(),
            alphas,
            real_rows: 2000,
            synthetic_rows: 1500,
        }),
        detection: Some(Detection { score: 0.62, auc_per_fold: vec![0.69, 0.68, 0.70], folds: 3, real_rows: 2000, synthetic_rows: 1500 }),
        dcr: Some(Dcr {
            share_closer_to_train: 0.512,
            score: 0.976,
            median_dcr_train: 0.153,
            median_dcr_holdout: 0.161,
            synthetic_rows: 1500,
            reference_rows: 2000,
            holdout: "20% of the training rows held out from the generator".into(),
        }),
        validity: Validity {
            share_valid_rows: 0.874,
            real_share_valid_rows: 1.0,
            constraints: vec![
                Constraint { kind: "non_negative".into(), columns: vec!["Flow Duration".into()], description: "`Flow Duration` >= 0".into(), synthetic_share: 1.0, real_share: 1.0 },
                Constraint { kind: "integer".into(), columns: vec!["Total Fwd Packets".into()], description: "`Total Fwd Packets` is an integer".into(), synthetic_share: 0.93, real_share: 1.0 },
                Constraint { kind: "ordered".into(), columns: vec!["Fwd Packet Length Min".into(), "Fwd Packet Length Mean".into()], description: "`Fwd Packet Length Min` <= `Fwd Packet Length Mean`".into(), synthetic_share: 0.951, real_share: 1.0 },
                Constraint { kind: "known_category".into(), columns: vec![NASTY.into()], description: format!("`{NASTY}` is a known category"), synthetic_share: f64::NAN, real_share: 1.0 },
            ],
        },
        downstream: Some(Downstream {
            settings: settings.iter().map(|s| s.to_string()).collect(),
            added_per_class: classes.iter().skip(1).map(|c| (c.to_string(), 500)).collect(),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            rare_classes: classes.iter().skip(1).map(|c| c.to_string()).collect(),
            detectors,
            config: [("random_forest".to_string(), "100 trees, max_depth None".to_string())].into_iter().collect(),
        }),
        image_view: Some(ImageViewReport {
            side: 3,
            pixels: (0..9).map(|p| (p < 8).then(|| format!("feature {p}"))).collect(),
            classes: classes
                .iter()
                .skip(1)
                .map(|c| ClassImages {
                    class: c.to_string(),
                    real: Some((0..9).map(|p| (p < 8).then(|| f64::from(p) / 2.0 - 2.0)).collect()),
                    synthetic: (0..9).map(|p| (p < 8).then(|| 1.0 - f64::from(p) / 4.0)).collect(),
                    difference: Some(0.4),
                })
                .collect(),
        }),
        notes: vec![
            "alpha-precision / beta-recall computed on 2000 real and 1500 synthetic rows (subsampled)".into(),
            format!("column `{NASTY}` looked odd"),
        ],
        timings: [("fidelity".to_string(), 1.25), ("downstream".to_string(), 84.0)].into_iter().collect(),
    };
    Fixture {
        report,
        schema,
        real,
        synthetic,
    }
}

fn small() -> Fixture {
    fixture(15, 400, &["normal", "dos", "probe", "r2l", "u2r"])
}

/// Every `src="..."` value in the page.
fn image_sources(html: &str) -> Vec<String> {
    html.split("src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// Decodes a PNG completely; returns its size, checked against the IHDR header bytes.
fn decode_png(name: &str, bytes: &[u8]) -> (u32, u32) {
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{name}: not a PNG signature"
    );
    assert_eq!(
        &bytes[12..16],
        b"IHDR",
        "{name}: IHDR is not the first chunk"
    );
    let ihdr_w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let ihdr_h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    let mut reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    assert_eq!((info.width, info.height), (ihdr_w, ihdr_h), "{name}");
    assert!(
        info.width >= 100 && info.height >= 100,
        "{name}: {}x{}",
        info.width,
        info.height
    );
    // Not blank: some pixel differs from the white background.
    assert!(buf.iter().any(|&b| b < 200), "{name}: the image is blank");
    (info.width, info.height)
}

/// The checks every rendered page must pass, with or without a font.
fn check_files(files: &[(String, Vec<u8>)]) -> String {
    assert_eq!(files[0].0, HTML_FILE);
    let html = String::from_utf8(files[0].1.clone()).expect("UTF-8 page");
    let plots: BTreeMap<&str, &[u8]> = files[1..]
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    assert_eq!(plots.len(), files.len() - 1, "duplicate file names");
    let sources = image_sources(&html);
    assert!(!sources.is_empty());
    for src in &sources {
        let bytes = plots
            .get(src.as_str())
            .unwrap_or_else(|| panic!("<img src={src}> has no file"));
        decode_png(src, bytes);
    }
    let referenced: HashSet<&str> = sources.iter().map(String::as_str).collect();
    for path in plots.keys() {
        assert!(referenced.contains(path), "{path} is not shown on the page");
        let name = path
            .strip_prefix("plots/")
            .and_then(|n| n.strip_suffix(".png"))
            .expect("plots/*.png");
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "unsafe file name {path}"
        );
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not load network resources"
    );
    assert!(!html.contains("<script"));
    html
}

#[test]
fn every_image_on_the_page_is_a_returned_png() {
    let f = small();
    let files = render(&f.report, &f.schema, &f.real, &f.synthetic).expect("render");
    let html = check_files(&files);
    // One plot per column, the heatmap, the quality curves, the image view, one F1 plot per
    // detector.
    assert_eq!(files.len(), 1 + f.schema.columns.len() + 1 + 1 + 1 + 3);
    assert!(html.contains("plots/correlation-difference.png"));
    assert!(html.contains("plots/image-view.png") && html.contains("id=image-view"));
    assert!(html.contains("plots/f1-000-random-forest.png"));
}

#[test]
fn dataset_strings_are_escaped() {
    let f = small();
    let files = render_with(&f.report, &f.schema, &f.real, &f.synthetic, None).expect("render");
    let html = String::from_utf8(files[0].1.clone()).expect("UTF-8");
    assert!(!html.contains(NASTY), "raw column name in the page");
    assert!(html.contains("&lt;b&gt;&amp;&quot;x&quot;"));
    // URLs are escaped too.
    assert!(html.contains("train?x=1&amp;y=&lt;2&gt;"));
}

#[test]
fn file_names_are_sanitized_and_unique() {
    assert_eq!(slug("Flow Bytes/s"), "flow-bytes-s");
    assert_eq!(slug("../../etc/passwd"), "etc-passwd");
    assert_eq!(slug(NASTY), "b-x");
    assert_eq!(slug("///"), "");
    assert_eq!(slug(&"x".repeat(100)).len(), 40);
    assert_eq!(plot_path("col", 14, "///"), "plots/col-014.png");
    let f = small();
    let files = render_with(&f.report, &f.schema, &f.real, &f.synthetic, None).expect("render");
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    // `Flow Bytes/s` and `Flow Bytes s` share a slug but not a file.
    assert!(
        names.contains(&"plots/col-005-flow-bytes-s.png"),
        "{names:?}"
    );
    assert!(
        names.contains(&"plots/col-006-flow-bytes-s.png"),
        "{names:?}"
    );
    assert!(names.contains(&"plots/col-013-b-x.png"), "{names:?}");
}

#[test]
fn plots_render_without_a_font() {
    let f = small();
    let files = render_with(&f.report, &f.schema, &f.real, &f.synthetic, None)
        .expect("render without font");
    let html = check_files(&files);
    assert!(html.contains("The plots have no text"));
    assert!(html.contains(font::FONT_ENV));
}

/// Guards the test above: plotters' default family is never registered, so text drawn without
/// our typeface fails instead of passing by accident.
#[test]
fn text_in_the_default_family_fails() {
    let _ = font::system();
    let mut buf = vec![0u8; 30 * 30 * 3];
    let root = BitMapBackend::with_buffer(&mut buf, (30, 30)).into_drawing_area();
    let drawn = root.draw(&Text::new("x", (1, 1), ("sans-serif", 12.0).into_font()));
    assert!(drawn.is_err());
}

#[test]
fn missing_values_read_n_a() {
    let f = small();
    let files = render_with(&f.report, &f.schema, &f.real, &f.synthetic, None).expect("render");
    let html = String::from_utf8(files[0].1.clone()).expect("UTF-8");
    // shape = None, trend = NaN, the MLP's real+smote macro-F1 has no seeds, a constraint share is NaN.
    assert!(html.contains("<td>Shape</td><td class=value><span class=dot></span>n/a</td>"));
    assert!(html.contains("<td>Trend</td><td class=value><span class=dot></span>n/a</td>"));
    assert!(
        html.contains("<td class=\"num\">n/a</td>"),
        "n/a macro-F1 cell"
    );
    assert!(
        html.contains("<span class=dot></span>n/a</td><td class=num>1.000</td>"),
        "NaN constraint share"
    );
    assert!(!html.contains("NaN") && !html.contains("null"));
}

#[test]
fn empty_frames_and_a_bare_report_still_render() {
    let mut f = small();
    f.report.downstream = None;
    f.report.detection = None;
    f.report.dcr = None;
    f.report.quality_curves = None;
    f.report.pairs.clear();
    f.report.image_view = None;
    let empty = Frame::empty(&f.schema);
    let files = render_with(&f.report, &f.schema, &empty, &empty, None).expect("render");
    let html = check_files(&files);
    assert_eq!(files.len(), 1 + f.schema.columns.len());
    assert!(html.contains("Downstream detection was not run"));
}

use plotters::prelude::{BitMapBackend, IntoDrawingArea, IntoFont, Text};

/// CIC-IDS-sized page (80 numeric columns, 15 classes). With `FLOWSYNTH_RENDER_DEMO=<dir>` the
/// files are written there, for a look in a browser.
#[test]
fn cic_sized_report_renders() {
    let classes = [
        "BENIGN",
        "DoS Hulk",
        "PortScan",
        "DDoS",
        "DoS GoldenEye",
        "FTP-Patator",
        "SSH-Patator",
        "DoS slowloris",
        "DoS Slowhttptest",
        "Bot",
        "Web Attack – Brute Force",
        "Web Attack – XSS",
        "Infiltration",
        "Web Attack – Sql Injection",
        "Heartbleed",
    ];
    let f = fixture(78, 3000, &classes);
    let files = render(&f.report, &f.schema, &f.real, &f.synthetic).expect("render");
    check_files(&files);
    if let Some(dir) = std::env::var_os("FLOWSYNTH_RENDER_DEMO") {
        let dir = std::path::PathBuf::from(dir);
        let no_font =
            render_with(&f.report, &f.schema, &f.real, &f.synthetic, None).expect("render");
        for (dir, files) in [(dir.clone(), &files), (dir.join("no-font"), &no_font)] {
            std::fs::create_dir_all(dir.join("plots")).expect("demo dir");
            for (path, bytes) in files {
                std::fs::write(dir.join(path), bytes).expect("write demo file");
            }
        }
    }
}
