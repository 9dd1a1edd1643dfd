//! Metric values checked against independent implementations on one small deterministic data
//! set. Provenance: `tests/reference/sdmetrics_reference.py`, run with sdmetrics 0.32.0, numpy
//! 2.4.6, scikit-learn 1.9.1 (Python 3.11) on 2026-11-23. The column and pair metrics come from
//! SDMetrics itself (the single metrics and its QualityReport); alpha-precision and beta-recall
//! from a numpy + scikit-learn transcription of synthcity's `AlphaPrecision.metrics` (naive
//! variant), authenticity with the paper's definition.

use flowsynth_eval::fidelity;
use flowsynth_eval::frame::{ColumnSpec, Encoder, Frame, Kind, Scaling, Schema, Values};
use flowsynth_eval::quality;

const CATS: [&str; 3] = ["a", "b", "c"];

/// The same formulas as `frame()` in the Python script.
fn frame(n: usize, mx: usize, my: usize, mc: usize, shift: f64) -> Frame {
    let x: Vec<f64> = (0..n)
        .map(|i| ((i * mx) % 101) as f64 / 10.0 + shift)
        .collect();
    let y: Vec<f64> = (0..n).map(|i| x[i] * 0.5 + ((i * my) % 7) as f64).collect();
    let c: Vec<u32> = (0..n)
        .map(|i| if i % 5 != 0 { ((i * mc) % 3) as u32 } else { 0 })
        .collect();
    Frame {
        columns: vec![
            Values::Numeric(x),
            Values::Numeric(y),
            Values::Categorical(c),
        ],
        labels: vec![0; n],
    }
}

fn schema() -> Schema {
    let num = |n: &str| ColumnSpec::numeric(n, false);
    Schema {
        columns: vec![
            num("x"),
            num("y"),
            ColumnSpec {
                name: "c".into(),
                kind: Kind::Categorical {
                    vocabulary: CATS.iter().map(|s| s.to_string()).collect(),
                },
            },
        ],
        label: "label".into(),
        classes: vec!["all".into()],
    }
}

fn assert_close(name: &str, got: Option<f64>, want: f64) {
    let got = got.unwrap_or(f64::NAN);
    assert!(
        (got - want).abs() < 1e-9,
        "{name}: got {got}, reference {want}"
    );
}

/// The column and pair metrics on their own, as `sdmetrics.single_column` /
/// `sdmetrics.column_pairs` compute them (ContingencySimilarity with `continuous_column_names`
/// bins the numeric column over the real range).
#[test]
fn fidelity_metrics_match_sdmetrics() {
    let real = frame(40, 37, 13, 7, 0.0);
    let syn = frame(30, 41, 11, 5, 0.73);
    let num = |f: &Frame, j: usize| f.columns[j].numeric().to_vec();
    let codes = |f: &Frame| f.columns[2].codes().to_vec();
    assert_close(
        "KSComplement x",
        Some(fidelity::ks_complement(&num(&real, 0), &num(&syn, 0))),
        0.9,
    );
    assert_close(
        "KSComplement y",
        Some(fidelity::ks_complement(&num(&real, 1), &num(&syn, 1))),
        0.8666666666666667,
    );
    assert_close(
        "TVComplement c",
        Some(fidelity::tv_complement(&codes(&real), &codes(&syn), 3)),
        0.9833333333333334,
    );
    let r = |f: &Frame| fidelity::pearson(&num(f, 0), &num(f, 1));
    assert_close(
        "CorrelationSimilarity x,y",
        Some(fidelity::correlation_similarity(r(&real), r(&syn))),
        0.9856607491509609,
    );
    // Real-range bins, outer bins open: sdmetrics' discretize_column.
    let real_bins = |col: usize| {
        let edges = fidelity::bin_edges(&num(&real, col), fidelity::CONTINGENCY_BINS);
        let inner = &edges[1..fidelity::CONTINGENCY_BINS];
        let code = |v: f64| inner.partition_point(|&e| e <= v) as u32;
        (
            num(&real, col).iter().map(|&v| code(v)).collect::<Vec<_>>(),
            num(&syn, col).iter().map(|&v| code(v)).collect::<Vec<_>>(),
        )
    };
    for (col, name, want) in [(0, "x", 0.6833333333333333), (1, "y", 0.7166666666666667)] {
        let (r, s) = real_bins(col);
        let got = fidelity::contingency_similarity(&r, &codes(&real), &s, &codes(&syn), 10, 3);
        assert_close(&format!("ContingencySimilarity {name},c"), Some(got), want);
    }
}

/// The same frames through `fidelity::evaluate`, which follows SDMetrics' QualityReport: each
/// side binned over its own range, and only pairs with enough real dependence in the trend.
#[test]
fn evaluate_matches_sdmetrics_quality_report() {
    let real = frame(40, 37, 13, 7, 0.0);
    let syn = frame(30, 41, 11, 5, 0.73);
    let f = fidelity::evaluate(&schema(), &real, &syn);
    let pair = |a: &str, b: &str| {
        f.pairs
            .iter()
            .find(|p| p.a == a && p.b == b)
            .unwrap_or_else(|| panic!("no pair {a},{b}"))
    };
    assert_close(
        "CorrelationSimilarity x,y",
        pair("x", "y").score,
        0.9856607491509609,
    );
    assert_close(
        "ContingencySimilarity x,c",
        pair("x", "c").score,
        0.7083333333333333,
    );
    assert_close("ContingencySimilarity y,c", pair("y", "c").score, 0.55);
    assert_close(
        "Cramer's V x,c",
        pair("x", "c").real_association,
        0.39678231329877905,
    );
    assert_close(
        "Cramer's V y,c",
        pair("y", "c").real_association,
        0.49764997979739184,
    );
    assert!(f.pairs.iter().all(|p| p.counted));
    assert_close("shape", f.shape, 0.9166666666666666);
    assert_close("trend", f.trend, 0.7479980274947646);
}

#[test]
fn alpha_beta_authenticity_match_synthcity_transcription() {
    let real = frame(40, 37, 13, 7, 0.0);
    let syn = frame(30, 41, 11, 5, 0.73);
    let enc = Encoder::fit(&schema(), &real, Scaling::MinMax);
    let q = quality::alpha_beta_authenticity(&enc.encode(&real), &enc.encode(&syn), 2);
    // Features are f32 here and f64 in numpy. Every figure is a share of counted rows, so they
    // agree exactly unless a distance ties a radius or a neighbour gap within rounding; the data
    // are chosen without such ties (a shift of 0.7 instead of 0.73 makes one synthetic row sit
    // exactly at its real neighbour's gap, and f32 and f64 then break the tie differently).
    assert_close(
        "alpha-precision",
        Some(q.alpha_precision),
        0.9532567049808429,
    );
    assert_close("beta-recall", Some(q.beta_recall), 0.7416666666666667);
    assert_close("authenticity", Some(q.authenticity), 0.13333333333333333);
}
