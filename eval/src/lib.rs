//! `flowsynth eval`: how good is a synthetic flow dataset, and does it help a detector?
//!
//! Given the real training split, the untouched real test split and a synthetic set, this crate
//! computes fidelity (per-column and per-pair similarity, SDMetrics semantics), quality and
//! privacy (alpha-precision, beta-recall, authenticity, a classifier two-sample test, distance to
//! closest record), domain validity (constraints inferred from the real data) and downstream
//! utility (detectors trained on real, real + synthetic, real + random oversampling and
//! real + SMOTE, scored on the test split), and renders them as `report.json` plus an HTML page
//! with PNG plots.

pub mod classes;
pub mod detection;
pub mod downstream;
pub mod error;
pub mod fidelity;
pub mod frame;
pub mod image_view;
pub mod load;
pub mod quality;
pub mod render;
pub mod report;
pub mod run;
pub mod stats;
pub mod validity;
pub mod verdict;

pub use error::{Error, Result};
