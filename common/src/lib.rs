//! Data layer of flowsynth: the dataset manifest, CSV -> Parquet conversion, Parquet and
//! object-store I/O and the typed job configuration. Everything here is independent of the model
//! and of the control plane, so both the coordinator and the workers build on it.

pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod dataset;
pub mod error;
pub mod manifest;
pub mod store;
pub mod table;

pub use error::{Error, Result};
