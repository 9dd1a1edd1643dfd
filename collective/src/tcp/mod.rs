//! Ring all-reduce and broadcast over TCP, for CPU workers.
//!
//! The ranks form a ring: rank r sends to rank r+1 and receives from rank r-1 (mod N), each on
//! its own connection, so one rank sends and receives at full speed at the same time.
//!
//! **All-reduce** (the bandwidth-optimal ring algorithm of Patarasuk & Yuan, the one NCCL and
//! Gloo use) cuts the buffer into N segments. Reduce-scatter: in N-1 steps every segment travels
//! once around the ring, each rank adding its own values to what it receives and passing the sum
//! on, until rank r holds the complete sum of segment r+1. All-gather: in N-1 more steps the
//! complete segments travel around again and overwrite. Each rank sends and receives
//! 2(N-1)/N of the buffer whatever N is. Segments are cut into chunks (`TcpConfig::chunk_bytes`)
//! so a rank forwards chunk c as soon as it has it: the steps overlap like a pipeline.
//!
//! **Determinism**: the sum of segment s is always formed in ring order starting at rank s, on
//! one rank, and then copied; so every rank ends with the same bits, run after run.
//!
//! **Wire**: a handshake per connection (see `handshake`), then frames: a 32-byte header (op
//! sequence number, total length, element type, step, chunk, payload length) checked against what
//! the receiver expects, and the raw little-endian elements.
//!
//! **Failure**: every read and write wakes up every 200 ms to look at the abort flag, and gives
//! up after `io_timeout` without progress. The first failure shuts both connections down (so the
//! neighbours fail promptly too) and is kept: every later call returns [`Error::Poisoned`].

mod handshake;
mod link;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Buffer, Collective, DType, Error, Membership, Result};
use handshake::Side;
use link::{Ctx, Header, Link, OpKind, POLL_SLICE, Peer};

/// Default pipelining chunk; see `bench/RESULTS.md` for the measurements behind it.
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;
/// Default `SO_SNDBUF` request (Linux doubles it: 1 MiB in flight per connection, enough for
/// about 8 Gb/s at 1 ms round trip; raise it, or set 0 for autotuning, on long fat links).
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 512 * 1024;

/// Timeouts and chunking of a [`TcpRing`]. Every rank of a ring must use the same `chunk_bytes`
/// (the handshake checks it).
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Longest wait for a peer's data (or for a peer to take ours) before an operation fails.
    /// Generous by default: a rank may be writing a checkpoint while the others wait.
    pub io_timeout: Duration,
    /// Longest wait for the ring to form (peers start at different times).
    pub connect_timeout: Duration,
    /// Size of the pieces a segment is cut into for pipelining (rounded down to whole elements,
    /// at least one).
    pub chunk_bytes: usize,
    /// `SO_SNDBUF` of the outgoing connection; 0 leaves it to the kernel's autotuning. A fixed,
    /// moderate buffer keeps the data in flight small enough to stay in cache, which measured
    /// faster than autotuning's larger buffers (see `bench/RESULTS.md`); Linux doubles the value
    /// and caps it at `net.core.wmem_max`.
    pub send_buffer_bytes: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            io_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(60),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            send_buffer_bytes: DEFAULT_SEND_BUFFER_BYTES,
        }
    }
}

/// The listening socket of a rank's collective. It is bound before the rendezvous (so the
/// address can be reported to the coordinator) and reused by every generation's ring.
#[derive(Debug)]
pub struct TcpListenerHandle {
    listener: TcpListener,
    local: SocketAddr,
}

impl TcpListenerHandle {
    /// Binds `addr` (`host:port`; port 0 picks a free one).
    pub fn bind(addr: &str) -> Result<Self> {
        let bind_err = |e: std::io::Error| Error::Bind {
            addr: addr.to_string(),
            source: Arc::new(e),
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        // Accepting polls, so that a ring set-up can watch its deadline and the abort flag.
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        Ok(TcpListenerHandle { listener, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// A ring of TCP connections between the ranks of one rendezvous generation.
pub struct TcpRing {
    me: Membership,
    chunk_bytes: usize,
    abort: Arc<AtomicBool>,
    /// `None` for a world of one.
    link: Option<Link>,
    /// Sequence number of the next operation (the same on every rank).
    seq: u64,
    /// The first failure; once set, every operation returns it.
    failed: Option<Error>,
}

impl std::fmt::Debug for TcpRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRing")
            .field("rank", &self.me.rank)
            .field("world_size", &self.me.world_size)
            .field("generation", &self.me.generation)
            .field("ops", &self.seq)
            .field("failed", &self.failed.is_some())
            .finish()
    }
}

impl TcpRing {
    /// `peers[r]` = collective address of rank r (from the rendezvous). Connects to rank
    /// (r+1)%N, accepts from (r-1+N)%N on `listener` (rejecting and dropping connections whose
    /// handshake does not match job id, auth token, generation, world size and expected rank, e.g.
    /// stale connections from an older generation, and continuing to wait), retrying connect
    /// until `connect_timeout`. World size 1 => no sockets at all.
    ///
    /// `abort` may be raised from another thread at any time: set-up and every later operation
    /// then fail with [`Error::Aborted`] within a fraction of a second.
    pub fn connect(
        listener: &TcpListenerHandle,
        membership: Membership,
        peers: &[String],
        config: TcpConfig,
        abort: Arc<AtomicBool>,
    ) -> Result<TcpRing> {
        membership.validate()?;
        let n = membership.world_size;
        if peers.len() != n {
            return Err(Error::InvalidMembership {
                reason: format!("{} peer addresses for a world of size {n}", peers.len()),
            });
        }
        // Frame headers carry a chunk's length in 32 bits.
        let chunk_bytes = config.chunk_bytes.clamp(8, 1 << 30);
        let mut ring = TcpRing {
            me: membership,
            chunk_bytes,
            abort,
            link: None,
            seq: 0,
            failed: None,
        };
        if n == 1 {
            return Ok(ring);
        }
        let me = &ring.me;
        let r = me.rank;
        let next = Peer {
            rank: (r + 1) % n,
            addr: peers[(r + 1) % n].clone(),
        };
        let prev = Peer {
            rank: (r + n - 1) % n,
            addr: peers[(r + n - 1) % n].clone(),
        };
        let started = Instant::now();
        let deadline = started + config.connect_timeout;
        let connect_failed = AtomicBool::new(false);
        let accept_failed = AtomicBool::new(false);
        let dial = Side {
            me,
            peer_rank: next.rank,
            peer_addr: &next.addr,
            chunk_bytes,
            deadline,
            started,
            abort: &ring.abort,
            sibling_failed: &accept_failed,
            slice: POLL_SLICE,
            send_buffer_bytes: config.send_buffer_bytes,
        };
        let listen = Side {
            peer_rank: prev.rank,
            peer_addr: &prev.addr,
            sibling_failed: &connect_failed,
            ..dial
        };
        let (send, recv) = std::thread::scope(|s| {
            let dialer = s.spawn(|| {
                let r = handshake::connect_next(&dial);
                if r.is_err() {
                    connect_failed.store(true, Ordering::Relaxed);
                }
                r
            });
            let recv = handshake::accept_prev(&listener.listener, &listen);
            if recv.is_err() {
                accept_failed.store(true, Ordering::Relaxed);
            }
            let send = dialer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (send, recv)
        });
        let (send, recv) = match (send, recv) {
            (Ok(s), Ok(r)) => (s, r),
            // The half that failed first is the story; the other one was only told to stop.
            (Err(e), Err(other)) if e.is_aborted() && !ring.abort.load(Ordering::Relaxed) => {
                return Err(other);
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let ctx = Arc::new(Ctx {
            rank: r,
            generation: ring.me.generation,
            abort: ring.abort.clone(),
            io_timeout: config.io_timeout,
        });
        ring.link = Some(Link::start(ctx, send, recv, next, prev)?);
        tracing::debug!(
            "collective rank {r}/{n} (generation {}): ring formed in {:?}",
            ring.me.generation,
            started.elapsed()
        );
        Ok(ring)
    }

    /// Runs one operation with the sticky-error and abort rules.
    fn run(
        &mut self,
        op: &'static str,
        body: impl FnOnce(&mut Link, &Membership, u64, usize) -> Result<()>,
    ) -> Result<()> {
        if let Some(cause) = &self.failed {
            return Err(Error::Poisoned {
                rank: self.me.rank,
                generation: self.me.generation,
                cause: Box::new(cause.clone()),
            });
        }
        let seq = self.seq;
        self.seq += 1;
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let result = if self.abort.load(Ordering::Relaxed) {
            Err(Error::Aborted {
                rank: self.me.rank,
                generation: self.me.generation,
                op,
            })
        } else {
            link.begin();
            // Should `body` panic, the sender must still let go of the buffer before it is freed.
            let guard = ReleaseOnUnwind(link);
            let result = body(guard.0, &self.me, seq, self.chunk_bytes);
            let settled = guard.0.settle(result.is_err(), op);
            result.and(settled)
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            if let Some(link) = self.link.as_mut() {
                let _ = link.settle(true, op);
            }
        }
        result
    }
}

/// Stops the sender and waits for it when dropped during a panic (see [`Link::settle`]).
struct ReleaseOnUnwind<'a>(&'a mut Link);

impl Drop for ReleaseOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.settle(true, "unwinding");
        }
    }
}

/// Elements the ring can sum: plain floats, viewed as bytes on the wire.
trait Element: bytemuck::Pod + std::ops::AddAssign {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
}

/// `dst[i] += src[i]`, written so that it compiles to packed SIMD adds.
fn add_into<T: Element>(dst: &mut [T], src: &[T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

/// How a buffer of `len` elements is cut: N segments of `len/N` or `len/N + 1` elements, each
/// cut into chunks of at most `chunk` elements. Every rank computes the same plan.
struct Plan {
    len: usize,
    n: usize,
    chunk: usize,
}

impl Plan {
    fn segment(&self, s: usize) -> std::ops::Range<usize> {
        let at = |i: usize| ((i as u128 * self.len as u128) / self.n as u128) as usize;
        at(s)..at(s + 1)
    }

    fn chunks(&self, s: usize) -> usize {
        self.segment(s).len().div_ceil(self.chunk)
    }

    fn chunk(&self, s: usize, c: usize) -> std::ops::Range<usize> {
        let seg = self.segment(s);
        let start = seg.start + c * self.chunk;
        start..(start + self.chunk).min(seg.end)
    }
}

/// Reinterprets elements `range` of the buffer at `base` as bytes for writing.
///
/// # Safety
/// `range` must lie inside the buffer and no other live reference may cover it.
unsafe fn bytes_mut<'a, T: Element>(base: *mut T, range: std::ops::Range<usize>) -> &'a mut [u8] {
    // SAFETY: the caller guarantees the range is in bounds and unaliased.
    let elems = unsafe { std::slice::from_raw_parts_mut(base.add(range.start), range.len()) };
    bytemuck::cast_slice_mut(elems)
}

fn all_reduce<T: Element>(
    link: &mut Link,
    me: &Membership,
    seq: u64,
    chunk_bytes: usize,
    data: &mut [T],
) -> Result<()> {
    const OP: &str = "all_reduce_sum";
    let n = me.world_size;
    let r = me.rank;
    let size = size_of::<T>();
    let plan = Plan {
        len: data.len(),
        n,
        chunk: (chunk_bytes / size).max(1),
    };
    let header = |step: usize, c: usize, elems: usize| {
        Header::new(
            seq,
            OpKind::AllReduceSum,
            T::DTYPE,
            plan.len,
            step,
            c,
            elems * size,
        )
    };
    // From here on the buffer is only touched through `base`, one chunk at a time: the sender
    // thread reads the chunks queued to it while this thread writes other chunks.
    let base = data.as_mut_ptr();
    let steps = n - 1;
    // Segment sent at reduce-scatter step k: r - k; received: r - k - 1. The received chunk,
    // once summed, is what step k + 1 sends, and after the last step it is complete (segment
    // r + 1) and opens the all-gather.
    let send_seg = |k: usize| (r + n - k % n) % n;
    // Index (in the send order) of the first job of each reduce-scatter step.
    let mut rs_first = Vec::with_capacity(steps);
    let mut jobs = 0u64;
    for k in 0..steps {
        rs_first.push(jobs);
        jobs += plan.chunks(send_seg(k)) as u64;
    }
    let queue = |link: &mut Link, step: usize, seg: usize, c: usize| -> Result<()> {
        let range = plan.chunk(seg, c);
        let h = header(step, c, range.len());
        // SAFETY: the range lies in the buffer; `all_reduce` writes it again only after
        // `wait_sent` has seen this job (the all-gather overwrite below) and returns only after
        // `settle`.
        unsafe {
            link.queue(
                h,
                base.add(range.start) as *const u8,
                range.len() * size,
                OP,
            )
        }
    };
    for c in 0..plan.chunks(send_seg(0)) {
        queue(link, 0, send_seg(0), c)?;
    }
    for k in 0..steps {
        let seg = send_seg(k + 1);
        for c in 0..plan.chunks(seg) {
            let range = plan.chunk(seg, c);
            let bytes = range.len() * size;
            link.recv_header(header(k, c, range.len()), OP)?;
            let words = link.recv_staged(bytes, OP)?;
            let incoming = &bytemuck::cast_slice::<u64, T>(words)[..range.len()];
            // SAFETY: no queued job covers this chunk of segment r-k-1 (see `queue`).
            let mine =
                unsafe { std::slice::from_raw_parts_mut(base.add(range.start), range.len()) };
            add_into(mine, incoming);
            queue(link, k + 1, seg, c)?;
        }
    }
    // All-gather step k: receive segment r - k (overwrite), forward it at step k + 1.
    for (k, &rs_first_k) in rs_first.iter().enumerate() {
        let seg = send_seg(k);
        let step = steps + k;
        for c in 0..plan.chunks(seg) {
            let range = plan.chunk(seg, c);
            link.recv_header(header(step, c, range.len()), OP)?;
            // Reduce-scatter step k sent this very chunk from our buffer: it must be out before
            // the chunk is overwritten. (It always is by now in practice: the data arriving was
            // computed from it.)
            link.wait_sent(rs_first_k + c as u64 + 1, OP)?;
            // SAFETY: in bounds; its only job (above) is acknowledged.
            link.read_full(unsafe { bytes_mut(base, range) }, OP)?;
            if k + 1 < steps {
                queue(link, step + 1, seg, c)?;
            }
        }
    }
    Ok(())
}

fn broadcast<T: Element>(
    link: &mut Link,
    me: &Membership,
    seq: u64,
    chunk_bytes: usize,
    data: &mut [T],
    root: usize,
) -> Result<()> {
    const OP: &str = "broadcast";
    let size = size_of::<T>();
    // One segment: the whole buffer, chunked.
    let plan = Plan {
        len: data.len(),
        n: 1,
        chunk: (chunk_bytes / size).max(1),
    };
    let header = |c: usize, elems: usize| {
        Header::new(
            seq,
            OpKind::Broadcast,
            T::DTYPE,
            plan.len,
            root,
            c,
            elems * size,
        )
    };
    let base = data.as_mut_ptr();
    let forward = link.next.rank != root;
    for c in 0..plan.chunks(0) {
        let range = plan.chunk(0, c);
        if me.rank != root {
            link.recv_header(header(c, range.len()), OP)?;
            // SAFETY: in bounds; no job covers this chunk yet.
            link.read_full(unsafe { bytes_mut(base, range.clone()) }, OP)?;
        }
        if me.rank == root || forward {
            // SAFETY: in bounds; this chunk is not written again in this operation.
            unsafe {
                link.queue(
                    header(c, range.len()),
                    base.add(range.start) as *const u8,
                    range.len() * size,
                    OP,
                )?
            };
        }
    }
    Ok(())
}

fn device_buffer_error() -> Error {
    Error::UnsupportedBuffer {
        backend: "tcp",
        buffer: "device",
        reason: "the TCP ring works on host memory; copy the tensor to the CPU first or use the \
                 NCCL collective for CUDA tensors"
            .into(),
    }
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.me.rank
    }

    fn world_size(&self) -> usize {
        self.me.world_size
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_sum(&mut self, buf: Buffer<'_>) -> Result<()> {
        match buf {
            Buffer::F32(data) => self.run("all_reduce_sum", |link, me, seq, chunk| {
                all_reduce(link, me, seq, chunk, data)
            }),
            Buffer::F64(data) => self.run("all_reduce_sum", |link, me, seq, chunk| {
                all_reduce(link, me, seq, chunk, data)
            }),
            Buffer::Device { .. } => Err(device_buffer_error()),
        }
    }

    fn broadcast(&mut self, buf: Buffer<'_>, root: usize) -> Result<()> {
        if root >= self.me.world_size {
            return Err(Error::InvalidRoot {
                root,
                world_size: self.me.world_size,
            });
        }
        match buf {
            Buffer::F32(data) => self.run("broadcast", |link, me, seq, chunk| {
                broadcast(link, me, seq, chunk, data, root)
            }),
            Buffer::F64(data) => self.run("broadcast", |link, me, seq, chunk| {
                broadcast(link, me, seq, chunk, data, root)
            }),
            Buffer::Device { .. } => Err(device_buffer_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_every_element_once_for_awkward_lengths() {
        for len in [0usize, 1, 2, 3, 7, 10, 1001] {
            for n in 1..=5 {
                for chunk in [1usize, 2, 3, 64] {
                    let plan = Plan { len, n, chunk };
                    let mut seen = vec![0u8; len];
                    for s in 0..n {
                        for c in 0..plan.chunks(s) {
                            let r = plan.chunk(s, c);
                            assert!(!r.is_empty() && r.len() <= chunk);
                            for i in r {
                                seen[i] += 1;
                            }
                        }
                    }
                    assert!(
                        seen.iter().all(|&x| x == 1),
                        "len {len} n {n} chunk {chunk}"
                    );
                }
            }
        }
    }
}
