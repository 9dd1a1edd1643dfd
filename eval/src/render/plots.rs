//! The report's PNG plots, drawn with `plotters` into an in-memory RGB buffer and encoded with
//! `png`, so nothing touches the file system (the caller may write to an object store).
//!
//! Every function takes `Option<Typeface>`: with `None` (no font on the host) the same plot is
//! drawn without any text, because the page around it still names the column and the colours.
//! Text never goes through plotters' default font family, so forgetting that rule fails the
//! no-font test instead of failing on a user's font-less container.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, KeyPointWeight, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::font::Typeface;
use crate::error::{Error, Result};

/// Colour of the real data in every plot (and in the page's colour key).
pub const REAL: RGBColor = RGBColor(31, 119, 180);
/// Colour of the synthetic data.
pub const SYNTHETIC: RGBColor = RGBColor(255, 127, 14);
/// Hex forms of [`REAL`] and [`SYNTHETIC`] for the HTML colour key.
pub const REAL_HEX: &str = "#1f77b4";
pub const SYNTHETIC_HEX: &str = "#ff7f0e";

const GRID: RGBColor = RGBColor(225, 225, 225);
const MISSING: RGBColor = RGBColor(205, 205, 205);
const INK: RGBColor = RGBColor(40, 40, 40);

/// Size of one distribution plot: small enough for a grid of ~80 on one page.
pub const COLUMN_PLOT: (u32, u32) = (480, 320);
/// Equal-width bins of a numeric histogram (linear or log1p axis).
const BINS: usize = 40;
/// Categories shown by name in a categorical plot; the rest are lumped as "other".
pub const TOP_CATEGORIES: usize = 15;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Drawn = std::result::Result<
    (),
    DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>,
>;

/// Draws `draw` on a white `size` canvas and returns the PNG bytes. `name` is the file the plot
/// becomes, for the error message.
fn draw_png(
    name: &str,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Drawn,
) -> Result<Vec<u8>> {
    let failed = |reason: String| Error::Write {
        path: name.to_string(),
        reason,
    };
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root).map_err(|e| failed(format!("drawing the plot failed: {e}")))?;
        root.present()
            .map_err(|e| failed(format!("drawing the plot failed: {e}")))?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder
        .write_header()
        .map_err(|e| failed(format!("PNG encoding failed: {e}")))?;
    writer
        .write_image_data(&buf)
        .map_err(|e| failed(format!("PNG encoding failed: {e}")))?;
    writer
        .finish()
        .map_err(|e| failed(format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

fn style(t: Typeface, size: f64) -> TextStyle<'static> {
    (t.family, size).into_font().color(&INK)
}

/// A linear f64 axis with tick positions of our choosing (log1p powers of ten, round shares).
/// plotters' own `with_key_points` combinator cannot take a label formatter; this can. Ticks
/// are bold grid lines only, and none at all when the mesh asks for zero labels (no font).
#[derive(Debug, Clone)]
struct Ticked {
    range: Range<f64>,
    ticks: Vec<f64>,
}

fn ticked(range: Range<f64>, ticks: Vec<f64>) -> Ticked {
    Ticked { range, ticks }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let f = if span == 0.0 {
            0.5
        } else {
            (value - self.range.start) / span
        };
        limit.0 + (f64::from(limit.1 - limit.0) * f + 1e-3).floor() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.max_num_points() == 0 || matches!(hint.weight(), KeyPointWeight::Any) {
            return Vec::new();
        }
        self.ticks.clone()
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// `s` shortened with an ellipsis until it is at most `max_px` wide in `style`.
fn fit(area: &Area<'_>, s: &str, style: &TextStyle<'_>, max_px: u32) -> String {
    let fits = |s: &str| {
        area.estimate_text_size(s, style)
            .map(|(w, _)| w <= max_px)
            .unwrap_or(true)
    };
    if fits(s) {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    for keep in (1..chars.len()).rev() {
        let candidate: String = chars[..keep].iter().chain(['…'].iter()).collect();
        if fits(&candidate) {
            return candidate;
        }
    }
    "…".to_string()
}

/// Width in pixels of the widest of `labels` once [`fit`] to `max_px`: sizes label bands before
/// the canvas exists (measured on a 1×1 scratch canvas).
fn label_width(t: Typeface, size: f64, labels: &[String], max_px: u32) -> u32 {
    let mut scratch = vec![0u8; 3];
    let area = BitMapBackend::with_buffer(&mut scratch, (1, 1)).into_drawing_area();
    let st = style(t, size);
    labels
        .iter()
        .map(|l| {
            let short = fit(&area, l, &st, max_px);
            area.estimate_text_size(&short, &st)
                .map_or(max_px, |(w, _)| w)
        })
        .max()
        .unwrap_or(0)
}

/// Title on the first line, a colour legend on the second; returns the band's height, so the
/// chart below starts there. Draws nothing (height 8) without a font: the page has the key.
fn header(
    area: &Area<'_>,
    text: Option<Typeface>,
    title: &str,
    legend: &[(String, RGBColor)],
) -> Result<i32, DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>> {
    let Some(t) = text else { return Ok(8) };
    let (w, _) = area.dim_in_pixel();
    let title_style = style(t, 15.0);
    let title = fit(area, title, &title_style, w.saturating_sub(16));
    area.draw(&Text::new(title, (8, 8), title_style))?;
    if legend.is_empty() {
        return Ok(30);
    }
    let label_style = style(t, 12.0);
    let mut x = 10;
    for (label, colour) in legend {
        area.draw(&Rectangle::new([(x, 28), (x + 11, 39)], colour.filled()))?;
        area.draw(&Text::new(label.clone(), (x + 15, 29), label_style.clone()))?;
        let (lw, _) = area.estimate_text_size(label, &label_style)?;
        x += 15 + lw as i32 + 16;
    }
    Ok(46)
}

/// A short number for tick labels: 3 significant digits, k/M/G suffixes from 10 000 up.
pub fn compact(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let a = v.abs();
    if a == 0.0 {
        return "0".to_string();
    }
    if a < 1e-3 {
        return format!("{v:.1e}");
    }
    let (scaled, suffix) = if a >= 1e12 {
        (v / 1e12, "T")
    } else if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = scaled.abs();
    let decimals = if s >= 100.0 {
        0
    } else if s >= 10.0 {
        1
    } else if s >= 1.0 {
        2
    } else {
        3
    };
    let mut text = format!("{scaled:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{suffix}")
}

/// `v` rounded to `digits` significant digits: log1p ticks come back from `exp_m1` as
/// 999999.99… and must print as 1M.
fn round_significant(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// Percent tick label with as many decimals as the value needs (at most two): "20%", "2.5%".
fn percent(v: f64) -> String {
    let text = format!("{:.2}", v * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

// ---------------------------------------------------------------------------------------------
// Numeric columns

/// How a numeric histogram's x axis is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Equal-width bins over the value range.
    Linear,
    /// Equal-width bins over sign(x)·ln(1 + |x|): for heavy-tailed counts (bytes, durations)
    /// whose linear histogram would put nearly every row in the first bin.
    Log1p,
    /// One bin per integer: flags, small counts.
    Integer,
}

impl Axis {
    /// What the x axis shows, printed under it.
    pub fn description(self) -> &'static str {
        match self {
            Axis::Linear => "value",
            Axis::Log1p => "value (log1p scale: sign(x)·ln(1+|x|))",
            Axis::Integer => "value (one bar per integer)",
        }
    }

    fn forward(self, x: f64) -> f64 {
        match self {
            Axis::Log1p => x.signum() * x.abs().ln_1p(),
            Axis::Linear | Axis::Integer => x,
        }
    }

    fn inverse(self, t: f64) -> f64 {
        match self {
            Axis::Log1p => t.signum() * t.abs().exp_m1(),
            Axis::Linear | Axis::Integer => t,
        }
    }
}

/// Real and synthetic shares of rows per bin, on a common set of bins.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub axis: Axis,
    /// Bin edges in plotted coordinates (after [`Axis::forward`]); `real.len() + 1` of them.
    pub edges: Vec<f64>,
    pub real: Vec<f64>,
    pub synthetic: Vec<f64>,
    pub real_rows: usize,
    pub synthetic_rows: usize,
}

/// Bins both samples on common bins (non-finite values are ignored). The axis rule, on the
/// pooled values: all integers spanning at most 60 → [`Axis::Integer`]; else, when the values
/// reach |x| ≥ 100 and the fullest of 40 equal-width bins holds over half of the rows →
/// [`Axis::Log1p`]; else [`Axis::Linear`]. `None` when neither sample has a finite value.
pub fn histogram(real: &[f64], synthetic: &[f64]) -> Option<Histogram> {
    let finite = || {
        real.iter()
            .chain(synthetic)
            .copied()
            .filter(|v| v.is_finite())
    };
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    // Both stay infinite when there is no finite value at all.
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    let axis = if hi - lo <= 60.0 && finite().all(|v| v.fract() == 0.0) {
        Axis::Integer
    } else if lo.abs().max(hi.abs()) >= 100.0 && fullest_share(finite(), lo, hi) > 0.5 {
        Axis::Log1p
    } else {
        Axis::Linear
    };
    let edges: Vec<f64> = match axis {
        Axis::Integer => (0..=((hi - lo) as usize + 1))
            .map(|k| lo - 0.5 + k as f64)
            .collect(),
        _ if hi == lo => {
            let d = (lo.abs() * 0.05).max(0.5);
            vec![lo - d, lo + d]
        }
        _ => {
            let (a, b) = (axis.forward(lo), axis.forward(hi));
            (0..=BINS)
                .map(|k| a + (b - a) * k as f64 / BINS as f64)
                .collect()
        }
    };
    let bins = edges.len() - 1;
    let shares = |values: &[f64]| {
        let mut counts = vec![0usize; bins];
        let mut n = 0usize;
        let (a, b) = (edges[0], edges[bins]);
        for &v in values.iter().filter(|v| v.is_finite()) {
            let t = axis.forward(v);
            let i = ((t - a) / (b - a) * bins as f64).floor();
            let i = if i.is_finite() && i > 0.0 {
                (i as usize).min(bins - 1)
            } else {
                0
            };
            counts[i] += 1;
            n += 1;
        }
        let total = n.max(1) as f64;
        (
            counts
                .into_iter()
                .map(|c| c as f64 / total)
                .collect::<Vec<_>>(),
            n,
        )
    };
    let (real_shares, real_rows) = shares(real);
    let (synthetic_shares, synthetic_rows) = shares(synthetic);
    Some(Histogram {
        axis,
        edges,
        real: real_shares,
        synthetic: synthetic_shares,
        real_rows,
        synthetic_rows,
    })
}

/// Share of `values` in the fullest of [`BINS`] equal-width bins over `[lo, hi]`.
fn fullest_share(values: impl Iterator<Item = f64>, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        return 1.0;
    }
    let mut counts = [0usize; BINS];
    let mut n = 0usize;
    for v in values {
        let i = (((v - lo) / (hi - lo)) * BINS as f64).floor();
        let i = if i > 0.0 {
            (i as usize).min(BINS - 1)
        } else {
            0
        };
        counts[i] += 1;
        n += 1;
    }
    counts.iter().copied().max().unwrap_or(0) as f64 / n.max(1) as f64
}

/// Tick positions (plotted coordinates) for a log1p axis: 0 and ±10^k inside `[a, b]`, thinned
/// to at most 7.
fn log_ticks(a: f64, b: f64) -> Vec<f64> {
    let mut ticks: Vec<f64> = Vec::new();
    let top = a.abs().max(b.abs()).exp_m1().max(1.0).log10().ceil() as i32;
    let step = ((top + 1) / 4).max(1);
    // "1" sits right next to "0" on a wide log1p axis; start at the first step instead.
    let first = if top >= 3 { step } else { 0 };
    for k in (first..=top).step_by(step as usize) {
        let t = (10f64.powi(k)).ln_1p();
        ticks.push(t);
        ticks.push(-t);
    }
    ticks.push(0.0);
    ticks.retain(|t| *t >= a - 1e-9 && *t <= b + 1e-9);
    ticks.sort_by(f64::total_cmp);
    ticks
}

/// Overlaid real/synthetic histogram of one numeric column; `title` is the column name and its
/// score. With no finite value on either side the plot says "no data".
pub fn numeric_column(
    name: &str,
    title: &str,
    real: &[f64],
    synthetic: &[f64],
    text: Option<Typeface>,
) -> Result<(Vec<u8>, Option<Axis>)> {
    let hist = histogram(real, synthetic);
    let bytes = draw_png(name, COLUMN_PLOT, |root| {
        let legend = match &hist {
            Some(h) => vec![
                (format!("real (n={})", h.real_rows), REAL),
                (format!("synthetic (n={})", h.synthetic_rows), SYNTHETIC),
            ],
            None => Vec::new(),
        };
        let top = header(root, text, title, &legend)?;
        let (_, body) = root.split_vertically(top);
        let Some(h) = &hist else {
            return no_data(&body, text);
        };
        let (a, b) = (h.edges[0], h.edges[h.edges.len() - 1]);
        let ymax = h
            .real
            .iter()
            .chain(&h.synthetic)
            .copied()
            .fold(0.0, f64::max);
        let ytop = (ymax * 1.1).max(1e-3);
        let ticks = match (text, h.axis) {
            (None, _) => Vec::new(),
            (Some(_), Axis::Log1p) => log_ticks(a, b),
            (Some(_), Axis::Integer) if b - a <= 12.0 => {
                h.edges.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
            }
            (Some(_), _) => nice_ticks(a, b, 6),
        };
        let mut builder = ChartBuilder::on(&body);
        builder
            .margin_left(4)
            .margin_right(14)
            .margin_bottom(4)
            .x_label_area_size(if text.is_some() { 34 } else { 4 })
            .y_label_area_size(if text.is_some() { 46 } else { 4 });
        let mut chart = builder.build_cartesian_2d(
            ticked(a..b, ticks),
            ticked(
                0.0..ytop,
                if text.is_some() {
                    nice_ticks(0.0, ytop, 5)
                } else {
                    Vec::new()
                },
            ),
        )?;
        let axis = h.axis;
        let xfmt = |t: &f64| compact(round_significant(axis.inverse(*t), 3));
        let yfmt = |v: &f64| percent(*v);
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .axis_style(INK);
        match text {
            Some(t) => {
                mesh.label_style(style(t, 11.0))
                    .axis_desc_style(style(t, 11.0))
                    .x_desc(h.axis.description())
                    .x_label_formatter(&xfmt)
                    .y_label_formatter(&yfmt);
            }
            None => {
                mesh.x_labels(0).y_labels(0);
            }
        }
        mesh.draw()?;
        if h.axis == Axis::Integer {
            // Few discrete values: side-by-side bars, like the categorical plots.
            let pairs = h.edges.windows(2).zip(h.real.iter().zip(&h.synthetic));
            chart.draw_series(pairs.flat_map(|(w, (r, s))| {
                let mid = (w[0] + w[1]) / 2.0;
                [
                    Rectangle::new([(mid - 0.4, 0.0), (mid, *r)], REAL.filled()),
                    Rectangle::new([(mid, 0.0), (mid + 0.4, *s)], SYNTHETIC.filled()),
                ]
            }))?;
            return Ok(());
        }
        let bars = h.edges.windows(2).zip(&h.real).filter(|(_, s)| **s > 0.0);
        chart.draw_series(
            bars.map(|(w, s)| Rectangle::new([(w[0], 0.0), (w[1], *s)], REAL.mix(0.55).filled())),
        )?;
        // Synthetic as a step outline over the real bars: both stay visible where they overlap.
        let mut step = vec![(a, 0.0)];
        for (w, s) in h.edges.windows(2).zip(&h.synthetic) {
            step.push((w[0], *s));
            step.push((w[1], *s));
        }
        step.push((b, 0.0));
        chart.draw_series(std::iter::once(PathElement::new(
            step,
            SYNTHETIC.stroke_width(2),
        )))?;
        Ok(())
    })?;
    Ok((bytes, hist.map(|h| h.axis)))
}

/// About `n` round tick positions in `[a, b]` (steps of 1, 2 or 5 × 10^k).
fn nice_ticks(a: f64, b: f64, n: usize) -> Vec<f64> {
    let span = b - a;
    if !span.is_finite() || span <= 0.0 {
        return vec![a];
    }
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let first = (a / step).ceil() as i64;
    let last = (b / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn no_data(area: &Area<'_>, text: Option<Typeface>) -> Drawn {
    let (w, h) = area.dim_in_pixel();
    let (r, b) = (w as i32 - 20, h as i32 - 20);
    let line = RGBColor(160, 160, 160).stroke_width(1);
    area.draw(&Rectangle::new([(20, 10), (r, b)], line))?;
    area.draw(&PathElement::new(vec![(20, 10), (r, b)], line))?;
    area.draw(&PathElement::new(vec![(20, b), (r, 10)], line))?;
    if let Some(t) = text {
        let (cx, cy) = (w as i32 / 2, (10 + b) / 2);
        area.draw(&Rectangle::new(
            [(cx - 40, cy - 12), (cx + 40, cy + 12)],
            WHITE.filled(),
        ))?;
        let s = style(t, 14.0).pos(Pos::new(HPos::Center, VPos::Center));
        area.draw(&Text::new("no data", (cx, cy), s))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Categorical columns

/// Category shares of both samples, most frequent real categories first.
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    pub labels: Vec<String>,
    pub real: Vec<f64>,
    pub synthetic: Vec<f64>,
    pub real_rows: usize,
    pub synthetic_rows: usize,
}

/// The `top` categories by real frequency (then synthetic frequency, so categories only the
/// generator produces come after the real ones), the rest summed into one "other (k)" entry.
/// Codes outside `vocabulary` are labelled `#code`. `None` when both samples are empty.
pub fn category_shares(
    vocabulary: &[String],
    real: &[u32],
    synthetic: &[u32],
    top: usize,
) -> Option<Shares> {
    if real.is_empty() && synthetic.is_empty() {
        return None;
    }
    let mut counts: std::collections::BTreeMap<u32, (usize, usize)> = Default::default();
    let mut dense = vec![(0usize, 0usize); vocabulary.len()];
    let mut count = |code: u32, side: usize| {
        let slot = match dense.get_mut(code as usize) {
            Some(slot) => slot,
            None => counts.entry(code).or_default(),
        };
        if side == 0 {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    };
    real.iter().for_each(|&c| count(c, 0));
    synthetic.iter().for_each(|&c| count(c, 1));
    let mut all: Vec<(u32, (usize, usize))> = dense
        .into_iter()
        .enumerate()
        .map(|(i, c)| (i as u32, c))
        .chain(counts)
        .filter(|(_, (r, s))| r + s > 0)
        .collect();
    all.sort_by(|(ca, (ra, sa)), (cb, (rb, sb))| rb.cmp(ra).then(sb.cmp(sa)).then(ca.cmp(cb)));
    // Lumping a single category into "other" would hide its name for nothing.
    let shown = if all.len() <= top + 1 { all.len() } else { top };
    let (nr, ns) = (real.len().max(1) as f64, synthetic.len().max(1) as f64);
    let mut out = Shares {
        labels: Vec::new(),
        real: Vec::new(),
        synthetic: Vec::new(),
        real_rows: real.len(),
        synthetic_rows: synthetic.len(),
    };
    for (code, (r, s)) in &all[..shown] {
        out.labels.push(match vocabulary.get(*code as usize) {
            Some(name) => name.clone(),
            None => format!("#{code}"),
        });
        out.real.push(*r as f64 / nr);
        out.synthetic.push(*s as f64 / ns);
    }
    if shown < all.len() {
        let rest = &all[shown..];
        out.labels.push(format!("other ({})", rest.len()));
        out.real
            .push(rest.iter().map(|(_, (r, _))| *r).sum::<usize>() as f64 / nr);
        out.synthetic
            .push(rest.iter().map(|(_, (_, s))| *s).sum::<usize>() as f64 / ns);
    }
    Some(out)
}

/// Side-by-side horizontal bars of category shares (real above synthetic per category),
/// categories top to bottom by real frequency: horizontal, so names stay readable unrotated.
pub fn categorical_column(
    name: &str,
    title: &str,
    shares: Option<&Shares>,
    text: Option<Typeface>,
) -> Result<Vec<u8>> {
    draw_png(name, COLUMN_PLOT, |root| {
        let legend = match shares {
            Some(s) => vec![
                (format!("real (n={})", s.real_rows), REAL),
                (format!("synthetic (n={})", s.synthetic_rows), SYNTHETIC),
            ],
            None => Vec::new(),
        };
        let top = header(root, text, title, &legend)?;
        let (band, body) = root.split_vertically(top);
        drop(band);
        let Some(s) = shares else {
            return no_data(&body, text);
        };
        let n = s.labels.len();
        let xmax = s
            .real
            .iter()
            .chain(&s.synthetic)
            .copied()
            .fold(0.0, f64::max);
        let xtop = (xmax * 1.1).max(1e-3);
        let label_w = match text {
            Some(t) => {
                let st = style(t, 11.0);
                s.labels
                    .iter()
                    .map(|l| {
                        body.estimate_text_size(&fit(&body, l, &st, 120), &st)
                            .map(|(w, _)| w)
                            .unwrap_or(120)
                    })
                    .max()
                    .unwrap_or(0)
                    + 10
            }
            None => 4,
        };
        let mut builder = ChartBuilder::on(&body);
        builder
            .margin_left(4)
            .margin_right(14)
            .margin_bottom(4)
            .x_label_area_size(if text.is_some() { 34 } else { 4 })
            .y_label_area_size(label_w);
        let mut chart = builder.build_cartesian_2d(
            ticked(
                0.0..xtop,
                if text.is_some() {
                    nice_ticks(0.0, xtop, 5)
                } else {
                    Vec::new()
                },
            ),
            -0.5..(n as f64 - 0.5),
        )?;
        let xfmt = |v: &f64| percent(*v);
        let mut mesh = chart.configure_mesh();
        mesh.disable_y_mesh()
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .axis_style(INK)
            .y_labels(0);
        match text {
            Some(t) => {
                mesh.label_style(style(t, 11.0))
                    .axis_desc_style(style(t, 11.0))
                    .x_desc("share of rows")
                    .x_label_formatter(&xfmt);
            }
            None => {
                mesh.x_labels(0);
            }
        }
        mesh.draw()?;
        // Row i (0 = most frequent) sits at y = n-1-i so the list reads top-down.
        let y = |i: usize| (n - 1 - i) as f64;
        let half = 0.38;
        chart.draw_series(
            s.real
                .iter()
                .enumerate()
                .map(|(i, v)| Rectangle::new([(0.0, y(i)), (*v, y(i) + half)], REAL.filled())),
        )?;
        chart.draw_series(
            s.synthetic
                .iter()
                .enumerate()
                .map(|(i, v)| Rectangle::new([(0.0, y(i) - half), (*v, y(i))], SYNTHETIC.filled())),
        )?;
        if let Some(t) = text {
            let st = style(t, 11.0).pos(Pos::new(HPos::Right, VPos::Center));
            for (i, label) in s.labels.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(0.0, y(i)));
                root.draw(&Text::new(
                    fit(root, label, &st, 120),
                    (px - 6, py),
                    st.clone(),
                ))?;
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Correlation difference

/// |r_real − r_synthetic| between numeric columns; `None` where a pair was not scored.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationDiff {
    pub names: Vec<String>,
    /// Row-major `names.len()²`, symmetric.
    pub diff: Vec<Option<f64>>,
}

/// Colour for a difference as a share `f` of the colour scale's top: a white-to-dark-red ramp.
fn heat(f: f64) -> RGBColor {
    let stops = [
        (0.0, (255.0, 247.0, 236.0)),
        (0.25, (253.0, 187.0, 132.0)),
        (0.5, (239.0, 101.0, 72.0)),
        (1.0, (127.0, 0.0, 0.0)),
    ];
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        1.0
    };
    for pair in stops.windows(2) {
        let ((a, ca), (b, cb)) = (pair[0], pair[1]);
        if f <= b {
            let t = (f - a) / (b - a);
            let mix = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
            return RGBColor(mix(ca.0, cb.0), mix(ca.1, cb.1), mix(ca.2, cb.2));
        }
    }
    RGBColor(127, 0, 0)
}

/// Top of the heatmap's colour scale: the largest difference rounded up to a multiple of 0.25,
/// at least 0.25 (so near-identical correlations stay pale) and at most 2 (the largest
/// possible). A fixed 0..2 scale would leave the typical 0..0.3 differences all white.
pub fn heat_top(m: &CorrelationDiff) -> f64 {
    let max = m
        .diff
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    ((max * 4.0).ceil() / 4.0).clamp(0.25, 2.0)
}

/// Columns up to which the heatmap names its rows and columns (cells of at least 10 px). Wider
/// schemas get smaller, unlabelled cells, so the image stays around 1200 px square; the page
/// then lists the order.
pub const HEATMAP_LABEL_LIMIT: usize = 120;

/// Heatmap of [`CorrelationDiff`]: names on the left and (rotated) below, colour bar on the
/// right. Cells shrink with the number of columns (CIC-IDS: ~80) down to 10 px.
pub fn correlation_heatmap(
    name: &str,
    m: &CorrelationDiff,
    text: Option<Typeface>,
) -> Result<Vec<u8>> {
    let n = m.names.len();
    let (cell, labels) = if n <= HEATMAP_LABEL_LIMIT {
        ((640 / n.max(1)).clamp(10, 36) as i32, text)
    } else {
        ((1200 / n).max(1) as i32, None)
    };
    let font_px = f64::from((cell - 2).clamp(8, 12));
    let max_label_px = 170;
    // Names are measured on a scratch canvas so the label bands are as wide as the longest name.
    let label_px = labels.map_or(0, |t| label_width(t, font_px, &m.names, max_label_px)) as i32;
    let top = heat_top(m);
    let label_band = if labels.is_some() { label_px + 10 } else { 6 };
    let (x0, y0) = (label_band, if text.is_some() { 34 } else { 8 });
    let side = cell * n as i32;
    let width = (x0 + side + 110).max(560);
    let height = y0 + side + label_band.max(40);
    draw_png(name, (width as u32, height as u32), |root| {
        for i in 0..n {
            for j in 0..n {
                let colour = match m.diff.get(i * n + j).copied().flatten() {
                    _ if i == j => heat(0.0),
                    Some(v) => heat(v / top),
                    None => MISSING,
                };
                let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    colour.filled(),
                ))?;
            }
        }
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + side, y0 + side)],
            INK.stroke_width(1),
        ))?;
        let (bx, bh) = (x0 + side + 18, side.clamp(60, 260));
        colour_bar(root, (bx, y0), (14, bh), |f| heat(1.0 - f))?;
        root.draw(&Rectangle::new(
            [(bx, y0 + bh + 12), (bx + 14, y0 + bh + 22)],
            MISSING.filled(),
        ))?;
        let Some(t) = text else { return Ok(()) };
        root.draw(&Text::new(
            "Correlation difference |r_real − r_synthetic| between numeric columns",
            (8, 10),
            style(t, 15.0),
        ))?;
        let tick = style(t, 11.0).pos(Pos::new(HPos::Left, VPos::Center));
        for v in nice_ticks(0.0, top, 5) {
            let y = y0 + ((1.0 - v / top) * f64::from(bh - 1)).round() as i32;
            root.draw(&PathElement::new(vec![(bx + 14, y), (bx + 18, y)], INK))?;
            root.draw(&Text::new(compact(v), (bx + 20, y), tick.clone()))?;
        }
        root.draw(&Text::new("n/a", (bx + 20, y0 + bh + 17), tick.clone()))?;
        let Some(t) = labels else { return Ok(()) };
        let left = style(t, font_px).pos(Pos::new(HPos::Right, VPos::Center));
        let below = style(t, font_px).transform(FontTransform::Rotate90);
        for (i, label) in m.names.iter().enumerate() {
            let short = fit(root, label, &left, max_label_px);
            let mid = i as i32 * cell + cell / 2;
            root.draw(&Text::new(short.clone(), (x0 - 4, y0 + mid), left.clone()))?;
            // Rotated text hangs from its anchor and reads downwards; the anchor sits half a
            // line to the right of the column's centre so the glyphs centre on it.
            let h = font_px as i32;
            root.draw(&Text::new(
                short,
                (x0 + mid + h / 2, y0 + side + 4),
                below.clone(),
            ))?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Per-class F1

/// One detector's per-class F1: `f1[setting][class] = (mean, std)`, `None` where the report has
/// no entry for that class in that setting.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassBars {
    pub detector: String,
    pub settings: Vec<String>,
    pub classes: Vec<String>,
    pub f1: Vec<Vec<Option<(f64, f64)>>>,
}

/// `#rrggbb` of a plot colour, for colour keys on the page.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Colour of a downstream setting: the real baseline in the real colour, real+synthetic in the
/// synthetic colour, the oversampling baselines in green and purple.
pub fn setting_colour(setting: &str, index: usize) -> RGBColor {
    match setting {
        "real" => REAL,
        "real+synthetic" => SYNTHETIC,
        "real+ros" => RGBColor(44, 160, 44),
        "real+smote" => RGBColor(148, 103, 189),
        _ => {
            let extra = [
                RGBColor(140, 86, 75),
                RGBColor(227, 119, 194),
                RGBColor(127, 127, 127),
                RGBColor(188, 189, 34),
                RGBColor(23, 190, 207),
            ];
            extra[index % extra.len()]
        }
    }
}

/// Grouped bars: classes along x (names rotated), one bar per setting, whiskers = ±1 std.
pub fn class_f1(
    name: &str,
    bars: &ClassBars,
    seeds: usize,
    text: Option<Typeface>,
) -> Result<Vec<u8>> {
    let nc = bars.classes.len().max(1);
    let ns = bars.settings.len().max(1);
    let group_px = (ns * 9 + 14).max(36);
    let label_band: u32 = text.map_or(8, |t| label_width(t, 11.0, &bars.classes, 200) + 16);
    let width = (90 + nc * group_px).clamp(520, 1600) as u32;
    let height = 300 + label_band;
    draw_png(name, (width, height), |root| {
        let legend: Vec<(String, RGBColor)> = bars
            .settings
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), setting_colour(s, i)))
            .collect();
        let title = format!(
            "Per-class F1 — {} (mean ± std over {seeds} seeds)",
            bars.detector
        );
        let top = header(root, text, &title, &legend)?;
        let (_, body) = root.split_vertically(top);
        let mut builder = ChartBuilder::on(&body);
        builder
            .margin_left(4)
            .margin_right(14)
            .margin_top(6)
            .x_label_area_size(label_band)
            .y_label_area_size(if text.is_some() { 40 } else { 4 });
        let mut chart = builder.build_cartesian_2d(
            -0.5..(nc as f64 - 0.5),
            ticked(
                0.0..1.05,
                if text.is_some() {
                    vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
                } else {
                    Vec::new()
                },
            ),
        )?;
        let yfmt = |v: &f64| format!("{v:.1}");
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .axis_style(INK)
            .x_labels(0);
        match text {
            Some(t) => {
                mesh.label_style(style(t, 11.0))
                    .axis_desc_style(style(t, 11.0))
                    .y_desc("F1")
                    .y_label_formatter(&yfmt);
            }
            None => {
                mesh.y_labels(0);
            }
        }
        mesh.draw()?;
        let width = 0.8 / ns as f64;
        for (si, setting) in bars.f1.iter().enumerate() {
            let colour = setting_colour(bars.settings.get(si).map_or("", String::as_str), si);
            for (ci, value) in setting.iter().enumerate() {
                let Some((mean, std)) = value else { continue };
                if !mean.is_finite() {
                    continue;
                }
                let x = ci as f64 - 0.4 + si as f64 * width;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x + width * 0.08, 0.0), (x + width * 0.92, *mean)],
                    colour.filled(),
                )))?;
                if std.is_finite() && *std > 0.0 {
                    let mid = x + width / 2.0;
                    let (lo, hi) = ((mean - std).max(0.0), (mean + std).min(1.05));
                    let cap = width * 0.25;
                    chart.draw_series([
                        PathElement::new(vec![(mid, lo), (mid, hi)], INK),
                        PathElement::new(vec![(mid - cap, lo), (mid + cap, lo)], INK),
                        PathElement::new(vec![(mid - cap, hi), (mid + cap, hi)], INK),
                    ])?;
                }
            }
        }
        if let Some(t) = text {
            let st = style(t, 11.0).transform(FontTransform::Rotate90);
            for (ci, class) in bars.classes.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(ci as f64, 0.0));
                root.draw(&Text::new(
                    fit(root, class, &st, 200),
                    (px + 6, py + 6),
                    st.clone(),
                ))?;
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Quality curves

/// Alpha-precision and beta-recall curves against the ideal diagonal.
pub fn quality_curves(
    name: &str,
    alphas: &[f64],
    precision: &[f64],
    recall: &[f64],
    text: Option<Typeface>,
) -> Result<Vec<u8>> {
    draw_png(name, COLUMN_PLOT, |root| {
        let beta = RGBColor(44, 160, 44);
        let legend = vec![
            ("α-precision".to_string(), SYNTHETIC),
            ("β-recall".to_string(), beta),
            ("ideal".to_string(), RGBColor(150, 150, 150)),
        ];
        let top = header(
            root,
            text,
            "Quality curves (synthcity α-precision / β-recall)",
            &legend,
        )?;
        let (_, body) = root.split_vertically(top);
        let mut builder = ChartBuilder::on(&body);
        builder
            .margin_left(4)
            .margin_right(14)
            .margin_bottom(4)
            .x_label_area_size(if text.is_some() { 34 } else { 4 })
            .y_label_area_size(if text.is_some() { 40 } else { 4 });
        let keys = if text.is_some() {
            vec![0.0, 0.25, 0.5, 0.75, 1.0]
        } else {
            Vec::new()
        };
        let mut chart =
            builder.build_cartesian_2d(ticked(0.0..1.0, keys.clone()), ticked(0.0..1.0, keys))?;
        let fmt = |v: &f64| format!("{v:.2}");
        let mut mesh = chart.configure_mesh();
        mesh.bold_line_style(GRID)
            .light_line_style(WHITE)
            .axis_style(INK);
        match text {
            Some(t) => {
                mesh.label_style(style(t, 11.0))
                    .axis_desc_style(style(t, 11.0))
                    .x_desc("α (β)")
                    .y_desc("share")
                    .x_label_formatter(&fmt)
                    .y_label_formatter(&fmt);
            }
            None => {
                mesh.x_labels(0).y_labels(0);
            }
        }
        mesh.draw()?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            RGBColor(150, 150, 150).stroke_width(1),
        )))?;
        for (values, colour) in [(precision, SYNTHETIC), (recall, beta)] {
            let points: Vec<(f64, f64)> = alphas
                .iter()
                .zip(values)
                .filter(|(a, v)| a.is_finite() && v.is_finite())
                .map(|(a, v)| (*a, *v))
                .collect();
            chart.draw_series(std::iter::once(PathElement::new(
                points,
                colour.stroke_width(2),
            )))?;
        }
        Ok(())
    })
}

/// A vertical colour bar at `(x, y)` of size `(w, h)`, framed: `colour(f)` for `f` from 0 at the
/// top to 1 at the bottom.
fn colour_bar(
    root: &Area<'_>,
    (x, y): (i32, i32),
    (w, h): (i32, i32),
    colour: impl Fn(f64) -> RGBColor,
) -> Drawn {
    for k in 0..h {
        let f = f64::from(k) / f64::from((h - 1).max(1));
        root.draw(&Rectangle::new(
            [(x, y + k), (x + w, y + k + 1)],
            colour(f).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x, y), (x + w, y + h)],
        INK.stroke_width(1),
    ))
}

/// Classes drawn in the image-view figure (the page lists them all).
pub const IMAGE_VIEW_CLASSES: usize = 12;

/// Value at either end of the image view's colour scale (z-scores; codes lie in [-1, 1]).
pub const IMAGE_VIEW_TOP: f64 = 2.0;

/// Colour for a value as a share `f` of the scale in [-1, 1]: blue, white at 0, red.
fn diverging(f: f64) -> RGBColor {
    let f = if f.is_finite() {
        f.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (far, t) = if f < 0.0 {
        ((33.0, 102.0, 172.0), -f)
    } else {
        ((178.0, 24.0, 43.0), f)
    };
    let mix = |white: f64, end: f64| (white + (end - white) * t).round() as u8;
    RGBColor(mix(247.0, far.0), mix(247.0, far.1), mix(247.0, far.2))
}

/// The image view: per class (at most [`IMAGE_VIEW_CLASSES`]), the mean image of the real
/// training rows beside the mean image of the synthetic rows; empty pixels grey.
pub fn image_view(
    name: &str,
    view: &crate::image_view::ImageViewReport,
    text: Option<Typeface>,
) -> Result<Vec<u8>> {
    let side = view.side.max(1) as i32;
    let cell = (168 / side).clamp(6, 28);
    let img = cell * side;
    let classes: Vec<_> = view.classes.iter().take(IMAGE_VIEW_CLASSES).collect();
    let label_w = if text.is_some() { 190 } else { 8 };
    let (y0, gap) = (if text.is_some() { 50 } else { 8 }, 16);
    let width = label_w + 2 * img + 3 * gap + 70;
    let height = y0 + classes.len().max(1) as i32 * (img + gap) + 8;
    draw_png(name, (width as u32, height as u32), |root| {
        let draw_image = |x0: i32, y0: i32, values: Option<&Vec<Option<f64>>>| -> Drawn {
            for p in 0..(side * side) as usize {
                let colour = match values.and_then(|v| v.get(p).copied().flatten()) {
                    Some(v) => diverging(v / IMAGE_VIEW_TOP),
                    None => MISSING,
                };
                let (x, y) = (x0 + (p as i32 % side) * cell, y0 + (p as i32 / side) * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    colour.filled(),
                ))?;
            }
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + img, y0 + img)],
                INK.stroke_width(1),
            ))
        };
        let (xr, xs) = (label_w + gap, label_w + 2 * gap + img);
        for (k, c) in classes.iter().enumerate() {
            let y = y0 + k as i32 * (img + gap);
            draw_image(xr, y, c.real.as_ref())?;
            draw_image(xs, y, Some(&c.synthetic))?;
        }
        let (bx, bh) = (xs + img + gap, img.clamp(60, 200));
        colour_bar(root, (bx, y0), (12, bh), |f| diverging(1.0 - 2.0 * f))?;
        let Some(t) = text else { return Ok(()) };
        root.draw(&Text::new(
            "Mean image per class: real training rows | synthetic rows",
            (8, 8),
            style(t, 15.0),
        ))?;
        let head = style(t, 12.0);
        root.draw(&Text::new("real", (xr, y0 - 16), head.clone()))?;
        root.draw(&Text::new("synthetic", (xs, y0 - 16), head))?;
        let left = style(t, 12.0).pos(Pos::new(HPos::Right, VPos::Center));
        for (k, c) in classes.iter().enumerate() {
            let y = y0 + k as i32 * (img + gap) + img / 2;
            let label = fit(root, &c.class, &left, (label_w - 8) as u32);
            root.draw(&Text::new(label, (label_w, y), left.clone()))?;
        }
        let tick = style(t, 10.0).pos(Pos::new(HPos::Left, VPos::Center));
        for (v, y) in [
            (IMAGE_VIEW_TOP, y0),
            (0.0, y0 + bh / 2),
            (-IMAGE_VIEW_TOP, y0 + bh - 1),
        ] {
            root.draw(&Text::new(compact(v), (bx + 16, y), tick.clone()))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_tailed_counts_get_a_log1p_axis() {
        let mut real: Vec<f64> = vec![0.0; 900];
        real.extend((1..=100).map(|k| f64::from(k) * 1e7));
        let h = histogram(&real, &[0.0, 5.0, 1e9]).expect("data");
        assert_eq!(h.axis, Axis::Log1p);
        assert_eq!(h.edges.len(), BINS + 1);
        assert!((h.real.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!((h.synthetic.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!((h.real_rows, h.synthetic_rows), (1000, 3));
    }

    #[test]
    fn small_integers_get_one_bin_each_and_spread_values_a_linear_axis() {
        let h = histogram(&[0.0, 1.0, 1.0, 3.0], &[2.0]).expect("data");
        assert_eq!(h.axis, Axis::Integer);
        assert_eq!(h.edges, vec![-0.5, 0.5, 1.5, 2.5, 3.5]);
        assert_eq!(h.real, vec![0.25, 0.5, 0.0, 0.25]);
        let spread: Vec<f64> = (0..1000).map(|i| f64::from(i) * 1.37).collect();
        assert_eq!(
            histogram(&spread, &spread).expect("data").axis,
            Axis::Linear
        );
    }

    #[test]
    fn non_finite_and_empty_inputs_are_handled() {
        assert!(histogram(&[], &[f64::NAN]).is_none());
        let h = histogram(&[2.5, f64::INFINITY], &[]).expect("data");
        assert_eq!(h.real, vec![1.0]);
        assert_eq!(h.synthetic, vec![0.0]);
    }

    #[test]
    fn rare_categories_are_lumped_as_other() {
        let vocab: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        let mut real: Vec<u32> = Vec::new();
        for code in 0..20u32 {
            real.extend(std::iter::repeat_n(code, 20 - code as usize));
        }
        let s = category_shares(&vocab, &real, &[0, 0, 25], 15).expect("data");
        assert_eq!(s.labels.len(), 16);
        assert_eq!(s.labels[0], "c0");
        assert_eq!(s.labels[15], "other (6)");
        let other_real = (15..20).map(|k| 20 - k).sum::<usize>();
        assert!((s.real[15] - other_real as f64 / real.len() as f64).abs() < 1e-12);
        // The out-of-vocabulary synthetic code only has synthetic rows, so it sorts last.
        assert!((s.synthetic[15] - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.real.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn wide_schemas_get_a_bounded_unlabelled_heatmap() {
        let n = 300;
        let m = CorrelationDiff {
            names: (0..n).map(|i| format!("feature {i}")).collect(),
            diff: (0..n * n).map(|k| Some((k % 7) as f64 / 10.0)).collect(),
        };
        let png = correlation_heatmap("big.png", &m, super::super::font::system()).expect("draw");
        let w = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
        let h = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
        assert!(w <= 1400 && h <= 1400, "{w}x{h}");
        assert!((heat_top(&m) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(12.0), "12");
        assert_eq!(compact(65535.0), "65.5k");
        assert_eq!(compact(1e9), "1G");
        assert_eq!(compact(-2_500_000.0), "-2.5M");
        assert_eq!(compact(0.125), "0.125");
        assert_eq!(compact(f64::NAN), "n/a");
    }

    #[test]
    fn log_ticks_are_powers_of_ten_inside_the_range() {
        let t = log_ticks(0.0, 1e9f64.ln_1p());
        assert_eq!(t[0], 0.0);
        assert!(t.len() <= 8, "{t:?}");
        assert!(t.iter().all(|v| *v <= 1e9f64.ln_1p() + 1e-9));
    }
}
