//! The page itself: one HTML string with inline CSS. Every string that comes from a dataset or a
//! URL goes through [`esc`]; numbers go through [`fmt_opt`]/[`fmt`], which print "n/a" for
//! missing and non-finite values so a reader never sees `NaN` or `null`.

use std::collections::BTreeMap;

use super::font::FONT_ENV;
use super::plots::{self, Axis, REAL_HEX, SYNTHETIC_HEX};
use crate::report::{DatasetInfo, Downstream, Report, SettingResult, Stat};

/// One column's plot and score, as the page lists it.
pub(crate) struct ColumnFigure {
    pub name: String,
    pub kind: &'static str,
    pub metric: Option<String>,
    pub score: Option<f64>,
    /// Relative path of the PNG.
    pub file: String,
    /// x-axis layout of a numeric histogram (`None` for categoricals and empty columns).
    pub axis: Option<Axis>,
    /// Why the column is left out of `shape`, if it is.
    pub skipped: Option<String>,
}

/// The correlation-difference heatmap and what the page says about it.
pub(crate) struct Heatmap {
    pub file: String,
    /// Difference at the dark end of the colour scale.
    pub scale_top: f64,
    /// Row (and column) order, listed on the page when the plot has no text.
    pub names: Vec<String>,
}

/// Everything the page shows: the report plus the plots rendered for it.
pub(crate) struct Page<'a> {
    pub report: &'a Report,
    pub font_found: bool,
    pub columns: Vec<ColumnFigure>,
    pub correlation: Option<Heatmap>,
    pub quality: Option<String>,
    /// The image-view figure (multimodal samples).
    pub image_view: Option<String>,
    /// (detector, relative path of its per-class F1 plot).
    pub f1: Vec<(String, String)>,
}

/// Escapes `s` for HTML text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Three decimals, or "n/a" for NaN/±inf.
pub(crate) fn fmt(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "n/a".to_string()
    }
}

/// [`fmt`], with `None` as "n/a".
pub(crate) fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), fmt)
}

/// "mean ± std"; the std is left out when it is not finite (a single seed gives 0).
fn fmt_stat(s: &Stat) -> String {
    if !s.mean.is_finite() {
        return "n/a".to_string();
    }
    if s.std.is_finite() {
        format!("{:.3} <span class=sd>± {:.3}</span>", s.mean, s.std)
    } else {
        format!("{:.3}", s.mean)
    }
}

/// [`fmt_stat`] without spaces, for the wide per-class table.
fn fmt_stat_tight(s: &Stat) -> String {
    if !s.mean.is_finite() {
        return "n/a".to_string();
    }
    if s.std.is_finite() {
        format!("{:.3}<span class=sd>±{:.3}</span>", s.mean, s.std)
    } else {
        format!("{:.3}", s.mean)
    }
}

/// Traffic-light class for a colour hint. The thresholds are reading aids, not verdicts.
#[derive(Clone, Copy)]
enum Grade {
    Good,
    Fair,
    Poor,
    None,
}

impl Grade {
    /// For scores where 1 is best.
    fn high(v: Option<f64>, good: f64, fair: f64) -> Grade {
        match v {
            Some(v) if v.is_finite() && v >= good => Grade::Good,
            Some(v) if v.is_finite() && v >= fair => Grade::Fair,
            Some(v) if v.is_finite() => Grade::Poor,
            _ => Grade::None,
        }
    }

    /// For the DCR share: at or below 0.5 (no closer to training than to holdout rows) is fine.
    fn dcr(v: Option<f64>) -> Grade {
        match v {
            Some(v) if v.is_finite() && v <= 0.55 => Grade::Good,
            Some(v) if v.is_finite() && v <= 0.65 => Grade::Fair,
            Some(v) if v.is_finite() => Grade::Poor,
            _ => Grade::None,
        }
    }

    fn class(self) -> &'static str {
        match self {
            Grade::Good => "good",
            Grade::Fair => "fair",
            Grade::Poor => "poor",
            Grade::None => "na",
        }
    }
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:#1f2328;margin:0;background:#fff;line-height:1.4}
main{max-width:1500px;margin:0 auto;padding:12px 28px 40px}
h1{font-size:1.6em;margin:.4em 0 .1em}
h2{font-size:1.25em;margin:1.6em 0 .5em;padding-bottom:.2em;border-bottom:2px solid #d0d7de}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.sub{color:#57606a;margin:0 0 .6em;word-break:break-all}
nav{margin:.4em 0 1em;font-size:.95em}
nav a{margin-right:1em;color:#0969da;text-decoration:none}
table{border-collapse:collapse;margin:.3em 0 .8em;font-size:.92em}
th,td{padding:4px 10px;border-bottom:1px solid #e1e4e8;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.compact{font-size:.82em}
table.compact td,table.compact th{padding:3px 6px}
table.perclass{font-size:.78em}
table.perclass td,table.perclass th{padding:2px 5px}
table.perclass .g{border-left:1px solid #d0d7de}
td.name{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
.headline td.value{font-size:1.15em;font-weight:600;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.dot{display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.4em;vertical-align:baseline}
.good .dot,.dot.good{background:#2da44e}.fair .dot,.dot.fair{background:#d4a72c}.poor .dot,.dot.poor{background:#cf222e}.na .dot,.dot.na{background:#afb8c1}
.na{color:#8c959f}
.sd{color:#57606a;font-weight:normal;font-size:.9em}
.best{font-weight:700}
.up{color:#1a7f37}.down{color:#cf222e}
.delta{font-size:.85em;margin-left:.3em}
.box{border:1px solid #d4a72c;background:#fff8c5;padding:8px 12px;border-radius:6px;margin:.6em 0}
.box.good{border-color:#2da44e;background:#dafbe1}.box.bad{border-color:#cf222e;background:#ffebe9}
.key{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em 0 1em;border-radius:2px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:14px 18px}
figure{margin:0}
figure img{width:100%;max-width:480px;height:auto;border:1px solid #eaeef2;display:block}
figcaption{font-size:.85em;color:#424a53;margin-top:2px;word-break:break-word}
img.wide{max-width:100%;height:auto;border:1px solid #eaeef2}
details{margin:.4em 0 .8em}
summary{cursor:pointer;color:#0969da;font-weight:600}
ul.notes li{margin:.2em 0}
code{background:#f6f8fa;padding:0 .25em;border-radius:3px}
.small{font-size:.85em;color:#57606a}
"#;

impl Page<'_> {
    pub(crate) fn render(&self) -> String {
        let r = self.report;
        let mut out = String::with_capacity(64 * 1024);
        out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        out.push_str(&format!(
            "<title>flowsynth eval — {}</title>\n<style>{}</style>\n</head>\n<body>\n<main>\n",
            esc(&r.inputs.synthetic.url),
            CSS
        ));
        out.push_str("<h1>flowsynth eval report</h1>\n");
        out.push_str(&format!(
            "<p class=sub>Synthetic data <code>{}</code> against real training data <code>{}</code> \
             (downstream tests on <code>{}</code>)</p>\n",
            esc(&r.inputs.synthetic.url),
            esc(&r.inputs.train.url),
            esc(&r.inputs.test.url)
        ));
        out.push_str(
            "<nav><a href=\"#summary\">Summary</a><a href=\"#classes\">Per class</a><a href=\"#inputs\">Inputs</a>\
             <a href=\"#columns\">Columns</a><a href=\"#pairs\">Pairs</a>\
             <a href=\"#quality\">Quality &amp; privacy</a><a href=\"#validity\">Validity</a>\
             <a href=\"#downstream\">Downstream</a><a href=\"#run\">Run</a></nav>\n",
        );
        if !self.font_found {
            out.push_str(&format!(
                "<p class=box><b>The plots have no text:</b> no TrueType font was found on the host \
                 that rendered this report. Set <code>{FONT_ENV}</code> to a <code>.ttf</code> file \
                 (e.g. DejaVuSans.ttf) and run <code>flowsynth eval</code> again. Column names and \
                 colours are given below each plot.</p>\n"
            ));
        }
        self.verdict(&mut out);
        self.summary(&mut out);
        self.per_class(&mut out);
        self.image_view(&mut out);
        self.inputs(&mut out);
        self.columns(&mut out);
        self.pairs(&mut out);
        self.quality(&mut out);
        self.validity(&mut out);
        self.downstream(&mut out);
        self.run(&mut out);
        out.push_str("</main>\n</body>\n</html>\n");
        out
    }

    fn summary(&self, out: &mut String) {
        let r = self.report;
        out.push_str("<section id=summary>\n<h2>Summary</h2>\n");
        out.push_str("<table class=headline>\n<tr><th>Metric</th><th class=num>Value</th><th>Meaning</th></tr>\n");
        let scored_columns = r
            .columns
            .iter()
            .filter(|c| c.score.is_some_and(f64::is_finite))
            .count();
        let scored_pairs = r
            .pairs
            .iter()
            .filter(|p| p.score.is_some_and(f64::is_finite))
            .count();
        let detection = r.detection.as_ref();
        let mean_auc = detection.and_then(|d| {
            (!d.auc_per_fold.is_empty())
                .then(|| d.auc_per_fold.iter().sum::<f64>() / d.auc_per_fold.len() as f64)
        });
        let v = &r.validity;
        let dcr = r.dcr.as_ref();
        let rows: Vec<(&str, Option<f64>, Grade, String)> = vec![
            (
                "Shape",
                r.shape,
                Grade::high(r.shape, 0.9, 0.75),
                format!(
                    "mean column score (KSComplement / TVComplement) over {scored_columns} columns; 1 = identical marginals"
                ),
            ),
            (
                "Trend",
                r.trend,
                Grade::high(r.trend, 0.9, 0.75),
                format!(
                    "mean pair score (CorrelationSimilarity / ContingencySimilarity) over {scored_pairs} pairs; 1 = identical dependence"
                ),
            ),
            (
                "Detection",
                detection.map(|d| d.score),
                Grade::high(detection.map(|d| d.score), 0.8, 0.5),
                match detection {
                    Some(d) => format!(
                        "1 = a logistic classifier cannot tell synthetic from real rows (mean AUC {}, {} folds)",
                        fmt_opt(mean_auc),
                        d.folds
                    ),
                    None => "classifier two-sample test (not computed)".to_string(),
                },
            ),
            (
                "Validity",
                Some(v.share_valid_rows),
                Grade::high(Some(v.share_valid_rows), 0.99, 0.9),
                format!(
                    "share of synthetic rows satisfying all {} domain constraints (real rows: {})",
                    v.constraints.len(),
                    fmt(v.real_share_valid_rows)
                ),
            ),
            (
                "α-precision",
                r.alpha_precision,
                Grade::high(r.alpha_precision, 0.9, 0.75),
                "synthetic rows fall where real rows are typical (1 = best)".to_string(),
            ),
            (
                "β-recall",
                r.beta_recall,
                Grade::high(r.beta_recall, 0.9, 0.75),
                "synthetic rows cover the variety of the real rows (1 = best)".to_string(),
            ),
            (
                "Authenticity",
                r.authenticity,
                Grade::high(r.authenticity, 0.9, 0.75),
                "share of synthetic rows that are not near-copies of a training row".to_string(),
            ),
            (
                "DCR share",
                dcr.map(|d| d.share_closer_to_train),
                Grade::dcr(dcr.map(|d| d.share_closer_to_train)),
                match dcr {
                    Some(d) => format!(
                        "share of synthetic rows closer to a training row than to a holdout row; ≈0.5 = no memorisation (protection score {})",
                        fmt(d.score)
                    ),
                    None => "distance to closest record (not computed)".to_string(),
                },
            ),
        ];
        for (name, value, grade, meaning) in rows {
            out.push_str(&format!(
                "<tr class={}><td>{name}</td><td class=value><span class=dot></span>{}</td><td>{}</td></tr>\n",
                grade.class(),
                fmt_opt(value),
                esc(&meaning)
            ));
        }
        out.push_str("</table>\n");
        out.push_str(
            "<p class=small>Dots are reading aids: green ≥ 0.9 (validity ≥ 0.99, detection ≥ 0.8, \
             DCR share ≤ 0.55), amber ≥ 0.75 (0.9, 0.5, ≤ 0.65), red below, grey = not available.</p>\n",
        );

        if let Some(d) = &r.downstream {
            if !d.rare_classes.is_empty() {
                f1_table(
                    out,
                    d,
                    &format!(
                        "Rare-class F1: mean test F1 of the augmented classes ({}), mean ± std over {} seeds",
                        d.rare_classes.join(", "),
                        r.inputs.seeds
                    ),
                    |s| s.rare_f1.as_ref(),
                );
            }
            f1_table(
                out,
                d,
                &format!(
                    "Macro-F1 over all classes of the real test split (mean ± std over {} seeds)",
                    r.inputs.seeds
                ),
                |s| Some(&s.macro_f1),
            );
            out.push_str("<p class=small>Bold: best setting per detector; small numbers: change against the <code>real</code> baseline.</p>\n");
        } else {
            out.push_str("<p class=na>Downstream detection was not run.</p>\n");
        }
        out.push_str("</section>\n");
    }

    /// The verdict in plain words, above everything else.
    fn verdict(&self, out: &mut String) {
        let Some(v) = &self.report.verdict else {
            return;
        };
        let class = if v.helps { "box good" } else { "box bad" };
        out.push_str(&format!("<div class=\"{class}\" id=verdict>\n"));
        if let Some((advice, details)) = v.lines.split_last() {
            out.push_str(&format!("<p><b>{}</b></p>\n<ul>\n", esc(advice)));
            for line in details {
                out.push_str(&format!("<li>{}</li>\n", esc(line)));
            }
            out.push_str("</ul>\n");
        }
        out.push_str("</div>\n");
    }

    /// Per class of the synthetic set, next to the real held-out rows of the class.
    fn per_class(&self, out: &mut String) {
        let r = self.report;
        out.push_str("<section id=classes>\n<h2>Per class</h2>\n");
        if let Some(cm) = &r.class_matched {
            out.push_str(&format!(
                "<p>Against a real reference drawn per class in the synthetic proportions ({} rows; \
                 class-mix difference {} before, {} after matching): shape {}, trend {}. The \
                 headline shape and trend compare the two tables as they are, as SDMetrics does.</p>\n",
                cm.reference_rows,
                fmt(cm.mix_difference),
                fmt(cm.remaining_mix_difference),
                fmt_opt(cm.shape),
                fmt_opt(cm.trend)
            ));
        }
        out.push_str(
            "<p class=small>Each figure compares the synthetic rows of a class with the real \
             training rows of that class; in brackets, the same figure for the real held-out rows \
             of the class, which is what a generator can hope to reach. Agreement: share assigned \
             to the class by a random forest trained on real training rows. Copies: share equal to \
             a training row feature for feature.</p>\n",
        );
        out.push_str(
            "<table>\n<tr><th>Class</th><th class=num>Train rows</th><th class=num>Synthetic</th>\
             <th class=num>Held out</th><th class=num>Shape</th><th class=num>Trend</th>\
             <th class=num>Detection AUC</th><th class=num>Agreement</th><th class=num>Copies</th></tr>\n",
        );
        let pair = |a: Option<f64>, b: Option<f64>| {
            format!("{} <span class=small>({})</span>", fmt_opt(a), fmt_opt(b))
        };
        for c in &r.per_class {
            out.push_str(&format!(
                "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td>\
                 <td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td>\
                 <td class=num>{}</td></tr>\n",
                esc(&c.class),
                c.train_rows,
                c.synthetic_rows,
                c.holdout_rows,
                pair(c.shape, c.holdout_shape),
                pair(c.trend, c.holdout_trend),
                pair(c.detection_auc, c.holdout_detection_auc),
                pair(c.agreement, c.holdout_agreement),
                pair(c.copy_rate, c.holdout_copy_rate),
            ));
        }
        out.push_str("</table>\n</section>\n");
    }

    fn inputs(&self, out: &mut String) {
        let i = &self.report.inputs;
        out.push_str("<section id=inputs>\n<h2>Inputs</h2>\n");
        out.push_str("<table>\n<tr><th>Data</th><th>Location</th><th class=num>Rows</th><th>Rows per class</th></tr>\n");
        for (name, d) in [
            ("train (real)", &i.train),
            ("test (real)", &i.test),
            ("synthetic", &i.synthetic),
        ] {
            out.push_str(&format!(
                "<tr><td>{name}</td><td><code>{}</code></td><td class=num>{}</td><td>{}</td></tr>\n",
                esc(&d.url),
                d.rows,
                class_counts(d)
            ));
        }
        out.push_str("</table>\n");
        out.push_str(&format!(
            "<p>Label column <code>{}</code>; {} seed(s) per downstream setting; synthetic classes used: {}.</p>\n",
            esc(&i.label_column),
            i.seeds,
            if i.augment_only.is_empty() {
                "all".to_string()
            } else {
                i.augment_only.iter().map(|c| esc(c)).collect::<Vec<_>>().join(", ")
            }
        ));
        let r = self.report;
        if !r.notes.is_empty() {
            out.push_str("<h3>Notes</h3>\n<ul class=notes>\n");
            for n in &r.notes {
                out.push_str(&format!("<li>{}</li>\n", esc(n)));
            }
            out.push_str("</ul>\n");
        }
        if !r.skipped.is_empty() {
            out.push_str(&format!(
                "<h3>Columns left out of the scores ({})</h3>\n",
                r.skipped.len()
            ));
            out.push_str("<table>\n<tr><th>Column</th><th>Reason</th></tr>\n");
            for s in &r.skipped {
                out.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td></tr>\n",
                    esc(&s.column),
                    esc(&s.reason)
                ));
            }
            out.push_str("</table>\n");
        }
        out.push_str("</section>\n");
    }

    fn columns(&self, out: &mut String) {
        out.push_str("<section id=columns>\n<h2>Column distributions</h2>\n");
        out.push_str(&format!(
            "<p><span class=key style=\"background:{REAL_HEX};margin-left:0\"></span>real training rows \
             <span class=key style=\"background:{SYNTHETIC_HEX}\"></span>synthetic rows. \
             Numeric columns: share of rows per bin (real filled, synthetic as an outline; small \
             integer ranges as side-by-side bars); heavy-tailed columns use a log1p x axis, as noted \
             under the plot. Categorical columns: share of rows \
             per category, the {} most frequent real categories and the rest as “other”.</p>\n",
            plots::TOP_CATEGORIES
        ));
        out.push_str("<div class=grid>\n");
        for c in &self.columns {
            let axis = match c.axis {
                Some(Axis::Log1p) => " · log1p x axis",
                Some(Axis::Integer) => " · one bar per integer",
                _ => "",
            };
            let skipped = c
                .skipped
                .as_ref()
                .map(|r| format!(" · <span class=na>not scored: {}</span>", esc(r)))
                .unwrap_or_default();
            out.push_str(&format!(
                "<figure><img src=\"{file}\" alt=\"{name_attr}: real vs synthetic\" width=480 height=320 loading=lazy>\
                 <figcaption><b>{name}</b> — {metric} {score}{axis}{skipped}</figcaption></figure>\n",
                file = esc(&c.file),
                name_attr = esc(&c.name),
                name = esc(&c.name),
                metric = esc(c.metric.as_deref().unwrap_or(c.kind)),
                score = fmt_opt(c.score),
            ));
        }
        out.push_str("</div>\n");
        // Worst first: the table is for finding problems.
        let mut sorted: Vec<&ColumnFigure> = self.columns.iter().collect();
        sorted.sort_by(|a, b| {
            let key = |c: &ColumnFigure| c.score.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        });
        out.push_str(&format!(
            "<details><summary>Per-column scores ({} columns, worst first)</summary>\n",
            sorted.len()
        ));
        out.push_str("<table class=compact>\n<tr><th>Column</th><th>Kind</th><th>Metric</th><th class=num>Score</th><th>Note</th></tr>\n");
        for c in sorted {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td>{}</td></tr>\n",
                esc(&c.name),
                c.kind,
                esc(c.metric.as_deref().unwrap_or("n/a")),
                fmt_opt(c.score),
                c.skipped.as_deref().map(esc).unwrap_or_default()
            ));
        }
        out.push_str("</table>\n</details>\n</section>\n");
    }

    fn pairs(&self, out: &mut String) {
        let r = self.report;
        out.push_str("<section id=pairs>\n<h2>Column pairs</h2>\n");
        match &self.correlation {
            Some(h) => {
                out.push_str(&format!(
                    "<p>Absolute difference between the Pearson correlations of the real and the synthetic \
                     data for every pair of numeric columns: white = same correlation, dark red = a \
                     difference of {} or more, grey = not scored.</p>\n\
                     <img class=wide src=\"{}\" alt=\"correlation difference heatmap\">\n",
                    fmt(h.scale_top),
                    esc(&h.file)
                ));
                if !self.font_found || h.names.len() > plots::HEATMAP_LABEL_LIMIT {
                    out.push_str(&format!(
                        "<p class=small>Rows and columns, top to bottom and left to right: {}.</p>\n",
                        h.names.iter().map(|n| esc(n)).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            None => out.push_str("<p class=na>No numeric column pairs with correlations on both sides: no heatmap.</p>\n"),
        }
        let mut pairs: Vec<_> = r.pairs.iter().collect();
        pairs.sort_by(|a, b| {
            let key = |p: &crate::report::PairScore| {
                p.score.filter(|v| v.is_finite()).unwrap_or(f64::INFINITY)
            };
            key(a).total_cmp(&key(b))
        });
        if !pairs.is_empty() {
            let shown = pairs.len().min(30);
            out.push_str(&format!(
                "<details><summary>Lowest-scoring pairs ({shown} of {})</summary>\n",
                pairs.len()
            ));
            out.push_str("<table class=compact>\n<tr><th>Column A</th><th>Column B</th><th>Metric</th><th class=num>Score</th><th class=num>r real</th><th class=num>r synthetic</th></tr>\n");
            for p in &pairs[..shown] {
                out.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>\n",
                    esc(&p.a),
                    esc(&p.b),
                    esc(&p.metric),
                    fmt_opt(p.score),
                    fmt_opt(p.real),
                    fmt_opt(p.synthetic)
                ));
            }
            out.push_str("</table>\n</details>\n");
        }
        out.push_str("</section>\n");
    }

    /// The multimodal model's image view: mean images per class and their differences.
    fn image_view(&self, out: &mut String) {
        let (Some(file), Some(view)) = (&self.image_view, &self.report.image_view) else {
            return;
        };
        out.push_str("<section id=image-view>\n<h2>Image view</h2>\n");
        out.push_str(&format!(
            "<p>The model renders each flow as a {s}&times;{s} image, every feature at its own \
             pixel. Below, per class, the mean image of the real training rows and of the \
             synthetic rows: numeric features as z-scores of the real training column, \
             categorical codes in [&minus;1, 1]; grey pixels hold no feature.</p>\n",
            s = view.side
        ));
        out.push_str(&format!(
            "<figure><img class=wide src=\"{}\" alt=\"mean image per class, real and synthetic\">\
             <figcaption>First {} classes.</figcaption></figure>\n",
            esc(file),
            plots::IMAGE_VIEW_CLASSES.min(view.classes.len())
        ));
        out.push_str("<table class=compact>\n<tr><th>class</th><th class=num>mean |real − synthetic| per pixel</th></tr>\n");
        for c in &view.classes {
            out.push_str(&format!(
                "<tr><td class=name>{}</td><td class=num>{}</td></tr>\n",
                esc(&c.class),
                fmt_opt(c.difference)
            ));
        }
        out.push_str("</table>\n");
        let order: Vec<String> = view
            .pixels
            .iter()
            .enumerate()
            .filter_map(|(p, n)| n.as_ref().map(|n| format!("{p}: {}", esc(n))))
            .collect();
        out.push_str(&format!(
            "<details><summary>Pixel of each feature (row-major)</summary><p class=small>{}</p></details>\n</section>\n",
            order.join(", ")
        ));
    }

    fn quality(&self, out: &mut String) {
        let r = self.report;
        out.push_str("<section id=quality>\n<h2>Quality and privacy</h2>\n");
        if let Some(file) = &self.quality {
            let rows = r
                .quality_curves
                .as_ref()
                .map(|q| {
                    format!(
                        " ({} real and {} synthetic rows)",
                        q.real_rows, q.synthetic_rows
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "<figure><img src=\"{}\" alt=\"alpha-precision and beta-recall curves\" width=480 height=320>\
                 <figcaption>α-precision and β-recall curves{rows}: the closer to the diagonal, the better.</figcaption></figure>\n",
                esc(file)
            ));
        }
        out.push_str("<table>\n");
        match &r.detection {
            Some(d) => out.push_str(&format!(
                "<tr><th>Detection (LogisticDetection)</th><td>score {} · AUC per fold {} · {} real / {} synthetic rows</td></tr>\n",
                fmt(d.score),
                d.auc_per_fold.iter().map(|a| fmt(*a)).collect::<Vec<_>>().join(", "),
                d.real_rows,
                d.synthetic_rows
            )),
            None => out.push_str("<tr><th>Detection</th><td class=na>n/a</td></tr>\n"),
        }
        match &r.dcr {
            Some(d) => out.push_str(&format!(
                "<tr><th>Distance to closest record</th><td>share closer to train {} · protection score {} · \
                 median DCR to train {} / to holdout {} · {} synthetic rows against {} reference rows · holdout: {}</td></tr>\n",
                fmt(d.share_closer_to_train),
                fmt(d.score),
                fmt(d.median_dcr_train),
                fmt(d.median_dcr_holdout),
                d.synthetic_rows,
                d.reference_rows,
                esc(&d.holdout)
            )),
            None => out.push_str("<tr><th>Distance to closest record</th><td class=na>n/a</td></tr>\n"),
        }
        out.push_str("</table>\n</section>\n");
    }

    fn validity(&self, out: &mut String) {
        let v = &self.report.validity;
        out.push_str("<section id=validity>\n<h2>Domain validity</h2>\n");
        out.push_str(&format!(
            "<p>{} of the synthetic rows and {} of the real rows satisfy every constraint inferred from the real data.</p>\n",
            fmt(v.share_valid_rows),
            fmt(v.real_share_valid_rows)
        ));
        if v.constraints.is_empty() {
            out.push_str("<p class=na>No constraints were inferred.</p>\n</section>\n");
            return;
        }
        let mut cs: Vec<_> = v.constraints.iter().collect();
        cs.sort_by(|a, b| {
            let key = |s: f64| if s.is_finite() { s } else { f64::INFINITY };
            key(a.synthetic_share).total_cmp(&key(b.synthetic_share))
        });
        let violated = cs.iter().filter(|c| c.synthetic_share < 1.0).count();
        let open = if cs.len() <= 15 { " open" } else { "" };
        out.push_str(&format!(
            "<details{open}><summary>{} constraints, {violated} violated by some synthetic rows (worst first)</summary>\n",
            cs.len()
        ));
        out.push_str("<table class=compact>\n<tr><th>Kind</th><th>Constraint</th><th class=num>Synthetic share</th><th class=num>Real share</th></tr>\n");
        for c in cs {
            let grade = Grade::high(Some(c.synthetic_share), 0.99, 0.9);
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"num {}\"><span class=dot></span>{}</td><td class=num>{}</td></tr>\n",
                esc(&c.kind),
                esc(&c.description),
                grade.class(),
                fmt(c.synthetic_share),
                fmt(c.real_share)
            ));
        }
        out.push_str("</table>\n</details>\n</section>\n");
    }

    fn downstream(&self, out: &mut String) {
        out.push_str("<section id=downstream>\n<h2>Downstream detection</h2>\n");
        let Some(d) = &self.report.downstream else {
            out.push_str("<p class=na>Downstream detection was not run.</p>\n</section>\n");
            return;
        };
        out.push_str(
            "<p>Detectors trained on the real training data alone and augmented with synthetic rows, \
             random oversampling (ros) or SMOTE, scored on the real test split.</p>\n",
        );
        if !d.added_per_class.is_empty() {
            out.push_str(&format!(
                "<p>Rows added per class in every augmented setting: {}.</p>\n",
                d.added_per_class
                    .iter()
                    .map(|(c, n)| format!("{} {n}", esc(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let key: String = d
            .settings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "<span class=key style=\"background:{}\"></span>{}",
                    plots::hex(plots::setting_colour(s, i)),
                    esc(s)
                )
            })
            .collect();
        let order = if self.font_found {
            String::new()
        } else {
            format!(
                " Classes left to right: {}.",
                d.classes
                    .iter()
                    .map(|c| esc(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        out.push_str(&format!(
            "<p>Per-class F1 bars (whiskers: ± 1 std over seeds):{key}.{order}</p>\n"
        ));
        for (det, file) in &self.f1 {
            out.push_str(&format!(
                "<h3>{}</h3>\n<img class=wide src=\"{}\" alt=\"per-class F1 of {}\">\n",
                esc(det),
                esc(file),
                esc(det)
            ));
            if let Some(result) = d.detectors.iter().find(|x| &x.detector == det) {
                out.push_str(&format!(
                    "<details><summary>Per-class precision, recall and F1 — {}</summary>\n",
                    esc(det)
                ));
                per_class_table(out, &d.classes, &result.settings);
                out.push_str("</details>\n");
            }
        }
        if !d.config.is_empty() {
            out.push_str(
                "<details><summary>Detector configuration</summary>\n<table class=compact>\n",
            );
            for (k, v) in &d.config {
                out.push_str(&format!(
                    "<tr><th>{}</th><td>{}</td></tr>\n",
                    esc(k),
                    esc(v)
                ));
            }
            out.push_str("</table>\n</details>\n");
        }
        out.push_str("</section>\n");
    }

    fn run(&self, out: &mut String) {
        let r = self.report;
        out.push_str("<section id=run>\n<h2>Run</h2>\n");
        if !r.timings.is_empty() {
            out.push_str(
                "<table class=compact>\n<tr><th>Stage</th><th class=num>Seconds</th></tr>\n",
            );
            for (stage, s) in &r.timings {
                out.push_str(&format!(
                    "<tr><td>{}</td><td class=num>{}</td></tr>\n",
                    esc(stage),
                    fmt_secs(*s)
                ));
            }
            out.push_str("</table>\n");
        }
        out.push_str(&format!(
            "<p class=small>report.json format version {}. Generated by flowsynth {}.</p>\n</section>\n",
            r.format_version,
            env!("CARGO_PKG_VERSION")
        ));
    }
}

fn fmt_secs(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.1}")
    } else {
        "n/a".to_string()
    }
}

/// "normal 67 343 · dos 45 927 …", largest classes first.
fn class_counts(d: &DatasetInfo) -> String {
    let mut counts: Vec<(&String, &usize)> = d.class_counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .map(|(c, n)| format!("{} {n}", esc(c)))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Rows = classes (with test support), column groups = settings, P / R / F1 as mean ± std.
/// One detector per row, one setting per column, of the figure `pick` selects; the best setting
/// in bold and each setting's change against `real`.
fn f1_table(
    out: &mut String,
    d: &Downstream,
    title: &str,
    pick: impl Fn(&SettingResult) -> Option<&Stat>,
) {
    out.push_str(&format!(
        "<h3>{}</h3>\n<table>\n<tr><th>Detector</th>",
        esc(title)
    ));
    for s in &d.settings {
        out.push_str(&format!("<th class=num>{}</th>", esc(s)));
    }
    out.push_str("</tr>\n");
    for det in &d.detectors {
        let find = |s: &str| det.settings.iter().find(|x| x.setting == s).and_then(&pick);
        let best = det
            .settings
            .iter()
            .filter_map(&pick)
            .map(|s| s.mean)
            .filter(|m| m.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        let baseline = find("real").map(|s| s.mean).filter(|m| m.is_finite());
        out.push_str(&format!("<tr><td>{}</td>", esc(&det.detector)));
        for s in &d.settings {
            let Some(res) = find(s) else {
                out.push_str("<td class=\"num na\">n/a</td>");
                continue;
            };
            let m = res.mean;
            let class = if m.is_finite() && m == best {
                "num best"
            } else {
                "num"
            };
            let delta = match baseline {
                Some(b) if s != "real" && m.is_finite() => {
                    let dm = m - b;
                    let dir = if dm > 0.0005 {
                        "up"
                    } else if dm < -0.0005 {
                        "down"
                    } else {
                        ""
                    };
                    format!("<span class=\"delta {dir}\">{dm:+.3}</span>")
                }
                _ => String::new(),
            };
            out.push_str(&format!(
                "<td class=\"{class}\">{}{delta}</td>",
                fmt_stat(res)
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn per_class_table(out: &mut String, classes: &[String], settings: &[SettingResult]) {
    out.push_str("<div class=scroll><table class=perclass>\n<tr><th rowspan=2>Class</th><th rowspan=2 class=num>Support</th>");
    for s in settings {
        out.push_str(&format!("<th colspan=3 class=g>{}</th>", esc(&s.setting)));
    }
    out.push_str("</tr>\n<tr>");
    for _ in settings {
        out.push_str(
            "<th class=\"num g\">Precision</th><th class=num>Recall</th><th class=num>F1</th>",
        );
    }
    out.push_str("</tr>\n");
    // Support is a property of the test split; take it from whichever setting has the class.
    let support: BTreeMap<&str, usize> = settings
        .iter()
        .flat_map(|s| s.per_class.iter().map(|c| (c.class.as_str(), c.support)))
        .collect();
    for class in classes {
        out.push_str(&format!(
            "<tr><td class=name>{}</td><td class=num>{}</td>",
            esc(class),
            support
                .get(class.as_str())
                .map_or_else(|| "n/a".to_string(), |n| n.to_string())
        ));
        for s in settings {
            match s.per_class.iter().find(|c| &c.class == class) {
                Some(c) => out.push_str(&format!(
                    "<td class=\"num g\">{}</td><td class=num>{}</td><td class=num><b>{}</b></td>",
                    fmt_stat_tight(&c.precision),
                    fmt_stat_tight(&c.recall),
                    fmt_stat_tight(&c.f1)
                )),
                None => out.push_str("<td class=\"num na g\">n/a</td><td class=\"num na\">n/a</td><td class=\"num na\">n/a</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("<tr><th colspan=2>macro-F1 · accuracy</th>");
    for s in settings {
        out.push_str(&format!(
            "<td colspan=3 class=\"num g\">{} · {}</td>",
            fmt_stat_tight(&s.macro_f1),
            fmt_stat_tight(&s.accuracy)
        ));
    }
    out.push_str("</tr>\n</table></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(esc(r#"<b>&"x"'"#), "&lt;b&gt;&amp;&quot;x&quot;&#39;");
        assert_eq!(esc("Flow Bytes/s"), "Flow Bytes/s");
    }

    #[test]
    fn missing_numbers_read_n_a() {
        assert_eq!(fmt_opt(None), "n/a");
        assert_eq!(fmt_opt(Some(f64::NAN)), "n/a");
        assert_eq!(fmt(f64::INFINITY), "n/a");
        assert_eq!(fmt_opt(Some(0.12345)), "0.123");
        assert_eq!(fmt_stat(&Stat::new(vec![])), "n/a");
    }
}
