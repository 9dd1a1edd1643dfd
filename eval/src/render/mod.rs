//! `report.html` and its PNG plots, rendered from a [`Report`] plus the raw real and synthetic
//! columns (the report holds scores, not distributions).
//!
//! Everything is produced in memory and handed back as `(relative path, bytes)` so the caller can
//! write to a local directory or an object store alike. The page is one self-contained HTML file
//! (inline CSS, no scripts, no network resources) that links its images relatively as
//! `plots/<name>.png`; dataset-derived strings are HTML-escaped, and file names derived from
//! column or detector names are reduced to `[a-z0-9-]` and prefixed with an index, so names with
//! spaces, slashes or only punctuation (`Flow Bytes/s`, `Flow Bytes s`) neither escape `plots/`
//! nor collide.

pub mod font;
mod html;
pub mod plots;

use std::collections::HashMap;

use crate::error::Result;
use crate::frame::{Frame, Kind, Schema};
use crate::report::Report;
use font::Typeface;
use plots::{ClassBars, CorrelationDiff};

/// Name of the page among the returned files.
pub const HTML_FILE: &str = "report.html";

/// Renders `report.html` and the PNG plots. Returns `(relative path, bytes)` for each file:
/// `report.html` first, then `plots/<name>.png`; the caller writes them.
///
/// `real` holds the real training rows and `synthetic` the synthetic rows, both coded against
/// `schema`. Plot text uses the font [`font::system`] finds; without one the plots are drawn
/// without text and the page says how to fix that (`FLOWSYNTH_FONT`).
pub fn render(
    report: &Report,
    schema: &Schema,
    real: &Frame,
    synthetic: &Frame,
) -> Result<Vec<(String, Vec<u8>)>> {
    render_with(report, schema, real, synthetic, font::system())
}

/// [`render`] with an explicit font choice (`None` = no text in the plots).
pub fn render_with(
    report: &Report,
    schema: &Schema,
    real: &Frame,
    synthetic: &Frame,
    text: Option<Typeface>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut page = html::Page {
        report,
        font_found: text.is_some(),
        columns: Vec::new(),
        correlation: None,
        quality: None,
        image_view: None,
        f1: Vec::new(),
    };

    let scores: HashMap<&str, &crate::report::ColumnScore> = report
        .columns
        .iter()
        .map(|c| (c.column.as_str(), c))
        .collect();
    let skipped: HashMap<&str, &str> = report
        .skipped
        .iter()
        .map(|s| (s.column.as_str(), s.reason.as_str()))
        .collect();
    for (i, spec) in schema.columns.iter().enumerate() {
        let score = scores.get(spec.name.as_str());
        let metric = score.map(|s| s.metric.clone());
        let value = score.and_then(|s| s.score).filter(|v| v.is_finite());
        let title = format!(
            "{} — {} {}",
            spec.name,
            metric.as_deref().unwrap_or("score"),
            html::fmt_opt(value)
        );
        let path = plot_path("col", i, &spec.name);
        let real_values = real.columns.get(i);
        let synthetic_values = synthetic.columns.get(i);
        let (bytes, axis, kind) = match &spec.kind {
            Kind::Numeric { .. } => {
                let (bytes, axis) = plots::numeric_column(
                    &path,
                    &title,
                    real_values.map_or(&[][..], |v| v.numeric()),
                    synthetic_values.map_or(&[][..], |v| v.numeric()),
                    text,
                )?;
                (bytes, axis, "numeric")
            }
            Kind::Categorical { vocabulary } => {
                let shares = plots::category_shares(
                    vocabulary,
                    real_values.map_or(&[][..], |v| v.codes()),
                    synthetic_values.map_or(&[][..], |v| v.codes()),
                    plots::TOP_CATEGORIES,
                );
                (
                    plots::categorical_column(&path, &title, shares.as_ref(), text)?,
                    None,
                    "categorical",
                )
            }
        };
        page.columns.push(html::ColumnFigure {
            name: spec.name.clone(),
            kind,
            metric,
            score: value,
            file: path.clone(),
            axis,
            skipped: skipped.get(spec.name.as_str()).map(|r| r.to_string()),
        });
        files.push((path, bytes));
    }

    if let Some(diff) = correlation_diff(report, schema) {
        let path = "plots/correlation-difference.png".to_string();
        files.push((
            path.clone(),
            plots::correlation_heatmap(&path, &diff, text)?,
        ));
        page.correlation = Some(html::Heatmap {
            file: path,
            scale_top: plots::heat_top(&diff),
            names: diff.names,
        });
    }

    if let Some(q) = &report.quality_curves
        && !q.alphas.is_empty()
    {
        let path = "plots/quality-curves.png".to_string();
        let bytes =
            plots::quality_curves(&path, &q.alphas, &q.alpha_precision, &q.beta_recall, text)?;
        files.push((path.clone(), bytes));
        page.quality = Some(path);
    }

    if let Some(view) = report.image_view.as_ref().filter(|v| !v.classes.is_empty()) {
        let path = "plots/image-view.png".to_string();
        files.push((path.clone(), plots::image_view(&path, view, text)?));
        page.image_view = Some(path);
    }

    if let Some(d) = &report.downstream {
        for (i, detector) in d.detectors.iter().enumerate() {
            let bars = class_bars(detector, &d.classes);
            let path = plot_path("f1", i, &detector.detector);
            files.push((
                path.clone(),
                plots::class_f1(&path, &bars, report.inputs.seeds, text)?,
            ));
            page.f1.push((detector.detector.clone(), path));
        }
    }

    files.insert(0, (HTML_FILE.to_string(), page.render().into_bytes()));
    Ok(files)
}

/// `plots/<prefix>-<index>-<slug>.png`. The index keeps names unique when two slugs agree; the
/// slug keeps them readable.
fn plot_path(prefix: &str, index: usize, name: &str) -> String {
    let slug = slug(name);
    if slug.is_empty() {
        format!("plots/{prefix}-{index:03}.png")
    } else {
        format!("plots/{prefix}-{index:03}-{slug}.png")
    }
}

/// Lower-case ASCII letters and digits of `name`, every other run of characters as one `-`, at
/// most 40 characters, no leading or trailing `-`: safe in any file system and URL.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if out.len() == 40 {
                break;
            }
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// |r_real − r_synthetic| over the numeric columns that have at least one scored
/// `CorrelationSimilarity` pair, in schema order. `None` with fewer than two such columns.
fn correlation_diff(report: &Report, schema: &Schema) -> Option<CorrelationDiff> {
    let scored: Vec<(&str, &str, f64)> = report
        .pairs
        .iter()
        .filter(|p| p.metric == "CorrelationSimilarity")
        .filter_map(|p| match (p.real, p.synthetic) {
            (Some(r), Some(s)) if r.is_finite() && s.is_finite() => {
                Some((p.a.as_str(), p.b.as_str(), (r - s).abs()))
            }
            _ => None,
        })
        .collect();
    let used = |name: &str| scored.iter().any(|(a, b, _)| *a == name || *b == name);
    // Schema order first; pairs naming columns the schema lacks still get drawn, after those.
    // Each name once, so a duplicated column name cannot leave an empty row.
    let mut names: Vec<String> = Vec::new();
    let schema_names = schema
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| used(n));
    let pair_names = scored.iter().flat_map(|(a, b, _)| [*a, *b]);
    for n in schema_names.chain(pair_names) {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    if names.len() < 2 {
        return None;
    }
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let n = names.len();
    let mut diff = vec![None; n * n];
    for (a, b, d) in &scored {
        if let (Some(&i), Some(&j)) = (index.get(a), index.get(b)) {
            diff[i * n + j] = Some(*d);
            diff[j * n + i] = Some(*d);
        }
    }
    Some(CorrelationDiff { names, diff })
}

fn class_bars(detector: &crate::report::DetectorResult, classes: &[String]) -> ClassBars {
    ClassBars {
        detector: detector.detector.clone(),
        settings: detector
            .settings
            .iter()
            .map(|s| s.setting.clone())
            .collect(),
        classes: classes.to_vec(),
        f1: detector
            .settings
            .iter()
            .map(|s| {
                classes
                    .iter()
                    .map(|c| {
                        s.per_class
                            .iter()
                            .find(|r| &r.class == c)
                            .map(|r| (r.f1.mean, r.f1.std))
                    })
                    .collect()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
