//! The one error type of `flowsynth-eval`. Variants name the dataset, file, column or class a
//! user has to look at.

/// Crate result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a dataset or writing the report through the object store.
    #[error(transparent)]
    Store(#[from] flowsynth_common::Error),
    #[error(
        "{location}: not a flowsynth dataset (neither _dataset.json from `convert` nor _sample.json from `sample` is there)"
    )]
    NotADataset { location: String },
    #[error("{location}: cannot parse {file}: {source}")]
    Manifest {
        location: String,
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{location}: {reason}")]
    Parquet { location: String, reason: String },
    #[error("{dataset}: column `{column}` of the training data is missing")]
    MissingColumn { dataset: String, column: String },
    #[error("{dataset}: column `{column}` is {found} here but {expected} in the training data")]
    ColumnKind {
        dataset: String,
        column: String,
        found: String,
        expected: String,
    },
    #[error("{dataset}: label column is `{found}`, the training data's is `{expected}`")]
    LabelColumn {
        dataset: String,
        found: String,
        expected: String,
    },
    #[error("{dataset}: column `{column}` row {row} holds a non-finite value {value}")]
    NonFinite {
        dataset: String,
        column: String,
        row: usize,
        value: f64,
    },
    #[error("{dataset} has no rows{detail}")]
    Empty { dataset: String, detail: String },
    #[error(
        "--augment-only names class `{class}`, which the synthetic data does not have (it has: {available})"
    )]
    UnknownClass { class: String, available: String },
    #[error("invalid option: {0}")]
    Config(String),
    /// A detector could not be trained (the message names the detector and the setting).
    #[error("{detector} on `{setting}`: {reason}")]
    Detector {
        detector: String,
        setting: String,
        reason: String,
    },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}
