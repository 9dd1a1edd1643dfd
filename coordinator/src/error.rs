//! Errors of the coordinator crate.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS certificate or key (--tls-cert / --tls-key) unusable: {0}")]
    Tls(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error(transparent)]
    Common(#[from] flowsynth_common::Error),
}
