//! Errors of the model layer (preprocessing, networks, optimiser, trainer, sampler).

/// Result of the model layer.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What can go wrong in the model layer. Variants carry the names and numbers a user needs to
/// find the cause (the column, the tensor, the expected shape).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),

    /// The dataset manifest lacks something the model needs.
    #[error("the dataset manifest cannot be modelled: {reason}")]
    InvalidManifest { reason: String },

    /// A configuration value the model cannot work with.
    #[error("invalid model configuration `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },

    /// Rows handed to the model do not have the manifest's layout.
    #[error("rows do not match the dataset layout: {reason}")]
    TableLayout { reason: String },

    /// A numeric value is NaN or infinite (the converter drops such rows; they cannot be encoded).
    #[error("numeric column `{column}` holds a non-finite value at row {row}")]
    NonFinite { column: String, row: usize },

    /// A categorical code outside its column's vocabulary.
    #[error("column `{column}` holds code {code}, but its vocabulary has {cardinality} values")]
    CodeOutOfRange {
        column: String,
        code: u64,
        cardinality: usize,
    },

    /// A class label outside the label vocabulary.
    #[error("label code {label} is out of range: the dataset has {classes} classes")]
    LabelOutOfRange { label: u64, classes: usize },

    /// A tensor (weights, optimiser state, batch) has another shape than this model expects:
    /// usually a checkpoint written with another model configuration or dataset.
    #[error(
        "tensor `{tensor}` has shape {found:?}, expected {expected:?} (was it written with another model configuration or dataset?)"
    )]
    ShapeMismatch {
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    /// A tensor the model needs is absent from the loaded set.
    #[error(
        "tensor `{name}` is missing (the checkpoint is incomplete or from another model version)"
    )]
    MissingTensor { name: String },

    /// A loaded set holds a tensor this model does not know.
    #[error(
        "tensor `{name}` is not part of this model (was the checkpoint written with another configuration?)"
    )]
    UnexpectedTensor { name: String },

    /// A trainable variable received no gradient in `backward`.
    #[error("parameter `{name}` received no gradient")]
    MissingGradient { name: String },

    /// Sampling needs the latent statistics that are fitted when VAE training ends.
    #[error(
        "the model's latent statistics are not fitted: it has not finished VAE training; sample from a checkpoint taken after the VAE stage"
    )]
    NotFitted,

    /// An image layout that does not give every feature its own pixel.
    #[error("invalid image layout: {reason}")]
    InvalidLayout { reason: String },

    /// The multimodal model renders rows as images only once its layout is fitted (at the
    /// start of VAE training).
    #[error("the image layout is not fitted: the multimodal model has not started VAE training")]
    LayoutNotFitted,

    /// There are no rows to train on.
    #[error("no {what} rows to train on")]
    EmptyData { what: &'static str },

    /// `run_epoch` was called after the last stage finished.
    #[error("training has already finished (stage `done`)")]
    TrainingFinished,

    /// The caller's gradient hook asked to stop (e.g. the job was cancelled).
    #[error("training was interrupted")]
    Interrupted,

    /// Combining values with the other ranks of a data-parallel job failed: a collective error
    /// or timeout, or replicas whose parameters no longer agree.
    #[error("data-parallel {operation} failed: {message}")]
    Replicas {
        operation: &'static str,
        message: String,
    },

    /// A [`crate::RowSource`] could not load the rows asked for (its own error, with the file or
    /// object it names).
    #[error("loading training rows failed: {0}")]
    Rows(#[source] Box<dyn std::error::Error + Send + Sync>),
}
