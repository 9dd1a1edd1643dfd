//! Collectives for data-parallel training: the element-wise sum of a gradient buffer over all
//! ranks (`all_reduce_sum`) and the distribution of rank 0's parameters (`broadcast`).
//!
//! One trait, [`Collective`], two backends:
//!
//! - [`TcpRing`]: a ring all-reduce (reduce-scatter, then all-gather) over plain TCP for CPU
//!   workers, with peer addresses from the coordinator's rendezvous. No dependency besides the
//!   standard library's sockets; every read and write has a timeout, an abort flag is polled, and
//!   the first failure makes the ring refuse every later operation.
//! - [`Nccl`]: NCCL on CUDA device memory, loaded at run time (this crate builds and runs on
//!   machines without CUDA; [`Nccl::available`] then says no).
//!
//! Both are deterministic: every element's sum is computed in one fixed order on one rank and then
//! copied to the others, so all ranks end with bit-identical results (and so with bit-identical
//! parameters after the same optimiser step).

mod error;
pub mod nccl;
pub mod tcp;

pub use error::{Error, Result};
pub use nccl::{Nccl, NcclUniqueId};
pub use tcp::{TcpConfig, TcpListenerHandle, TcpRing};

/// Element type of a device buffer (host buffers carry it in their slice type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// A buffer handed to a collective: host memory (TCP) or device memory (NCCL).
///
/// Every rank must pass a buffer of the same kind, element type and length; the TCP ring checks
/// this on the wire and fails with [`Error::Protocol`] when ranks disagree.
#[derive(Debug)]
pub enum Buffer<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    /// CUDA device memory (not owned; never freed by the collective). `ptr` is the device address
    /// of `len` elements of `dtype`, contiguous.
    Device {
        ptr: u64,
        len: usize,
        dtype: DType,
    },
}

impl Buffer<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::F32(s) => s.len(),
            Buffer::F64(s) => s.len(),
            Buffer::Device { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Buffer::F32(_) => DType::F32,
            Buffer::F64(_) => DType::F64,
            Buffer::Device { dtype, .. } => *dtype,
        }
    }

    /// `"host"` or `"device"`, for messages.
    pub fn location(&self) -> &'static str {
        match self {
            Buffer::Device { .. } => "device",
            _ => "host",
        }
    }
}

/// Identity of one rendezvous round; checked in the TCP handshake.
///
/// `generation` grows each time the coordinator re-forms the group (after a failure); a
/// connection from another generation is never paired with this one.
#[derive(Debug, Clone)]
pub struct Membership {
    pub job_id: String,
    pub auth_token: String,
    pub generation: u32,
    pub rank: usize,
    pub world_size: usize,
}

impl Membership {
    /// Checks `rank < world_size` and `world_size >= 1`.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            return Err(Error::InvalidMembership {
                reason: "world size 0".into(),
            });
        }
        if self.rank >= self.world_size {
            return Err(Error::InvalidMembership {
                reason: format!(
                    "rank {} is not below world size {}",
                    self.rank, self.world_size
                ),
            });
        }
        Ok(())
    }
}

/// A group of ranks that reduce and broadcast buffers together.
///
/// Every rank must call the same operations in the same order with buffers of the same shape
/// (the collectives are blocking and matched by position). After any error the collective is
/// unusable: a new one must be built for the next rendezvous generation.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// `"tcp"` or `"nccl"`.
    fn backend(&self) -> &'static str;
    /// Element-wise sum across all ranks, in place.
    fn all_reduce_sum(&mut self, buf: Buffer<'_>) -> Result<()>;
    /// Every rank receives `root`'s buffer.
    fn broadcast(&mut self, buf: Buffer<'_>, root: usize) -> Result<()>;
}
