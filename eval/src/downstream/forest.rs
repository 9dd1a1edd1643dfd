//! Random forest: smartcore's CART classification trees (Gini, a random subset of features at
//! every node, class-stratified bootstrap), bagged here over row subsamples.
//!
//! smartcore's own `RandomForestClassifier` bootstraps every tree from all rows, and its tree
//! scans every row of the training matrix at every node, so a tree costs O(rows x nodes): on
//! NSL-KDD's 126k rows one tree takes ~2 s. Fitting each tree on its own random subsample of
//! `max_samples` rows (scikit-learn's `max_samples`) bounds that cost, and the trees are spread
//! over threads.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::index;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_classifier::{
    RandomForestClassifier, RandomForestClassifierParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;

use super::derive_seed;
use crate::frame::Matrix;
use crate::stats::par_map;

/// Random-forest hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForestOptions {
    pub trees: usize,
    /// Rows each tree is grown from: a random subset of this many training rows (all rows when
    /// there are fewer), which smartcore then bootstraps class by class.
    pub max_samples: usize,
    /// Features tried at each node; `None` = floor(sqrt(features)), the usual choice.
    pub max_features: Option<usize>,
    /// `None` grows trees until their leaves are pure.
    pub max_depth: Option<u16>,
    pub min_samples_leaf: usize,
}

impl Default for ForestOptions {
    fn default() -> Self {
        ForestOptions {
            trees: 48,
            max_samples: 10_000,
            max_features: None,
            max_depth: None,
            min_samples_leaf: 1,
        }
    }
}

impl ForestOptions {
    pub(crate) fn describe(&self) -> String {
        format!(
            "smartcore 0.7 CART (gini), {} trees, each on a random subsample of {} rows \
             (class-stratified bootstrap), max_features={}, max_depth={}, min_samples_leaf={}, \
             majority vote; features: numerics raw, categorical codes",
            self.trees,
            self.max_samples,
            self.max_features
                .map_or("sqrt".to_string(), |m| m.to_string()),
            self.max_depth.map_or("none".to_string(), |d| d.to_string()),
            self.min_samples_leaf
        )
    }
}

type Tree = RandomForestClassifier<f32, u32, DenseMatrix<f32>, Vec<u32>>;

enum Member {
    Tree(Box<Tree>),
    /// A subsample that held a single class (smartcore needs two): a leaf.
    Constant(u32),
}

/// A fitted forest over dense class indices `0..classes`.
pub(crate) struct Forest {
    members: Vec<Member>,
    classes: usize,
}

/// Fits a forest on `x` (row-major) and dense labels `y` in `0..classes`.
pub(crate) fn fit(
    x: &Matrix,
    y: &[u32],
    classes: usize,
    opts: &ForestOptions,
    seed: u64,
    threads: usize,
) -> Result<Forest, String> {
    if opts.trees == 0 || x.rows == 0 || y.len() != x.rows {
        return Err(format!(
            "needs at least one tree and one row with one label each ({} trees, {} rows, {} labels)",
            opts.trees,
            x.rows,
            y.len()
        ));
    }
    let mtry = opts
        .max_features
        .unwrap_or_else(|| (x.cols as f64).sqrt().floor() as usize)
        .clamp(1, x.cols.max(1));
    let fit_one = |t: usize| -> Result<Member, String> {
        let mut rng = SmallRng::seed_from_u64(derive_seed(seed, t as u64));
        let s = opts.max_samples.clamp(1, x.rows);
        let rows: Vec<usize> = if s < x.rows {
            index::sample(&mut rng, x.rows, s).into_vec()
        } else {
            (0..x.rows).collect()
        };
        let sub = x.select(&rows);
        let ys: Vec<u32> = rows.iter().map(|&r| y[r]).collect();
        if ys.iter().all(|&c| c == ys[0]) {
            return Ok(Member::Constant(ys[0]));
        }
        let xm =
            DenseMatrix::new(sub.rows, sub.cols, sub.data, false).map_err(|e| e.to_string())?;
        let mut params = RandomForestClassifierParameters::default()
            .with_n_trees(1)
            .with_m(mtry)
            .with_min_samples_leaf(opts.min_samples_leaf.max(1))
            .with_seed(derive_seed(seed, 1_000_000 + t as u64));
        if let Some(d) = opts.max_depth {
            params = params.with_max_depth(d);
        }
        Tree::fit(&xm, &ys, params)
            .map(|t| Member::Tree(Box::new(t)))
            .map_err(|e| e.to_string())
    };
    let members = par_map(opts.trees, threads, fit_one)
        .into_iter()
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Forest { members, classes })
}

impl Forest {
    /// Majority vote of the trees (ties: the lowest class index).
    pub(crate) fn predict(&self, x: &Matrix, threads: usize) -> Result<Vec<u32>, String> {
        let xm =
            DenseMatrix::new(x.rows, x.cols, x.data.clone(), false).map_err(|e| e.to_string())?;
        let votes_of = |t: usize| -> Result<Vec<u32>, String> {
            match &self.members[t] {
                Member::Tree(tree) => tree.predict(&xm).map_err(|e| e.to_string()),
                Member::Constant(c) => Ok(vec![*c; x.rows]),
            }
        };
        let per_tree = par_map(self.members.len(), threads, votes_of)
            .into_iter()
            .collect::<Result<Vec<_>, String>>()?;
        let k = self.classes;
        let mut votes = vec![0u32; x.rows * k];
        for pred in &per_tree {
            for (i, &c) in pred.iter().enumerate() {
                if (c as usize) < k {
                    votes[i * k + c as usize] += 1;
                }
            }
        }
        Ok((0..x.rows)
            .map(|i| argmax(&votes[i * k..(i + 1) * k]))
            .collect())
    }
}

/// Index of the largest count, the lowest index among ties.
fn argmax(v: &[u32]) -> u32 {
    let mut best = 0;
    for (i, &c) in v.iter().enumerate() {
        if c > v[best] {
            best = i;
        }
    }
    best as u32
}
