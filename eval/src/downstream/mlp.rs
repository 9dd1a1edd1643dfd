//! A multilayer perceptron in tch (libtorch, CPU): the neural detector of the downstream test.
//!
//! Inputs are the [`Encoder`](crate::frame::Encoder)'s log-standardized numerics plus one-hot
//! categoricals, fitted on the real training rows, because byte and packet counts span many
//! orders of magnitude and raw values would swamp the other inputs. Plain cross-entropy, no class
//! weights: the oversampling settings are what is being compared.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::frame::Matrix;

/// MLP hyper-parameters. The defaults train in about 1.2 s on NSL-KDD's 126k rows on one core:
/// at this size the cost is libtorch's per-operation overhead (about 1,000 Adam steps), not
/// arithmetic, so wider layers cost little but more steps cost a lot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MlpOptions {
    /// Widths of the hidden layers (ReLU after each).
    pub hidden: Vec<usize>,
    pub epochs: usize,
    /// Optimizer steps at least: on small training sets the epochs are raised until this many
    /// steps are taken, so a 3,000-row set is not judged after two dozen updates.
    pub min_steps: usize,
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
}

impl Default for MlpOptions {
    fn default() -> Self {
        MlpOptions {
            hidden: vec![64, 32],
            epochs: 4,
            min_steps: 1_000,
            batch_size: 512,
            learning_rate: 3e-3,
        }
    }
}

impl MlpOptions {
    pub(crate) fn describe(&self) -> String {
        format!(
            "tch (libtorch CPU), hidden layers {:?} with ReLU, Adam lr={}, {} epochs, batch {}, \
             at least {} steps, cross-entropy; features: log-standardized numerics + one-hot \
             categoricals, fitted on the real training rows",
            self.hidden, self.learning_rate, self.epochs, self.batch_size, self.min_steps
        )
    }
}

/// A trained network over dense class indices.
pub(crate) struct Mlp {
    // The network's parameters live in the var store; keep it alive with the network.
    _vs: nn::VarStore,
    net: nn::Sequential,
}

fn as_tensor(x: &Matrix) -> Tensor {
    Tensor::from_slice(&x.data).view([x.rows as i64, x.cols as i64])
}

/// Serialises the use of libtorch's global generator (see [`fit`]).
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains on `x` (row-major, encoded) and dense labels `y` in `0..classes`.
///
/// Deterministic for a given seed and thread count: the weights are initialised after
/// `tch::manual_seed(seed)` and the batches are shuffled by a generator seeded with `seed`.
pub(crate) fn fit(
    x: &Matrix,
    y: &[u32],
    classes: usize,
    opts: &MlpOptions,
    seed: u64,
) -> Result<Mlp, String> {
    if x.rows == 0 {
        return Err("no training rows".into());
    }
    // The initial weights come from libtorch's process-wide generator: seeding it and drawing
    // them happen under one lock, so fits running side by side cannot interleave their draws.
    let (vs, net) = {
        let _rng = TORCH_RNG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut net = nn::seq();
        let mut width = x.cols as i64;
        for (i, &h) in opts.hidden.iter().enumerate() {
            net = net
                .add(nn::linear(
                    vs.root() / format!("hidden{i}"),
                    width,
                    h as i64,
                    Default::default(),
                ))
                .add_fn(|t| t.relu());
            width = h as i64;
        }
        net = net.add(nn::linear(
            vs.root() / "out",
            width,
            classes as i64,
            Default::default(),
        ));
        (vs, net)
    };
    let mut opt = nn::Adam::default()
        .build(&vs, opts.learning_rate)
        .map_err(|e| e.to_string())?;

    let xs = as_tensor(x);
    let ys = Tensor::from_slice(&y.iter().map(|&c| c as i64).collect::<Vec<_>>());
    let mut order: Vec<i64> = (0..x.rows as i64).collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let batch = opts.batch_size.max(1);
    let steps_per_epoch = x.rows.div_ceil(batch);
    let epochs = opts.epochs.max(opts.min_steps.div_ceil(steps_per_epoch));
    for _ in 0..epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            let idx = Tensor::from_slice(chunk);
            let logits = net.forward(&xs.index_select(0, &idx));
            let loss = logits.cross_entropy_for_logits(&ys.index_select(0, &idx));
            opt.backward_step(&loss);
        }
    }
    Ok(Mlp { _vs: vs, net })
}

impl Mlp {
    /// The highest-scoring class per row.
    pub(crate) fn predict(&self, x: &Matrix) -> Result<Vec<u32>, String> {
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        let pred = tch::no_grad(|| self.net.forward(&as_tensor(x)).argmax(-1, false));
        let pred = Vec::<i64>::try_from(&pred.to_kind(Kind::Int64)).map_err(|e| e.to_string())?;
        Ok(pred.into_iter().map(|c| c as u32).collect())
    }
}
