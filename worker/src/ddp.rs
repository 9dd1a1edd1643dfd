//! Data-parallel glue between the [`Trainer`](flowsynth_model::Trainer) and a
//! [`Collective`]: gradient buckets, statistics sums and replica checksums.
//!
//! tch exposes neither autograd hooks nor CUDA streams, so unlike PyTorch DDP the gradients are
//! reduced after `backward()` returns, bucket by bucket: each bucket is one contiguous buffer
//! (a `cat` of flattened gradients) reduced with one collective call, then copied back. Bucketing
//! trades the per-call latency of many small reductions against the memory of one big copy;
//! 25 MiB is PyTorch DDP's default.
//!
//! Each rank's loss is already weighted by its share of the global batch, so the collective sums
//! (it does not average). Every rank ends a step with bit-identical gradients (the collectives
//! reduce in one fixed order and distribute the result) and so with bit-identical parameters;
//! a checksum over all parameters, compared across ranks at the start and every few steps,
//! catches anything that breaks this (a non-deterministic kernel, a rank resumed from another
//! checkpoint) before it silently trains N different models.

use flowsynth_collective::{Buffer, Collective, DType};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use flowsynth_model::{ModelError, Replicas, Result};

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// A trainer's [`Replicas`] backed by a collective. `F` runs after every optimiser step besides
/// the replica checks (progress, stop requests).
pub struct DataParallel<F> {
    /// `None`: training alone (world size 1).
    collective: Option<Box<dyn Collective>>,
    bucket_bytes: usize,
    checksum_every: u64,
    steps: u64,
    on_step: F,
    /// Time spent inside collective calls (waiting for peers included) since the last
    /// [`DataParallel::take_collective_time`].
    collective_time: std::time::Duration,
    /// Bucket buffers kept between steps (see [`DataParallel::bucket_buffer`]).
    buffers: Vec<Tensor>,
}

/// Bucket buffers kept: the gradient buckets of both stages plus the few small statistics sums.
const MAX_CACHED_BUFFERS: usize = 32;

fn collective_error(
    operation: &'static str,
) -> impl FnOnce(flowsynth_collective::Error) -> ModelError {
    move |e| ModelError::Replicas {
        operation,
        message: e.to_string(),
    }
}

impl<F: FnMut() -> Result<()>> DataParallel<F> {
    /// `checksum_every`: compare parameter checksums across ranks every this many steps (0: only
    /// when [`DataParallel::verify_replicas`] is called).
    pub fn new(
        collective: Option<Box<dyn Collective>>,
        bucket_bytes: usize,
        checksum_every: u64,
        on_step: F,
    ) -> Self {
        Self {
            collective,
            bucket_bytes: bucket_bytes.max(4),
            checksum_every,
            steps: 0,
            on_step,
            collective_time: std::time::Duration::ZERO,
            buffers: Vec::new(),
        }
    }

    pub fn rank(&self) -> usize {
        self.collective.as_ref().map_or(0, |c| c.rank())
    }

    pub fn world_size(&self) -> usize {
        self.collective.as_ref().map_or(1, |c| c.world_size())
    }

    /// Time spent in collective calls since the last call (for the epoch log: how much of an
    /// epoch went to communication and to waiting for slower ranks).
    pub fn take_collective_time(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.collective_time)
    }

    /// A contiguous buffer for one bucket, reused across steps: every step reduces the same
    /// buckets, so after the first step no bucket allocates. Buckets are reduced one after the
    /// other, so two buckets of one size may share a buffer.
    fn bucket_buffer(&mut self, kind: Kind, device: Device, len: usize) -> Result<Tensor> {
        if let Some(b) = self
            .buffers
            .iter()
            .find(|b| b.kind() == kind && b.device() == device && b.numel() == len)
        {
            return Ok(b.shallow_clone());
        }
        if self.buffers.len() >= MAX_CACHED_BUFFERS {
            drop(self.buffers.remove(0));
        }
        let b = Tensor::f_empty([len as i64], (kind, device))?;
        self.buffers.push(b.shallow_clone());
        Ok(b)
    }

    fn collective(&mut self, operation: &'static str) -> Result<&mut Box<dyn Collective>> {
        self.collective.as_mut().ok_or(ModelError::Replicas {
            operation,
            message: "no collective (training alone)".into(),
        })
    }

    /// Sums `tensors` (all of one kind, float32 or float64, on one device) over the ranks in
    /// place, in buckets of at most `bucket_bytes` (a tensor larger than a bucket gets its own).
    fn reduce_in_buckets(&mut self, tensors: &[Tensor], operation: &'static str) -> Result<()> {
        if self.world_size() <= 1 || tensors.is_empty() {
            return Ok(());
        }
        let mut start = 0;
        while start < tensors.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < tensors.len() {
                let t = &tensors[end];
                let b = t.numel() * t.kind().elt_size_in_bytes();
                if end > start && bytes + b > self.bucket_bytes {
                    break;
                }
                bytes += b;
                end += 1;
            }
            self.reduce_bucket(&tensors[start..end], operation)?;
            start = end;
        }
        Ok(())
    }

    fn reduce_bucket(&mut self, tensors: &[Tensor], operation: &'static str) -> Result<()> {
        let kind = tensors[0].kind();
        let device = tensors[0].device();
        if let Some(t) = tensors
            .iter()
            .find(|t| t.kind() != kind || t.device() != device)
        {
            return Err(ModelError::Replicas {
                operation,
                message: format!(
                    "one bucket mixes {kind:?} on {device:?} with {:?} on {:?}",
                    t.kind(),
                    t.device()
                ),
            });
        }
        let len: usize = tensors.iter().map(|t| t.numel()).sum();
        let flat = self.bucket_buffer(kind, device, len)?;
        let parts = tensors
            .iter()
            .map(|t| t.f_reshape([-1]))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // Writes into `flat`; the returned handle is `flat` again.
        let _ = Tensor::f_cat_out(&flat, &parts, 0)?;
        let started = std::time::Instant::now();
        match (device, kind) {
            (Device::Cpu, Kind::Float) => {
                // SAFETY: `flat` is a contiguous float32 CPU buffer of `len` elements owned by
                // this struct; nothing else reads or writes it while the slice lives.
                let buf =
                    unsafe { std::slice::from_raw_parts_mut(flat.data_ptr() as *mut f32, len) };
                self.collective(operation)?
                    .all_reduce_sum(Buffer::F32(buf))
                    .map_err(collective_error(operation))?;
            }
            (Device::Cpu, Kind::Double) => {
                // SAFETY: as above, float64.
                let buf =
                    unsafe { std::slice::from_raw_parts_mut(flat.data_ptr() as *mut f64, len) };
                self.collective(operation)?
                    .all_reduce_sum(Buffer::F64(buf))
                    .map_err(collective_error(operation))?;
            }
            (Device::Cuda(ordinal), Kind::Float | Kind::Double) => {
                let dtype = if kind == Kind::Float {
                    DType::F32
                } else {
                    DType::F64
                };
                // The collective runs on the legacy default stream, the one tch's kernels use;
                // synchronising first also covers a libtorch built with per-thread streams.
                tch::Cuda::synchronize(ordinal as i64);
                self.collective(operation)?
                    .all_reduce_sum(Buffer::Device {
                        ptr: flat.data_ptr() as u64,
                        len,
                        dtype,
                    })
                    .map_err(collective_error(operation))?;
            }
            (d, k) => {
                return Err(ModelError::Replicas {
                    operation,
                    message: format!("cannot reduce {k:?} tensors on {d:?}"),
                });
            }
        }
        self.collective_time += started.elapsed();
        let mut offset = 0i64;
        for t in tensors {
            let n = t.numel() as i64;
            let mut dst = t.shallow_clone();
            let _guard = tch::no_grad_guard();
            dst.f_copy_(&flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?)?;
            offset += n;
        }
        Ok(())
    }

    /// Sums tensors of any mix of float32 and float64 over the ranks.
    fn reduce_mixed(&mut self, tensors: &[Tensor], operation: &'static str) -> Result<()> {
        for kind in [Kind::Float, Kind::Double] {
            let group: Vec<Tensor> = tensors
                .iter()
                .filter(|t| t.kind() == kind)
                .map(|t| t.shallow_clone())
                .collect();
            self.reduce_in_buckets(&group, operation)?;
        }
        if let Some(t) = tensors
            .iter()
            .find(|t| !matches!(t.kind(), Kind::Float | Kind::Double))
        {
            return Err(ModelError::Replicas {
                operation,
                message: format!("cannot sum {:?} tensors", t.kind()),
            });
        }
        Ok(())
    }

    /// Checks that every rank holds the same `tensors` (bit for bit): each rank contributes the
    /// first 64 bits of a sha256 of its tensors to its own slot of a zeroed vector (in 16-bit
    /// pieces, exact in any float type), the vector is summed, and every rank compares all slots.
    /// All ranks therefore reach the same verdict and fail together, naming the odd ones out.
    pub fn verify_replicas(&mut self, tensors: &[(String, Tensor)], when: &str) -> Result<()> {
        let world = self.world_size();
        if world <= 1 {
            return Ok(());
        }
        let digest = checksum(tensors)?;
        let rank = self.rank();
        let mut slots = vec![0f64; world * 4];
        for i in 0..4 {
            slots[rank * 4 + i] = ((digest >> (16 * i)) & 0xFFFF) as f64;
        }
        let t = Tensor::f_from_slice(&slots)?;
        let device = tensors
            .first()
            .map(|(_, t)| t.device())
            .unwrap_or(Device::Cpu);
        let t = t.f_to_device(device)?;
        self.reduce_in_buckets(std::slice::from_ref(&t), "parameter checksum")?;
        let slots = Vec::<f64>::try_from(t.f_to_device(Device::Cpu)?)?;
        let sums: Vec<u64> = slots
            .chunks(4)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u64, |acc, (i, &v)| acc | ((v as u64) << (16 * i)))
            })
            .collect();
        let odd: Vec<String> = sums
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != sums[0])
            .map(|(r, s)| format!("rank {r} ({s:016x})"))
            .collect();
        if odd.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Replicas {
                operation: "parameter checksum",
                message: format!(
                    "{when}: parameters differ from rank 0's ({:016x}): {}",
                    sums[0],
                    odd.join(", ")
                ),
            })
        }
    }
}

/// The first 64 bits of a sha256 over the names, shapes and bytes of `tensors`.
pub fn checksum(tensors: &[(String, Tensor)]) -> Result<u64> {
    let mut h = Sha256::new();
    for (name, t) in tensors {
        h.update(name.as_bytes());
        for d in t.size() {
            h.update(d.to_le_bytes());
        }
        let cpu = t.f_to_device(Device::Cpu)?.f_contiguous()?;
        let bytes = cpu.numel() * cpu.kind().elt_size_in_bytes();
        let mut buf = vec![0u8; bytes];
        cpu.f_copy_data_u8(&mut buf, cpu.numel())?;
        h.update(&buf);
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    Ok(u64::from_le_bytes(first))
}

impl<F: FnMut() -> Result<()>> Replicas for DataParallel<F> {
    fn reduce_gradients(&mut self, grads: &[Tensor]) -> Result<()> {
        self.reduce_mixed(grads, "gradient all-reduce")
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.reduce_mixed(tensors, "statistics all-reduce")
    }

    fn after_step(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        self.steps += 1;
        if self.checksum_every > 0 && self.steps.is_multiple_of(self.checksum_every) {
            let when = format!("after step {}", self.steps);
            self.verify_replicas(params, &when)?;
        }
        (self.on_step)()
    }
}
