//! The crate's one error type.
//!
//! Every variant carries enough context to act on without a debugger: which rank saw it, which
//! peer (rank and address) was involved, the rendezvous generation, and for protocol errors what
//! was expected against what arrived. `Error` is `Clone` (I/O errors are shared through an `Arc`)
//! so that a ring can keep its first failure and hand it back on every later call (errors are
//! sticky, see [`Error::Poisoned`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The membership or peer list handed to a constructor is inconsistent.
    #[error("invalid membership: {reason}")]
    InvalidMembership { reason: String },

    /// The collective listener could not be bound.
    #[error("binding the collective listener on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: Arc<io::Error>,
    },

    /// The connection to the next rank could not be set up before `connect_timeout`.
    #[error(
        "rank {rank} (generation {generation}): could not connect to rank {peer_rank} at {peer} \
         within {waited:?}: {reason}"
    )]
    Connect {
        rank: usize,
        generation: u32,
        peer_rank: usize,
        peer: String,
        waited: Duration,
        reason: String,
    },

    /// The next rank answered the handshake with a refusal that waiting cannot fix (wrong job,
    /// wrong token, this rank belongs to an older generation, ...).
    #[error(
        "rank {rank} (generation {generation}): rank {peer_rank} at {peer} refused the handshake: \
         {reason}"
    )]
    Rejected {
        rank: usize,
        generation: u32,
        peer_rank: usize,
        peer: String,
        reason: String,
    },

    /// No valid connection from the previous rank arrived before `connect_timeout`.
    /// `rejected` summarises the connections that were refused meanwhile.
    #[error(
        "rank {rank} (generation {generation}): no valid connection from rank {peer_rank} \
         (expected at {peer}) within {waited:?}{}",
        if rejected.is_empty() { String::new() } else { format!("; refused: {rejected}") }
    )]
    AcceptTimeout {
        rank: usize,
        generation: u32,
        peer_rank: usize,
        peer: String,
        waited: Duration,
        rejected: String,
    },

    /// A socket operation with a peer failed.
    #[error(
        "rank {rank} (generation {generation}): {op}: I/O error with rank {peer_rank} at {peer}: \
         {source}"
    )]
    Io {
        rank: usize,
        generation: u32,
        op: &'static str,
        peer_rank: usize,
        peer: String,
        #[source]
        source: Arc<io::Error>,
    },

    /// A peer made no progress for `io_timeout`.
    #[error(
        "rank {rank} (generation {generation}): {op}: rank {peer_rank} at {peer} made no progress \
         for {waited:?} (io_timeout); it is hung, dead or out of step"
    )]
    Timeout {
        rank: usize,
        generation: u32,
        op: &'static str,
        peer_rank: usize,
        peer: String,
        waited: Duration,
    },

    /// A peer closed its connection in the middle of an operation (it failed or aborted).
    #[error(
        "rank {rank} (generation {generation}): {op}: rank {peer_rank} at {peer} closed the \
         connection; it failed or aborted"
    )]
    PeerClosed {
        rank: usize,
        generation: u32,
        op: &'static str,
        peer_rank: usize,
        peer: String,
    },

    /// A frame from a peer does not match what this rank expects: the ranks are out of step
    /// (different operations, lengths or element types).
    #[error(
        "rank {rank} (generation {generation}): {op}: out of step with rank {peer_rank} at {peer}: \
         expected {expected}, received {found}"
    )]
    Protocol {
        rank: usize,
        generation: u32,
        op: &'static str,
        peer_rank: usize,
        peer: String,
        expected: String,
        found: String,
    },

    /// The abort flag was raised (the coordinator started a new generation or the job stops).
    #[error("rank {rank} (generation {generation}): {op} aborted")]
    Aborted {
        rank: usize,
        generation: u32,
        op: &'static str,
    },

    /// An earlier operation failed; a collective never retries blindly, so it refuses all later
    /// ones. Build a new one (the next rendezvous generation).
    #[error(
        "rank {rank} (generation {generation}): the collective failed earlier and refuses further \
         operations; rebuild it after a new rendezvous. First failure: {cause}"
    )]
    Poisoned {
        rank: usize,
        generation: u32,
        cause: Box<Error>,
    },

    /// The buffer kind does not suit the backend (host memory to NCCL, device memory to TCP).
    #[error("the {backend} collective cannot use a {buffer} buffer: {reason}")]
    UnsupportedBuffer {
        backend: &'static str,
        buffer: &'static str,
        reason: String,
    },

    /// `broadcast` was asked for a root outside `0..world_size`.
    #[error("broadcast root {root} is not a rank of a world of size {world_size}")]
    InvalidRoot { root: usize, world_size: usize },

    /// NCCL (or the CUDA runtime it needs) cannot be loaded on this host.
    #[error("NCCL is not available: {reason}")]
    NcclUnavailable { reason: String },

    /// An NCCL call returned an error.
    #[error(
        "rank {rank} (generation {generation}): {call} failed: {message} (ncclResult_t {code})"
    )]
    Nccl {
        rank: usize,
        generation: u32,
        call: &'static str,
        code: u32,
        message: String,
    },

    /// A CUDA runtime call returned an error.
    #[error("rank {rank}: {call} failed: {message} (cudaError_t {code})")]
    Cuda {
        rank: usize,
        call: &'static str,
        code: i32,
        message: String,
    },
}

impl Error {
    /// Whether this error (or the first failure behind a [`Error::Poisoned`]) comes from the abort
    /// flag rather than from a fault: the caller asked for it.
    pub fn is_aborted(&self) -> bool {
        match self {
            Error::Aborted { .. } => true,
            Error::Poisoned { cause, .. } => cause.is_aborted(),
            _ => false,
        }
    }
}
