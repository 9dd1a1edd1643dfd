//! The image view of a flow (MAGE-ID, after DeepInsight): every preprocessed feature of a row
//! gets its own pixel of a small square single-channel image, placed so that correlated
//! features sit near each other and a CNN's local filters see related values together.
//!
//! The layout is fitted once per dataset from the training rows: each feature is described by
//! its row of the feature correlation matrix, the two principal components of those rows place
//! the features in the plane, and a linear-sum assignment (minimum total squared distance) gives
//! each feature its own cell of a `side x side` grid, `side = ceil(sqrt(n_features))`. Because
//! no two features share a pixel, the image holds the row exactly: [`ImageLayout::read_back`]
//! of [`ImageLayout::render`] is the identity on the preprocessed row.
//!
//! Pixel values: a numeric column's normal score as it is; a categorical column's code `c` of a
//! `K`-value vocabulary as `2c / (K - 1) - 1` in `[-1, 1]` (0 for a single-value column), which
//! reading back rounds to the code again. Unused pixels are 0 and masked out of the CNN's loss.

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// Running sums over preprocessed feature rows from which the correlation matrix is computed;
/// a data-parallel job sums them over its ranks before fitting, so every rank fits the same
/// layout.
#[derive(Debug)]
pub struct MomentSums {
    /// `[n]` float64: sum of each feature.
    pub sum: Tensor,
    /// `[n, n]` float64: sum of each product of two features.
    pub products: Tensor,
    /// `[1]` float64: rows.
    pub rows: Tensor,
}

impl MomentSums {
    pub fn new(n: i64, device: Device) -> Result<Self> {
        Ok(Self {
            sum: Tensor::f_zeros([n], (Kind::Double, device))?,
            products: Tensor::f_zeros([n, n], (Kind::Double, device))?,
            rows: Tensor::f_zeros([1], (Kind::Double, device))?,
        })
    }

    /// Adds feature rows `x` `[B, n]`.
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        let x = x.f_to_kind(Kind::Double)?;
        self.sum += x.f_sum_dim_intlist(0, false, Kind::Double)?;
        self.products += x.f_transpose(0, 1)?.f_matmul(&x)?;
        self.rows += x.size()[0] as f64;
        Ok(())
    }

    /// The tensors to sum over replicas, in place.
    pub fn tensors(&self) -> Vec<Tensor> {
        vec![
            self.sum.shallow_clone(),
            self.products.shallow_clone(),
            self.rows.shallow_clone(),
        ]
    }

    /// The `n x n` correlation matrix, row-major. A constant feature (no variance) correlates 0
    /// with every other feature and 1 with itself.
    pub fn correlation(&self) -> Result<Vec<f64>> {
        let rows = self.rows.f_double_value(&[0])?;
        if rows < 1.0 {
            return Err(ModelError::EmptyData {
                what: "training (to fit the image layout)",
            });
        }
        let n = self.sum.size()[0] as usize;
        let sum = Vec::<f64>::try_from(self.sum.f_to_device(Device::Cpu)?)?;
        let prod = Vec::<f64>::try_from(self.products.f_to_device(Device::Cpu)?.f_reshape([-1])?)?;
        let mean: Vec<f64> = sum.iter().map(|s| s / rows).collect();
        let cov = |i: usize, j: usize| prod[i * n + j] / rows - mean[i] * mean[j];
        let sd: Vec<f64> = (0..n).map(|i| cov(i, i).max(0.0).sqrt()).collect();
        let mut corr = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                corr[i * n + j] = if i == j {
                    1.0
                } else if sd[i] > 1e-12 && sd[j] > 1e-12 {
                    (cov(i, j) / (sd[i] * sd[j])).clamp(-1.0, 1.0)
                } else {
                    0.0
                };
            }
        }
        Ok(corr)
    }
}

/// Which pixel each feature occupies.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLayout {
    side: usize,
    /// Feature `i` is drawn at pixel `pixel_of[i]` (row-major over the `side x side` grid); all
    /// distinct.
    pixel_of: Vec<usize>,
}

impl ImageLayout {
    /// Side of the square image for `n` features.
    pub fn side_for(n: usize) -> usize {
        let mut side = (n as f64).sqrt().ceil() as usize;
        while side * side < n {
            side += 1;
        }
        side.max(1)
    }

    /// A layout from explicit pixels (checked: in range and distinct).
    pub fn from_pixels(side: usize, pixel_of: Vec<usize>) -> Result<Self> {
        let cells = side * side;
        let mut used = vec![false; cells];
        for (i, &p) in pixel_of.iter().enumerate() {
            match used.get_mut(p) {
                Some(u) if !*u => *u = true,
                _ => {
                    return Err(ModelError::InvalidLayout {
                        reason: format!(
                            "feature {i} is placed at pixel {p}, out of range of a {side}x{side} \
                             image or already taken"
                        ),
                    });
                }
            }
        }
        Ok(Self { side, pixel_of })
    }

    /// Fits the layout to an `n x n` correlation matrix (row-major), deterministically.
    pub fn fit(correlation: &[f64], n: usize) -> Result<Self> {
        if n == 0 || correlation.len() != n * n {
            return Err(ModelError::InvalidLayout {
                reason: format!(
                    "a correlation matrix of {} values for {n} features",
                    correlation.len()
                ),
            });
        }
        let side = Self::side_for(n);
        let coords = principal_plane(correlation, n);
        // Scale each axis onto the grid's extent, then assign features to cells.
        let scaled = fit_to_grid(&coords, side);
        let cells: Vec<(f64, f64)> = (0..side * side)
            .map(|c| ((c / side) as f64, (c % side) as f64))
            .collect();
        let cost: Vec<f64> = scaled
            .iter()
            .flat_map(|&(r, c)| {
                cells
                    .iter()
                    .map(move |&(cr, cc)| (r - cr).powi(2) + (c - cc).powi(2))
            })
            .collect();
        let pixel_of = assign(&cost, n, cells.len());
        Self::from_pixels(side, pixel_of)
    }

    pub fn side(&self) -> usize {
        self.side
    }

    pub fn n_features(&self) -> usize {
        self.pixel_of.len()
    }

    pub fn pixel_of(&self) -> &[usize] {
        &self.pixel_of
    }

    /// `[side * side]` float: 1 on the pixels that hold a feature.
    pub fn mask(&self, device: Device) -> Result<Tensor> {
        let mut m = vec![0f32; self.side * self.side];
        for &p in &self.pixel_of {
            m[p] = 1.0;
        }
        Ok(Tensor::f_from_slice(&m)?.f_to_device(device)?)
    }

    fn pixels(&self, device: Device) -> Result<Tensor> {
        let idx: Vec<i64> = self.pixel_of.iter().map(|&p| p as i64).collect();
        Ok(Tensor::f_from_slice(&idx)?.f_to_device(device)?)
    }

    /// Feature rows `[B, n]` -> images `[B, 1, side, side]` (unused pixels 0).
    pub fn render(&self, features: &Tensor) -> Result<Tensor> {
        let size = features.size();
        if size.len() != 2 || size[1] != self.n_features() as i64 {
            return Err(ModelError::ShapeMismatch {
                tensor: "image features".into(),
                expected: vec![size.first().copied().unwrap_or(0), self.n_features() as i64],
                found: size,
            });
        }
        let rows = size[0];
        let cells = (self.side * self.side) as i64;
        let idx = self
            .pixels(features.device())?
            .f_unsqueeze(0)?
            .f_expand([rows, self.n_features() as i64], false)?;
        let flat = Tensor::f_zeros([rows, cells], (features.kind(), features.device()))?
            .f_scatter(1, &idx, features)?;
        Ok(flat.f_reshape([rows, 1, self.side as i64, self.side as i64])?)
    }

    /// Images `[B, 1, side, side]` -> feature rows `[B, n]`.
    pub fn read_back(&self, images: &Tensor) -> Result<Tensor> {
        let side = self.side as i64;
        let size = images.size();
        if size.len() != 4 || size[1..] != [1, side, side] {
            return Err(ModelError::ShapeMismatch {
                tensor: "images".into(),
                expected: vec![size.first().copied().unwrap_or(0), 1, side, side],
                found: size,
            });
        }
        let flat = images.f_reshape([size[0], side * side])?;
        Ok(flat.f_index_select(1, &self.pixels(images.device())?)?)
    }
}

/// The image view's feature row of preprocessed values: normal scores `[B, n_num]` then the
/// pixel values of the codes `[B, n_cat]` (see [`codes_to_pixels`]).
pub fn features(num: &Tensor, cat: &Tensor, cardinalities: &[i64]) -> Result<Tensor> {
    Ok(Tensor::f_cat(
        &[num, &codes_to_pixels(cat, cardinalities)?],
        1,
    )?)
}

/// Categorical codes `[B, n_cat]` int64 -> pixel values in `[-1, 1]` (see the module docs).
pub fn codes_to_pixels(codes: &Tensor, cardinalities: &[i64]) -> Result<Tensor> {
    let scale = code_scale(cardinalities, codes.device())?;
    Ok(codes.f_to_kind(Kind::Float)? * &scale - scale.f_gt(0.0)?.f_to_kind(Kind::Float)?)
}

/// Pixel values `[B, n_cat]` -> the nearest categorical codes (int64, within each vocabulary).
pub fn pixels_to_codes(pixels: &Tensor, cardinalities: &[i64]) -> Result<Tensor> {
    let device = pixels.device();
    let top: Vec<f32> = cardinalities
        .iter()
        .map(|&k| (k - 1).max(0) as f32)
        .collect();
    let top = Tensor::f_from_slice(&top)?
        .f_to_device(device)?
        .f_unsqueeze(0)?;
    let codes = ((pixels + 1.0) * 0.5 * &top).f_round()?;
    Ok(codes
        .f_clamp_tensor(Some(&top.f_zeros_like()?), Some(&top))?
        .f_to_kind(Kind::Int64)?)
}

/// `[1, n_cat]`: `2 / (K - 1)` per column (0 for single-value columns).
fn code_scale(cardinalities: &[i64], device: Device) -> Result<Tensor> {
    let s: Vec<f32> = cardinalities
        .iter()
        .map(|&k| if k > 1 { 2.0 / (k - 1) as f32 } else { 0.0 })
        .collect();
    Ok(Tensor::f_from_slice(&s)?
        .f_to_device(device)?
        .f_unsqueeze(0)?)
}

/// Projects each feature's correlation row onto the two leading principal axes of the rows.
fn principal_plane(corr: &[f64], n: usize) -> Vec<(f64, f64)> {
    // Centre the rows (features as points), form their covariance.
    let mut centred = corr.to_vec();
    for j in 0..n {
        let mean = (0..n).map(|i| corr[i * n + j]).sum::<f64>() / n as f64;
        for i in 0..n {
            centred[i * n + j] -= mean;
        }
    }
    let mut cov = vec![0.0; n * n];
    for a in 0..n {
        for b in a..n {
            let v = (0..n)
                .map(|i| centred[i * n + a] * centred[i * n + b])
                .sum::<f64>();
            cov[a * n + b] = v;
            cov[b * n + a] = v;
        }
    }
    let (values, vectors) = jacobi_eigen(cov, n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    let axis = |k: usize| -> Vec<f64> {
        let Some(&col) = order.get(k) else {
            return vec![0.0; n];
        };
        let mut v: Vec<f64> = (0..n).map(|i| vectors[i * n + col]).collect();
        // An eigenvector's sign is arbitrary: make its largest component positive.
        let big = v
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
            .unwrap_or(1.0);
        if big < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        v
    };
    let (u, w) = (axis(0), axis(1));
    (0..n)
        .map(|i| {
            let row = &centred[i * n..(i + 1) * n];
            let p = |v: &[f64]| row.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
            (p(&u), p(&w))
        })
        .collect()
}

/// Eigen-decomposition of a symmetric `n x n` matrix by cyclic Jacobi rotations:
/// (eigenvalues, eigenvectors as the columns of a row-major matrix). Deterministic.
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-12 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Maps 2-D points onto `[0, side - 1]^2`, each axis min-max scaled (a constant axis goes to the
/// middle).
fn fit_to_grid(points: &[(f64, f64)], side: usize) -> Vec<(f64, f64)> {
    let top = (side - 1) as f64;
    let scale = |vals: Vec<f64>| -> Vec<f64> {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        vals.iter()
            .map(|&x| {
                if hi - lo > 1e-12 {
                    (x - lo) / (hi - lo) * top
                } else {
                    top / 2.0
                }
            })
            .collect()
    };
    let r = scale(points.iter().map(|p| p.0).collect());
    let c = scale(points.iter().map(|p| p.1).collect());
    r.into_iter().zip(c).collect()
}

/// Minimum-cost assignment of `n` rows to distinct columns of an `n x m` cost matrix
/// (row-major, `n <= m`): the Hungarian method with potentials, O(n^2 m). Returns each row's
/// column.
fn assign(cost: &[f64], n: usize, m: usize) -> Vec<usize> {
    // 1-based arrays, column 0 is the virtual start.
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    let mut owner = vec![0usize; m + 1]; // owner[j]: row matched to column j (0 = none)
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        owner[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = owner[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if used[j] {
                    continue;
                }
                let cur = cost[(i0 - 1) * m + (j - 1)] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[owner[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if owner[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            owner[j0] = owner[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut col_of = vec![0; n];
    for j in 1..=m {
        if owner[j] > 0 {
            col_of[owner[j] - 1] = j - 1;
        }
    }
    col_of
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_optimal_on_a_small_case() {
        // Brute force over all injective maps of 3 rows into 4 columns.
        let cost = [4.0, 1.0, 3.0, 9.0, 2.0, 0.0, 5.0, 1.0, 3.0, 2.0, 2.0, 7.0];
        let got = assign(&cost, 3, 4);
        let total = |a: &[usize]| (0..3).map(|i| cost[i * 4 + a[i]]).sum::<f64>();
        let mut best = f64::INFINITY;
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    if a != b && b != c && a != c {
                        best = best.min(total(&[a, b, c]));
                    }
                }
            }
        }
        assert_eq!(total(&got), best);
    }

    #[test]
    fn jacobi_recovers_a_known_spectrum() {
        let a = vec![2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0];
        let (mut vals, _) = jacobi_eigen(a, 3);
        vals.sort_by(f64::total_cmp);
        for (got, want) in vals.iter().zip([1.0, 3.0, 5.0]) {
            assert!((got - want).abs() < 1e-9, "{vals:?}");
        }
    }

    #[test]
    fn correlated_features_sit_together() {
        // Two blocks of mutually correlated features, uncorrelated across blocks.
        let n = 8;
        let mut corr = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                corr[i * n + j] = if i == j {
                    1.0
                } else if (i < 4) == (j < 4) {
                    0.9
                } else {
                    0.0
                };
            }
        }
        let layout = ImageLayout::fit(&corr, n).unwrap();
        assert_eq!(layout.side(), 3);
        let pos = |i: usize| {
            let p = layout.pixel_of()[i];
            ((p / 3) as f64, (p % 3) as f64)
        };
        let dist = |a: usize, b: usize| {
            let (pa, pb) = (pos(a), pos(b));
            ((pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2)).sqrt()
        };
        let mean = |pairs: &[(usize, usize)]| {
            pairs.iter().map(|&(a, b)| dist(a, b)).sum::<f64>() / pairs.len() as f64
        };
        let within: Vec<_> = (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .filter(|&(a, b)| (a < 4) == (b < 4))
            .collect();
        let across: Vec<_> = (0..4).flat_map(|a| (4..8).map(move |b| (a, b))).collect();
        assert!(mean(&within) < mean(&across));
    }

    #[test]
    fn render_then_read_back_is_the_identity() {
        let layout = ImageLayout::from_pixels(3, vec![4, 0, 8, 2, 6]).unwrap();
        let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 3.0, 1.0, 1.5, -2.5, 0.25, 7.0])
            .reshape([2, 5]);
        let img = layout.render(&x).unwrap();
        assert_eq!(img.size(), vec![2, 1, 3, 3]);
        assert_eq!(img.double_value(&[0, 0, 1, 1]), 0.5);
        assert_eq!(layout.read_back(&img).unwrap(), x);
        let mask = layout.mask(Device::Cpu).unwrap();
        assert_eq!(mask.sum(Kind::Float).double_value(&[]), 5.0);
    }

    #[test]
    fn category_pixels_round_trip() {
        let cards = [1i64, 2, 7, 70];
        let codes = Tensor::from_slice(&[0i64, 1, 6, 69, 0, 0, 3, 35]).reshape([2, 4]);
        let px = codes_to_pixels(&codes, &cards).unwrap();
        assert!(px.abs().max().double_value(&[]) <= 1.0);
        assert_eq!(pixels_to_codes(&px, &cards).unwrap(), codes);
    }

    #[test]
    fn a_bad_layout_is_refused() {
        assert!(ImageLayout::from_pixels(2, vec![0, 0]).is_err());
        assert!(ImageLayout::from_pixels(2, vec![4]).is_err());
        assert!(ImageLayout::fit(&[1.0, 0.0], 2).is_err());
    }
}
