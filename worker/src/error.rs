//! Errors of the worker crate.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Common(#[from] flowsynth_common::Error),
    #[error(transparent)]
    Model(#[from] flowsynth_model::ModelError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Collective(#[from] flowsynth_collective::Error),
    #[error("cannot reach the coordinator at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("coordinator call `{call}` failed: {status}")]
    Rpc {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("the job was stopped (cancelled or failed elsewhere)")]
    Stopped,
    #[error(
        "not writing {what}: the coordinator has not confirmed this rank's generation for \
         {silent_ms} ms (its lease is {lease_ms} ms; cut off from the coordinator, the job may \
         already run as a newer generation elsewhere)"
    )]
    Fenced {
        what: String,
        silent_ms: u64,
        lease_ms: u64,
    },
    #[error("invalid assignment: {reason}")]
    Assignment { reason: String },
    #[error("device `{device}` is not usable: {reason}")]
    Device { device: String, reason: String },
    #[error("checkpoint {location}: {reason}")]
    Checkpoint { location: String, reason: String },
    #[error(
        "nothing to train: {location} has finished training (its denoiser ran {epochs} epochs). \
         To train the denoiser further, pass --diffusion-epochs above {epochs} (the VAE cannot \
         be trained further once the denoiser learned its latents); to start over, choose a new \
         --checkpoints location"
    )]
    AlreadyTrained { location: String, epochs: usize },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the failure comes from the world around the job rather than the job: a peer lost
    /// or out of step (collective errors and timeouts, replicas that no longer agree) or this
    /// rank stopped for a new generation. The coordinator may restart such a job.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Stopped
                | Error::Fenced { .. }
                | Error::Collective(_)
                | Error::Model(flowsynth_model::ModelError::Replicas { .. })
        )
    }

    pub fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
        move |status| Error::Rpc { call, status }
    }
}
