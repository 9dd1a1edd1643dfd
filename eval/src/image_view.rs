//! Mean images per class for a multimodal model's samples: each feature drawn at the pixel the
//! model's image layout gives it (the sample manifest's `image_view`), real training rows of a
//! class next to the synthetic rows of that class. A generator whose image latent learned the
//! class draws the same picture; a difference shows which features (pixels) it misses.
//!
//! Pixel values are scaled by the real training data alone, so the two pictures share a scale:
//! a numeric column as its z-score (mean and standard deviation of the real training column),
//! a categorical column's code `c` of `K` real training values as `2c / (K - 1) - 1`.

use flowsynth_common::manifest::ImageView;
use serde::{Deserialize, Serialize};

use crate::frame::{Frame, Schema, Values};
use crate::stats::mean_std;

/// The mean images of the classes of the synthetic set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageViewReport {
    pub side: usize,
    /// Feature name at each pixel (row-major; `None` for empty pixels).
    pub pixels: Vec<Option<String>>,
    pub classes: Vec<ClassImages>,
}

/// One class's mean images (`side * side` values, row-major; empty pixels `None`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassImages {
    pub class: String,
    /// Mean over the class's real training rows (`None` when training has none).
    pub real: Option<Vec<Option<f64>>>,
    pub synthetic: Vec<Option<f64>>,
    /// Mean absolute difference of the two images over the feature pixels.
    pub difference: Option<f64>,
}

/// How one feature becomes a pixel value.
enum Scale {
    Numeric { mean: f64, std: f64 },
    Categorical { top: f64 },
}

impl Scale {
    fn of(values: &Values, train_vocab: usize) -> Self {
        match values {
            Values::Numeric(v) => {
                let (mean, std) = mean_std(v.iter().copied());
                Scale::Numeric {
                    mean,
                    std: if std > 1e-12 { std } else { 1.0 },
                }
            }
            _ => Scale::Categorical {
                top: train_vocab.saturating_sub(1) as f64,
            },
        }
    }

    fn pixel(&self, values: &Values, row: usize) -> f64 {
        match (self, values) {
            (Scale::Numeric { mean, std }, Values::Numeric(v)) => (v[row] - mean) / std,
            (Scale::Categorical { top }, Values::Categorical(c)) if *top > 0.0 => {
                2.0 * f64::from(c[row]) / top - 1.0
            }
            _ => 0.0,
        }
    }
}

/// Mean images per class of `synthetic` (classes in code order), against `train`. Features of
/// the layout that the schema does not hold are left empty.
pub fn class_images(
    view: &ImageView,
    schema: &Schema,
    train: &Frame,
    synthetic: &Frame,
    train_vocab: &[usize],
) -> Option<ImageViewReport> {
    let cells = view.side * view.side;
    let mut pixels = vec![None; cells];
    // (schema column, pixel, scale)
    let mut placed = Vec::new();
    for (name, p) in &view.pixels {
        let Some(j) = schema.columns.iter().position(|c| &c.name == name) else {
            continue;
        };
        if *p >= cells {
            continue;
        }
        pixels[*p] = Some(name.clone());
        let scale = Scale::of(&train.columns[j], train_vocab.get(j).copied().unwrap_or(0));
        placed.push((j, *p, scale));
    }
    if placed.is_empty() {
        return None;
    }
    let n_classes = schema.classes.len();
    let mean_image = |f: &Frame, rows: &[usize]| -> Option<Vec<Option<f64>>> {
        if rows.is_empty() {
            return None;
        }
        let mut img = vec![None; cells];
        for (j, p, scale) in &placed {
            let sum: f64 = rows.iter().map(|&r| scale.pixel(&f.columns[*j], r)).sum();
            img[*p] = Some(sum / rows.len() as f64);
        }
        Some(img)
    };
    let train_rows = train.rows_by_class(n_classes);
    let classes = synthetic
        .rows_by_class(n_classes)
        .iter()
        .enumerate()
        .filter_map(|(c, rows)| {
            let synthetic = mean_image(synthetic, rows)?;
            let real = mean_image(train, &train_rows[c]);
            let difference = real.as_ref().map(|r| {
                let d: f64 = placed
                    .iter()
                    .map(|(_, p, _)| (r[*p].unwrap_or(0.0) - synthetic[*p].unwrap_or(0.0)).abs())
                    .sum();
                d / placed.len() as f64
            });
            Some(ClassImages {
                class: schema.classes[c].clone(),
                real,
                synthetic,
                difference,
            })
        })
        .collect();
    Some(ImageViewReport {
        side: view.side,
        pixels,
        classes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::frame::ColumnSpec;

    #[test]
    fn mean_images_place_each_feature_at_its_pixel_on_the_real_scale() {
        let schema = Schema {
            columns: vec![
                ColumnSpec::numeric("bytes", false),
                ColumnSpec::categorical("proto", &["tcp", "udp", "icmp"]),
            ],
            label: "label".into(),
            classes: vec!["normal".into(), "attack".into()],
        };
        // Real: bytes 0 / 2 (mean 1, std 1); proto tcp / icmp. Class 1 is the second row.
        let train = Frame {
            columns: vec![
                Values::Numeric(vec![0.0, 2.0]),
                Values::Categorical(vec![0, 2]),
            ],
            labels: vec![0, 1],
        };
        let synthetic = Frame {
            columns: vec![
                Values::Numeric(vec![3.0, 1.0]),
                Values::Categorical(vec![1, 1]),
            ],
            labels: vec![1, 1],
        };
        let view = ImageView {
            side: 2,
            pixels: vec![("proto".into(), 3), ("bytes".into(), 0), ("gone".into(), 1)],
        };
        let r = class_images(&view, &schema, &train, &synthetic, &[0, 3]).unwrap();
        assert_eq!(
            r.pixels,
            vec![Some("bytes".into()), None, None, Some("proto".into())]
        );
        assert_eq!(r.classes.len(), 1);
        let c = &r.classes[0];
        assert_eq!(c.class, "attack");
        // Real attack row: bytes z = 1, proto icmp = 1. Synthetic: bytes z mean 1, udp = 0.
        assert_eq!(
            c.real.as_ref().unwrap(),
            &vec![Some(1.0), None, None, Some(1.0)]
        );
        assert_eq!(c.synthetic, vec![Some(1.0), None, None, Some(0.0)]);
        assert_eq!(c.difference, Some(0.5));
    }
}
