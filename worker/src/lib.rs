//! flowsynth worker: the compute side. It holds the latent-diffusion model (libtorch via tch),
//! runs training and sampling assignments from the coordinator, and writes checkpoints and
//! sampled Parquet to object storage.

pub mod augment;
pub mod ddp;
pub mod error;
pub mod jobs;
pub mod model;
pub mod runtime;

pub use error::{Error, Result};
pub use runtime::{WorkerOptions, run};
