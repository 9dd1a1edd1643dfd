//! The one error type of `flowsynth-common`. Variants carry the context a user needs to fix the
//! input: file, line, column, URL.

use std::path::PathBuf;

/// Crate result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- input files -------------------------------------------------------------------------
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the file is empty (no header and no rows)", path.display())]
    EmptyFile { path: PathBuf },
    #[error("{}: the file has a header but no data rows", path.display())]
    NoRows { path: PathBuf },
    #[error("{}:{line}: row has {found} fields, expected {expected} (as in the header / first row)", path.display())]
    RaggedRow {
        path: PathBuf,
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("{}:{line}: column `{column}` is not valid UTF-8 text", path.display())]
    NotUtf8 {
        path: PathBuf,
        line: u64,
        column: String,
    },
    #[error("{}:{line}: cannot parse CSV: {message}", path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}: label column `{column}` not found; the header has: {available}", path.display())]
    UnknownLabelColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{}: column `{column}` named in --drop does not exist", path.display())]
    UnknownDropColumn { path: PathBuf, column: String },
    #[error("{}: header differs from the first input {}: {detail}", path.display(), first.display())]
    HeaderMismatch {
        path: PathBuf,
        first: PathBuf,
        detail: String,
    },
    #[error("{}:{line}: column `{column}` holds a non-finite value `{value}` (use --non-finite drop|zero to accept such rows)", path.display())]
    NonFinite {
        path: PathBuf,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{}:{line}: column `{column}` was numeric so far but holds `{value}`", path.display())]
    NotNumeric {
        path: PathBuf,
        line: u64,
        column: String,
        value: String,
    },
    #[error("every row was dropped during cleaning ({detail}); nothing to write")]
    AllRowsDropped { detail: String },
    #[error("no feature column is left after dropping identifiers and constant columns")]
    NoFeatures,
    #[error("{}: no --label given and no column is named label, Label or class; pass --label with one of: {available}", path.display())]
    NoLabelColumn { path: PathBuf, available: String },
    #[error(
        "column `{column}` holds text with more than {cap} distinct values, too many for a categorical feature; if it is an identifier or free text, drop it with --drop"
    )]
    TooManyCategories { column: String, cap: usize },
    #[error("{} changed while it was being converted ({detail}); run the conversion again", path.display())]
    InputChanged { path: PathBuf, detail: String },
    #[error("invalid conversion options: {reason}")]
    InvalidOptions { reason: String },

    // ---- datasets and manifests --------------------------------------------------------------
    #[error("cannot parse manifest {location}: {source}")]
    ManifestParse {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid dataset manifest: {reason}")]
    InvalidManifest { reason: String },
    #[error("{location}: no dataset here (no {name}); run `flowsynth convert` first", name = crate::manifest::MANIFEST_NAME)]
    NoDataset { location: String },
    #[error("{location}: {reason}")]
    InvalidPart { location: String, reason: String },
    #[error("Parquet error in {location}: {source}")]
    Parquet {
        location: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("Arrow error in {location}: {source}")]
    Arrow {
        location: String,
        #[source]
        source: arrow_schema::ArrowError,
    },

    // ---- object store ------------------------------------------------------------------------
    #[error("invalid storage URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("object store error at {location}: {source}")]
    ObjectStore {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("invalid checkpoint {location}: {reason}")]
    InvalidCheckpoint { location: String, reason: String },
    #[error("{location} already exists; choose another destination or remove it first")]
    AlreadyExists { location: String },
    #[error(
        "{location}: a dataset is already there; pass --overwrite to replace it, or choose another --out"
    )]
    DatasetExists { location: String },

    // ---- configuration -----------------------------------------------------------------------
    #[error("cannot parse config {location}: {message}")]
    Config { location: String, message: String },

    #[error("I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an object-store error with the location it concerned.
    pub fn store(location: impl std::fmt::Display, source: object_store::Error) -> Self {
        Error::ObjectStore {
            location: location.to_string(),
            source,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
