//! flowsynth worker: the runtime of the model (the `flowsynth-model` crate). It runs training
//! and sampling assignments from the coordinator, glues the trainer to the data-parallel
//! collectives, and writes checkpoints and sampled Parquet to object storage.

pub mod augment;
pub mod ddp;
pub mod error;
pub mod jobs;
pub mod runtime;
pub mod shards;

pub use error::{Error, Result};
pub use runtime::{RunSummary, WorkerOptions, run};
