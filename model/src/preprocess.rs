//! Rows <-> model tensors: the normal-output quantile transform for numeric columns and ordinal
//! codes for categoricals, both fixed by the dataset manifest (global statistics, so every worker
//! encodes identically).
//!
//! The numeric transform is a normal-output quantile transform rebuilt from the manifest's
//! quantile grid: a value goes to its empirical CDF by linear interpolation over the grid, is
//! clipped to [1e-7, 1 - 1e-7] and mapped through the standard normal quantile function. Decoding
//! runs backwards (normal CDF, then interpolation from probabilities to the grid), so decoded
//! values always lie within the training range [min, max].
//!
//! Between point masses this is exactly scikit-learn's
//! `QuantileTransformer(output_distribution="normal")`, which TabSyn uses (tested against values
//! computed by scikit-learn). It departs from it, by design, at a value that holds a block of
//! probability mass, the common case in flow data (zero payload bytes, zero error rates, a
//! saturated rate of 1.0). scikit-learn sends every value within 1e-7 of the column's minimum to
//! the clip bound (about -5.2) and every value at the maximum to +5.2, so a column that is 30%
//! zeros becomes 30% of rows at -5.2 next to a continuous part starting at -0.5: an outlier the
//! size of the whole remaining range that dominates the reconstruction loss. Here a point mass,
//! at the minimum, the maximum or inside, maps to the middle of its probability block (the zeros
//! of that column to probit(0.15) = -1.04), and the whole block decodes back to the value
//! exactly, so the model sees a well-placed mode and the transform is exactly invertible on it.

use flowsynth_common::manifest::{ColumnRole, DType, DatasetManifest};
use flowsynth_common::table::Table;
use tch::{Device, Kind, Tensor};

use super::error::{ModelError, Result};

/// CDF values are clipped to [BOUNDS, 1 - BOUNDS] before the probit (scikit-learn's
/// `BOUNDS_THRESHOLD`), so the transformed values lie within about +-5.2.
pub const BOUNDS: f64 = 1e-7;

/// Model tensors for a set of rows. All three have the same number of rows `N`.
#[derive(Debug)]
pub struct Batch {
    /// `[N, n_num]` float32: quantile-transformed numeric columns.
    pub num: Tensor,
    /// `[N, n_cat]` int64: ordinal codes of the categorical columns.
    pub cat: Tensor,
    /// `[N]` int64: class codes.
    pub label: Tensor,
}

impl Batch {
    pub fn rows(&self) -> i64 {
        self.label.size().first().copied().unwrap_or(0)
    }

    /// The rows at `index` (`[M]` int64 on the batch's device).
    pub fn select(&self, index: &Tensor) -> Result<Batch> {
        Ok(Batch {
            num: self.num.f_index_select(0, index)?,
            cat: self.cat.f_index_select(0, index)?,
            label: self.label.f_index_select(0, index)?,
        })
    }
}

/// The empirical CDF of one numeric column, given by its quantiles at probabilities
/// `i / (n - 1)`.
#[derive(Debug, Clone)]
pub struct QuantileMap {
    quantiles: Vec<f64>,
    references: Vec<f64>,
}

impl QuantileMap {
    /// `quantiles` must hold at least two finite, non-decreasing values.
    pub fn new(column: &str, quantiles: Vec<f64>) -> Result<Self> {
        if quantiles.len() < 2
            || quantiles.iter().any(|q| !q.is_finite())
            || quantiles.windows(2).any(|w| w[0] > w[1])
        {
            return Err(ModelError::InvalidManifest {
                reason: format!(
                    "numeric column `{column}` needs at least two finite, non-decreasing quantiles"
                ),
            });
        }
        let n = quantiles.len();
        let references = (0..n).map(|i| i as f64 / (n - 1) as f64).collect();
        Ok(Self {
            quantiles,
            references,
        })
    }

    pub fn min(&self) -> f64 {
        self.quantiles[0]
    }

    pub fn max(&self) -> f64 {
        self.quantiles[self.quantiles.len() - 1]
    }

    /// Empirical CDF of `x` in [0, 1]. Where `x` equals a run of repeated quantiles (a value that
    /// holds a block of probability mass, e.g. the zeros of a count column) this is the middle of
    /// the run's probability range: the mean of interpolating from the left and from the right,
    /// as scikit-learn does. Outside [min, max] it is 0 or 1.
    pub fn cdf(&self, x: f64) -> f64 {
        let q = &self.quantiles;
        let r = &self.references;
        let n = q.len();
        // From the right: the last knot <= x (numpy.interp on the ascending grid).
        let upper = match q.partition_point(|&v| v <= x) {
            0 => r[0],
            j if j == n => r[n - 1],
            j => {
                let j = j - 1;
                r[j] + (x - q[j]) * (r[j + 1] - r[j]) / (q[j + 1] - q[j])
            }
        };
        // From the left: the first knot >= x (numpy.interp on the negated, reversed grid).
        let lower = match q.partition_point(|&v| v < x) {
            0 => r[0],
            k if k == n => r[n - 1],
            k if q[k] == x => r[k],
            k => r[k - 1] + (x - q[k - 1]) * (r[k] - r[k - 1]) / (q[k] - q[k - 1]),
        };
        0.5 * (upper + lower)
    }

    /// The value at probability `u` (linear interpolation over the grid); within [min, max].
    pub fn quantile(&self, u: f64) -> f64 {
        let q = &self.quantiles;
        let r = &self.references;
        let n = q.len();
        if u.is_nan() || u <= 0.0 {
            return q[0];
        }
        if u >= 1.0 {
            return q[n - 1];
        }
        // References are strictly increasing: the segment is unique.
        let j = r.partition_point(|&v| v <= u).clamp(1, n - 1) - 1;
        let t = (u - r[j]) / (r[j + 1] - r[j]);
        (q[j] + t * (q[j + 1] - q[j])).clamp(q[0], q[n - 1])
    }

    /// Value -> standard-normal score: scikit-learn's normal-output QuantileTransformer, except
    /// at a point mass (see the module docs), which maps to the middle of its probability block.
    pub fn forward(&self, x: f64) -> f64 {
        probit(self.cdf(x).clamp(BOUNDS, 1.0 - BOUNDS))
    }
}

// Coefficients of Wichura's AS 241 (Applied Statistics 37(3), 1988), lowest degree first.
#[allow(clippy::excessive_precision)]
const AS241_A: [f64; 8] = [
    3.3871328727963666080e0,
    1.3314166789178437745e+2,
    1.9715909503065514427e+3,
    1.3731693765509461125e+4,
    4.5921953931549871457e+4,
    6.7265770927008700853e+4,
    3.3430575583588128105e+4,
    2.5090809287301226727e+3,
];
#[allow(clippy::excessive_precision)]
const AS241_B: [f64; 8] = [
    1.0,
    4.2313330701600911252e+1,
    6.8718700749205790830e+2,
    5.3941960214247511077e+3,
    2.1213794301586595867e+4,
    3.9307895800092710610e+4,
    2.8729085735721942674e+4,
    5.2264952788528545610e+3,
];
#[allow(clippy::excessive_precision)]
const AS241_C: [f64; 8] = [
    1.42343711074968357734e0,
    4.63033784615654529590e0,
    5.76949722146069140550e0,
    3.64784832476320460504e0,
    1.27045825245236838258e0,
    2.41780725177450611770e-1,
    2.27238449892691845833e-2,
    7.74545014278341407640e-4,
];
#[allow(clippy::excessive_precision)]
const AS241_D: [f64; 8] = [
    1.0,
    2.05319162663775882187e0,
    1.67638483018380384940e0,
    6.89767334985100004550e-1,
    1.48103976427480074590e-1,
    1.51986665636164571966e-2,
    5.47593808499534494600e-4,
    1.05075007164441684324e-9,
];
#[allow(clippy::excessive_precision)]
const AS241_E: [f64; 8] = [
    6.65790464350110377720e0,
    5.46378491116411436990e0,
    1.78482653991729133580e0,
    2.96560571828504891230e-1,
    2.65321895265761230930e-2,
    1.24266094738807843860e-3,
    2.71155556874348757815e-5,
    2.01033439929228813265e-7,
];
#[allow(clippy::excessive_precision)]
const AS241_F: [f64; 8] = [
    1.0,
    5.99832206555887937690e-1,
    1.36929880922735805310e-1,
    1.48753612908506148525e-2,
    7.86869131145613259100e-4,
    1.84631831751005468180e-5,
    1.42151175831644588870e-7,
    2.04426310338993978564e-15,
];

/// Polynomial with coefficients lowest degree first, by Horner's rule.
fn horner(c: &[f64; 8], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
}

/// The standard normal quantile function (inverse CDF), Wichura's algorithm AS 241 (PPND16),
/// accurate to about 1e-16 relative. `p` outside (0, 1) gives -inf / +inf (NaN for NaN).
pub fn probit(p: f64) -> f64 {
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * horner(&AS241_A, r) / horner(&AS241_B, r);
    }
    let r = (-(if q < 0.0 { p } else { 1.0 - p }).ln()).sqrt();
    let value = if r <= 5.0 {
        let r = r - 1.6;
        horner(&AS241_C, r) / horner(&AS241_D, r)
    } else {
        let r = r - 5.0;
        horner(&AS241_E, r) / horner(&AS241_F, r)
    };
    if q < 0.0 { -value } else { value }
}

/// Encodes rows for the model and decodes model output back to rows, following one manifest.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    numeric_names: Vec<String>,
    maps: Vec<QuantileMap>,
    /// Per numeric column: whether it holds whole numbers (decoded values are rounded).
    integer: Vec<bool>,
    categorical_names: Vec<String>,
    cardinalities: Vec<i64>,
    classes: usize,
}

impl Preprocessor {
    /// Reads the numeric quantile grids, categorical vocabulary sizes and the class count from
    /// the manifest (feature columns in manifest order, as [`Table`] holds them).
    pub fn new(manifest: &DatasetManifest) -> Result<Self> {
        let mut numeric_names = Vec::new();
        let mut maps = Vec::new();
        let mut integer = Vec::new();
        let mut categorical_names = Vec::new();
        let mut cardinalities = Vec::new();
        let mut classes = None;
        for c in &manifest.columns {
            match c.role {
                ColumnRole::Numeric => {
                    let stats = c
                        .stats
                        .as_ref()
                        .ok_or_else(|| ModelError::InvalidManifest {
                            reason: format!("numeric column `{}` has no statistics", c.name),
                        })?;
                    maps.push(QuantileMap::new(&c.name, stats.quantiles.clone())?);
                    numeric_names.push(c.name.clone());
                    integer.push(c.dtype == DType::Int64 || stats.whole_numbers);
                }
                ColumnRole::Categorical | ColumnRole::Label => {
                    let k = c
                        .vocabulary
                        .as_ref()
                        .map(Vec::len)
                        .filter(|&k| k > 0)
                        .ok_or_else(|| ModelError::InvalidManifest {
                            reason: format!("column `{}` has no vocabulary", c.name),
                        })?;
                    if c.role == ColumnRole::Label {
                        if classes.is_some() {
                            return Err(ModelError::InvalidManifest {
                                reason: "more than one label column".into(),
                            });
                        }
                        classes = Some(k);
                    } else {
                        categorical_names.push(c.name.clone());
                        cardinalities.push(k as i64);
                    }
                }
            }
        }
        let classes = classes.ok_or_else(|| ModelError::InvalidManifest {
            reason: "no label column".into(),
        })?;
        if maps.is_empty() && cardinalities.is_empty() {
            return Err(ModelError::InvalidManifest {
                reason: "the dataset has no feature columns (only a label)".into(),
            });
        }
        Ok(Self {
            numeric_names,
            maps,
            integer,
            categorical_names,
            cardinalities,
            classes,
        })
    }

    /// The feature columns' names, numeric then categorical (the order of a [`Batch`]'s
    /// values and of the image view's features).
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.numeric_names
            .iter()
            .chain(&self.categorical_names)
            .map(String::as_str)
    }

    pub fn n_num(&self) -> usize {
        self.maps.len()
    }

    pub fn n_cat(&self) -> usize {
        self.cardinalities.len()
    }

    /// Vocabulary size of each categorical feature, in order.
    pub fn cardinalities(&self) -> &[i64] {
        &self.cardinalities
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn quantile_map(&self, numeric_column: usize) -> Option<&QuantileMap> {
        self.maps.get(numeric_column)
    }

    /// Checks that `table` has this manifest's columns, equal lengths, finite numerics and codes
    /// within their vocabularies (an out-of-range code would index outside an embedding).
    pub fn check(&self, table: &Table) -> Result<()> {
        let n = table.rows();
        if table.numeric.len() != self.n_num() || table.categorical.len() != self.n_cat() {
            return Err(ModelError::TableLayout {
                reason: format!(
                    "{} numeric and {} categorical columns, expected {} and {}",
                    table.numeric.len(),
                    table.categorical.len(),
                    self.n_num(),
                    self.n_cat()
                ),
            });
        }
        for (col, name) in table.numeric.iter().zip(&self.numeric_names) {
            if col.len() != n {
                return Err(ModelError::TableLayout {
                    reason: format!("column `{name}` has {} rows, the labels {n}", col.len()),
                });
            }
            if let Some(row) = col.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite {
                    column: name.clone(),
                    row,
                });
            }
        }
        for ((col, name), &k) in table
            .categorical
            .iter()
            .zip(&self.categorical_names)
            .zip(&self.cardinalities)
        {
            if col.len() != n {
                return Err(ModelError::TableLayout {
                    reason: format!("column `{name}` has {} rows, the labels {n}", col.len()),
                });
            }
            if let Some(&code) = col.iter().find(|&&c| i64::from(c) >= k) {
                return Err(ModelError::CodeOutOfRange {
                    column: name.clone(),
                    code: code.into(),
                    cardinality: k as usize,
                });
            }
        }
        if let Some(&label) = table.labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(ModelError::LabelOutOfRange {
                label: label.into(),
                classes: self.classes,
            });
        }
        Ok(())
    }

    /// Encodes rows as model tensors on `device` (see [`Batch`] for shapes).
    pub fn encode(&self, table: &Table, device: Device) -> Result<Batch> {
        self.check(table)?;
        let n = table.rows() as i64;
        // Column-major buffers, transposed once in libtorch.
        let mut num = Vec::with_capacity(table.rows() * self.n_num());
        for (col, map) in table.numeric.iter().zip(&self.maps) {
            num.extend(col.iter().map(|&v| map.forward(v) as f32));
        }
        let num = Tensor::f_from_slice(&num)?
            .f_reshape([self.n_num() as i64, n])?
            .f_t_copy()?
            .f_to_device(device)?;
        let mut cat = Vec::with_capacity(table.rows() * self.n_cat());
        for col in &table.categorical {
            cat.extend(col.iter().map(|&c| i64::from(c)));
        }
        let cat = Tensor::f_from_slice(&cat)?
            .f_reshape([self.n_cat() as i64, n])?
            .f_t_copy()?
            .f_to_device(device)?;
        let labels: Vec<i64> = table.labels.iter().map(|&l| i64::from(l)).collect();
        let label = Tensor::f_from_slice(&labels)?.f_to_device(device)?;
        Ok(Batch { num, cat, label })
    }

    /// Decodes model output to rows: `num` `[N, n_num]` (normal scores, any float kind and
    /// device), `cat_codes` `[N, n_cat]` (codes), `labels` (N class codes, copied as given).
    /// Numeric values come back within each column's [min, max]; integer columns are rounded to
    /// integers (the values the Parquet writer stores, so copies of real rows can be recognised).
    pub fn decode(&self, num: &Tensor, cat_codes: &Tensor, labels: &[u32]) -> Result<Table> {
        let n = labels.len();
        let expect = |name: &str, t: &Tensor, cols: usize| -> Result<()> {
            let expected = vec![n as i64, cols as i64];
            if t.size() != expected {
                return Err(ModelError::ShapeMismatch {
                    tensor: name.to_string(),
                    expected,
                    found: t.size(),
                });
            }
            Ok(())
        };
        expect("decoded numeric values", num, self.n_num())?;
        expect("decoded categorical codes", cat_codes, self.n_cat())?;
        // Normal CDF in double precision (libtorch's ndtr is accurate in the tails), column-major.
        let u: Vec<f64> = Vec::try_from(
            num.f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Double)?
                .f_special_ndtr()?
                .f_t_copy()?
                .f_reshape([-1])?,
        )?;
        let numeric = self
            .maps
            .iter()
            .enumerate()
            .map(|(c, map)| {
                let values = u[c * n..(c + 1) * n].iter().map(|&p| map.quantile(p));
                if self.integer[c] {
                    values.map(f64::round).collect()
                } else {
                    values.collect()
                }
            })
            .collect();
        let codes: Vec<i64> = Vec::try_from(
            cat_codes
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Int64)?
                .f_t_copy()?
                .f_reshape([-1])?,
        )?;
        let mut categorical = Vec::with_capacity(self.n_cat());
        for (c, (&k, name)) in self
            .cardinalities
            .iter()
            .zip(&self.categorical_names)
            .enumerate()
        {
            let col = &codes[c * n..(c + 1) * n];
            let mut out = Vec::with_capacity(n);
            for &code in col {
                if !(0..k).contains(&code) {
                    return Err(ModelError::CodeOutOfRange {
                        column: name.clone(),
                        code: code as u64,
                        cardinality: k as usize,
                    });
                }
                out.push(code as u32);
            }
            categorical.push(out);
        }
        Ok(Table {
            numeric,
            categorical,
            labels: labels.to_vec(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn probit_matches_known_quantiles() {
        let cases = [
            (0.975, 1.959_963_984_540_054),
            (0.5, 0.0),
            (0.841_344_746_068_542_9, 1.0),
            (0.001, -3.090_232_306_167_813_5),
            (1e-7, -5.199_337_582_192_817),
            (1e-20, -9.262_340_089_798_405),
        ];
        for (p, z) in cases {
            let got = probit(p);
            assert!(
                (got - z).abs() <= 1e-12 * z.abs().max(1.0),
                "probit({p}) = {got}, expected {z}"
            );
        }
        assert_eq!(probit(0.0), f64::NEG_INFINITY);
        assert_eq!(probit(1.0), f64::INFINITY);
    }

    #[test]
    fn probit_agrees_with_libtorch_ndtri() {
        let ps: Vec<f64> = (1..2000)
            .map(|i| i as f64 / 2000.0)
            .chain([1e-9, 1e-5, 0.02, 0.07, 0.93, 1.0 - 1e-9])
            .collect();
        let torch: Vec<f64> = Vec::try_from(Tensor::from_slice(&ps).special_ndtri()).unwrap();
        for (p, t) in ps.iter().zip(torch) {
            let z = probit(*p);
            assert!((z - t).abs() < 1e-9 * t.abs().max(1.0), "p={p}: {z} vs {t}");
            // And it inverts the CDF.
            let back = Tensor::from_slice(&[z]).special_ndtr().double_value(&[0]);
            assert!(
                (back - p).abs() < 1e-12 + 1e-9 * p,
                "p={p}: cdf(probit) = {back}"
            );
        }
    }

    /// scikit-learn 1.9.1's output on the column of `model/tests/reference/quantile_reference.py`.
    #[test]
    fn quantile_transform_matches_scikit_learn_off_the_point_masses() {
        #[allow(clippy::excessive_precision)]
        let quantiles = vec![
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            3.3000000000000043,
            7.5,
            11.400000000000002,
            19.200000000000006,
            27.0,
            34.800000000000004,
            42.60000000000001,
            50.40000000000001,
            58.199999999999996,
            66.0,
            73.80000000000001,
            81.60000000000001,
            89.4,
            97.19999999999999,
            105.0,
        ];
        let m = QuantileMap::new("c", quantiles).unwrap();
        #[allow(clippy::excessive_precision)]
        let sklearn = [
            (0.7, -0.6414780751136814),
            (3.0, -0.5375191062027732),
            (7.5, -0.3853204664075676),
            (10.0, -0.3000977910289582),
            (33.3, 0.10140273023843814),
            (60.0, 0.5578847628395989),
            (104.0, 2.4887165662938613),
            // The clip bounds: scikit-learn clips at ppf(1e-7 - eps), 4e-10 away.
            (105.0, 5.19933758270342),
            (-1.0, -5.199337582605575),
            (200.0, 5.19933758270342),
        ];
        for (x, want) in sklearn {
            let got = m.forward(x);
            assert!(
                (got - want).abs() < 1e-9,
                "{x}: {got} vs scikit-learn {want}"
            );
        }
        // The point mass at the minimum (quantile blocks 0..5 of 20, probability [0, 0.25]):
        // scikit-learn gives -5.199337582605575; here the middle of the block, probit(0.125).
        assert!((m.forward(0.0) - probit(0.125)).abs() < 1e-12);
        assert_eq!(round_trip(&m, 0.0), 0.0);
    }

    #[test]
    fn every_point_mass_decodes_back_exactly() {
        // Masses at the minimum, inside the range and at the maximum.
        let mut q = vec![0.0; 20];
        q.extend((1..=40).map(|i| i as f64 * 0.25));
        q.extend([10.0; 15]);
        q.extend((41..=60).map(|i| i as f64 * 0.25));
        q.extend([15.0; 25]);
        let m = QuantileMap::new("c", q).unwrap();
        for x in [0.0, 10.0, 15.0] {
            assert_eq!(round_trip(&m, x), x, "{x}");
        }
        // The whole block of a mass decodes to it, not only its midpoint.
        let u = 0.19 * 19.0 / 119.0;
        assert_eq!(m.quantile(u), 0.0);
    }

    fn map() -> QuantileMap {
        // A count-like column: 30% zeros, then a spread.
        let mut q = vec![0.0; 31];
        q.extend((1..=70).map(|i| i as f64 * 1.5));
        QuantileMap::new("c", q).unwrap()
    }

    fn round_trip(m: &QuantileMap, x: f64) -> f64 {
        let z = m.forward(x);
        let u = Tensor::from_slice(&[z]).special_ndtr().double_value(&[0]);
        m.quantile(u)
    }

    #[test]
    fn quantile_transform_round_trips_values_in_range() {
        let m = map();
        for i in 0..=1000 {
            let x = i as f64 * 0.105;
            let back = round_trip(&m, x);
            assert!((back - x).abs() < 1e-6 * x.abs().max(1.0), "{x} -> {back}");
        }
    }

    #[test]
    fn quantile_transform_is_monotone_and_clamps_out_of_range() {
        let m = map();
        let xs: Vec<f64> = (-100..1200).map(|i| i as f64 * 0.1).collect();
        let zs: Vec<f64> = xs.iter().map(|&x| m.forward(x)).collect();
        assert!(zs.windows(2).all(|w| w[0] <= w[1]), "not monotone");
        assert!(zs.iter().all(|z| z.abs() <= 5.2));
        // Out of range maps to the extremes and decodes to min / max (up to the 1e-7 clip).
        let tol = 1e-6 * (m.max() - m.min());
        assert!((round_trip(&m, -50.0) - m.min()).abs() <= tol);
        assert!((round_trip(&m, 1e9) - m.max()).abs() <= tol);
        // Arbitrary scores decode within [min, max].
        for z in [-40.0, -6.0, -1.0, 0.3, 7.0, 40.0] {
            let u = Tensor::from_slice(&[z]).special_ndtr().double_value(&[0]);
            let v = m.quantile(u);
            assert!((m.min()..=m.max()).contains(&v), "{z} -> {v}");
        }
    }

    #[test]
    fn repeated_quantiles_map_to_the_middle_of_their_mass() {
        let m = map();
        // The zeros hold probability [0, 0.3]: they map to the middle, 0.15.
        assert!((m.cdf(0.0) - 0.15).abs() < 1e-12, "{}", m.cdf(0.0));
        // And decode back to exactly zero.
        assert_eq!(round_trip(&m, 0.0), 0.0);
        // A constant column maps to 0 and back.
        let c = QuantileMap::new("k", vec![4.0; 10]).unwrap();
        assert_eq!(c.forward(4.0), 0.0);
        assert_eq!(round_trip(&c, 4.0), 4.0);
    }

    #[test]
    fn invalid_quantiles_are_rejected() {
        assert!(QuantileMap::new("a", vec![1.0]).is_err());
        assert!(QuantileMap::new("a", vec![2.0, 1.0]).is_err());
        assert!(QuantileMap::new("a", vec![0.0, f64::NAN]).is_err());
    }
}
