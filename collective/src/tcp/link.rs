//! The two connections of one ring rank and the frames that travel on them.
//!
//! Sending and receiving must run at the same time (a rank sends chunk c to the next rank while
//! it receives chunk c from the previous one; done one after the other, two ranks writing large
//! chunks to each other would both block on full socket buffers). A persistent sender thread owns
//! the outgoing socket and writes the frames queued on a channel; the calling thread receives,
//! reduces and queues. Every queued frame is acknowledged on a second channel once written, which
//! is what lets the caller know when the sender no longer reads a region of the buffer.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{DType, Error, Result};

/// Frame header: op sequence (u64), total elements of the op (u64), step (u32), chunk index
/// (u32), payload bytes (u32), op kind (u8), element type (u8), magic (u16). Little endian.
pub(crate) const HEADER_LEN: usize = 32;
const FRAME_MAGIC: u16 = 0xF5C1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    AllReduceSum = 1,
    Broadcast = 2,
}

/// What one frame claims to be; the receiver compares it with what it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub seq: u64,
    pub total: u64,
    /// All-reduce: reduce-scatter steps 0..n-1, then all-gather steps n-1..2n-2.
    /// Broadcast: the root.
    pub step: u32,
    pub chunk: u32,
    pub bytes: u32,
    pub kind: u8,
    pub dtype: u8,
    pub magic: u16,
}

pub(crate) fn dtype_code(d: DType) -> u8 {
    match d {
        DType::F32 => 1,
        DType::F64 => 2,
    }
}

impl Header {
    pub(crate) fn new(
        seq: u64,
        kind: OpKind,
        dtype: DType,
        total: usize,
        step: usize,
        chunk: usize,
        bytes: usize,
    ) -> Self {
        Header {
            seq,
            total: total as u64,
            step: step as u32,
            chunk: chunk as u32,
            bytes: bytes as u32,
            kind: kind as u8,
            dtype: dtype_code(dtype),
            magic: FRAME_MAGIC,
        }
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.total.to_le_bytes());
        b[16..20].copy_from_slice(&self.step.to_le_bytes());
        b[20..24].copy_from_slice(&self.chunk.to_le_bytes());
        b[24..28].copy_from_slice(&self.bytes.to_le_bytes());
        b[28] = self.kind;
        b[29] = self.dtype;
        b[30..32].copy_from_slice(&self.magic.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            seq: u64_at(0),
            total: u64_at(8),
            step: u32_at(16),
            chunk: u32_at(20),
            bytes: u32_at(24),
            kind: b[28],
            dtype: b[29],
            magic: u16::from_le_bytes([b[30], b[31]]),
        }
    }
}

impl std::fmt::Display for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            1 => "all_reduce_sum".to_string(),
            2 => "broadcast".to_string(),
            k => format!("op kind {k}"),
        };
        let dtype = match self.dtype {
            1 => "f32".to_string(),
            2 => "f64".to_string(),
            d => format!("dtype {d}"),
        };
        let step = if self.kind == OpKind::Broadcast as u8 {
            "root"
        } else {
            "step"
        };
        write!(
            f,
            "op #{} {kind} of {} {dtype}, {step} {}, chunk {} ({} bytes)",
            self.seq, self.total, self.step, self.chunk, self.bytes
        )?;
        if self.magic != FRAME_MAGIC {
            write!(f, ", bad frame magic {:#06x}", self.magic)?;
        }
        Ok(())
    }
}

/// Rank, generation and limits shared by both halves of a link, for errors and timeouts.
pub(crate) struct Ctx {
    pub rank: usize,
    pub generation: u32,
    pub abort: Arc<AtomicBool>,
    pub io_timeout: Duration,
}

#[derive(Clone)]
pub(crate) struct Peer {
    pub rank: usize,
    pub addr: String,
}

impl Ctx {
    fn aborted(&self, op: &'static str) -> Error {
        Error::Aborted {
            rank: self.rank,
            generation: self.generation,
            op,
        }
    }

    fn io(&self, op: &'static str, peer: &Peer, e: io::Error) -> Error {
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        ) {
            return self.closed(op, peer);
        }
        Error::Io {
            rank: self.rank,
            generation: self.generation,
            op,
            peer_rank: peer.rank,
            peer: peer.addr.clone(),
            source: Arc::new(e),
        }
    }

    fn closed(&self, op: &'static str, peer: &Peer) -> Error {
        Error::PeerClosed {
            rank: self.rank,
            generation: self.generation,
            op,
            peer_rank: peer.rank,
            peer: peer.addr.clone(),
        }
    }

    fn timeout(&self, op: &'static str, peer: &Peer, waited: Duration) -> Error {
        Error::Timeout {
            rank: self.rank,
            generation: self.generation,
            op,
            peer_rank: peer.rank,
            peer: peer.addr.clone(),
            waited,
        }
    }
}

/// One frame for the sender thread: a header and a region of the caller's buffer.
struct Job {
    header: [u8; HEADER_LEN],
    ptr: *const u8,
    len: usize,
    op: &'static str,
}

// SAFETY: a `Job` points into the buffer of the operation that queued it. That operation does not
// return (and so the buffer outlives the job) before every queued job has been acknowledged (see
// `Link::settle`), and it does not write the region before the job's acknowledgement.
unsafe impl Send for Job {}

/// The open connections of one ring rank.
pub(crate) struct Link {
    ctx: Arc<Ctx>,
    pub next: Peer,
    pub prev: Peer,
    recv: TcpStream,
    /// A handle on the outgoing socket, to shut it down from this side.
    send_ctl: TcpStream,
    jobs: Option<Sender<Job>>,
    done: Receiver<Result<()>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Jobs queued and acknowledged in the current operation.
    queued: u64,
    completed: u64,
    /// Receive buffer of the reduce-scatter phase (u64 for 8-byte alignment).
    staging: Vec<u64>,
}

impl Link {
    pub(crate) fn start(
        ctx: Arc<Ctx>,
        send: TcpStream,
        recv: TcpStream,
        next: Peer,
        prev: Peer,
    ) -> Result<Link> {
        let send_ctl = send
            .try_clone()
            .map_err(|e| ctx.io("ring set-up", &next, e))?;
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Result<()>>();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ctx, cancel, next) = (ctx.clone(), cancel.clone(), next.clone());
            std::thread::Builder::new()
                .name(format!("ring-send-r{}", ctx.rank))
                .spawn(move || sender(send, jobs_rx, done_tx, cancel, ctx, next))
        }
        .map_err(|e| ctx.io("ring set-up", &next, e))?;
        Ok(Link {
            ctx,
            next,
            prev,
            recv,
            send_ctl,
            jobs: Some(jobs_tx),
            done: done_rx,
            cancel,
            thread: Some(thread),
            queued: 0,
            completed: 0,
            staging: Vec::new(),
        })
    }

    /// Receives a `bytes`-byte payload into the staging buffer and returns it, padded to whole
    /// 8-byte words (so it can be viewed as any element type).
    pub(crate) fn recv_staged(&mut self, bytes: usize, op: &'static str) -> Result<&[u64]> {
        let words = bytes.div_ceil(8);
        let mut staging = std::mem::take(&mut self.staging);
        if staging.len() < words {
            staging.resize(words, 0);
        }
        let read = self.read_full(
            &mut bytemuck::cast_slice_mut::<u64, u8>(&mut staging)[..bytes],
            op,
        );
        self.staging = staging;
        read?;
        Ok(&self.staging[..words])
    }

    /// Queues a frame whose payload is `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid and must not be written until [`Link::wait_sent`] has seen
    /// this job (its index is `self.queued()` before the call) or [`Link::settle`] has returned.
    pub(crate) unsafe fn queue(
        &mut self,
        header: Header,
        ptr: *const u8,
        len: usize,
        op: &'static str,
    ) -> Result<()> {
        let job = Job {
            header: header.encode(),
            ptr,
            len,
            op,
        };
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            return Err(self.sender_gone(op));
        }
        self.queued += 1;
        Ok(())
    }

    fn sender_gone(&self, op: &'static str) -> Error {
        self.ctx.io(
            op,
            &self.next,
            io::Error::other("the ring's sender thread has stopped"),
        )
    }

    /// Takes one acknowledgement, waiting up to `wait` for it. `Ok(false)`: none yet.
    fn take_ack(&mut self, wait: Option<Duration>, op: &'static str) -> Result<bool> {
        let ack = match wait {
            None => match self.done.try_recv() {
                Ok(a) => a,
                Err(TryRecvError::Empty) => return Ok(false),
                Err(TryRecvError::Disconnected) => return Err(self.sender_gone(op)),
            },
            Some(d) => match self.done.recv_timeout(d) {
                Ok(a) => a,
                Err(RecvTimeoutError::Timeout) => return Ok(false),
                Err(RecvTimeoutError::Disconnected) => return Err(self.sender_gone(op)),
            },
        };
        self.completed += 1;
        ack.map(|()| true)
    }

    /// Waits until the first `count` jobs of this operation have been written out.
    pub(crate) fn wait_sent(&mut self, count: u64, op: &'static str) -> Result<()> {
        while self.completed < count {
            if self.ctx.abort.load(Ordering::Relaxed) {
                return Err(self.ctx.aborted(op));
            }
            // The sender enforces io_timeout on its writes, so this wait is bounded.
            self.take_ack(Some(POLL_SLICE), op)?;
        }
        Ok(())
    }

    /// Starts an operation: no job may be outstanding.
    pub(crate) fn begin(&mut self) {
        debug_assert_eq!(self.queued, self.completed);
        self.queued = 0;
        self.completed = 0;
    }

    /// Ends an operation, successful or not: on success waits for every job to be written; on
    /// failure (`failed`) stops the sender and shuts both sockets down (so the neighbours fail
    /// fast instead of waiting for their timeout) and waits until the sender has let go of every
    /// job. Either way no job refers to the caller's buffer once this returns.
    pub(crate) fn settle(&mut self, failed: bool, op: &'static str) -> Result<()> {
        if !failed {
            match self.wait_sent(self.queued, op) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.release();
                    return Err(e);
                }
            }
        }
        self.release();
        Ok(())
    }

    /// Stops the sender, closes the connections and waits until no job is outstanding.
    fn release(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.send_ctl.shutdown(Shutdown::Both);
        let _ = self.recv.shutdown(Shutdown::Both);
        while self.completed < self.queued {
            match self.done.recv() {
                Ok(_) => self.completed += 1,
                // The thread is gone: nothing can touch the buffer any more.
                Err(_) => break,
            }
        }
        self.completed = self.queued;
    }

    /// Reads the next frame header from the previous rank and checks it against `expected`.
    pub(crate) fn recv_header(&mut self, expected: Header, op: &'static str) -> Result<()> {
        let mut b = [0u8; HEADER_LEN];
        self.read_full(&mut b, op)?;
        let found = Header::decode(&b);
        if found != expected {
            return Err(Error::Protocol {
                rank: self.ctx.rank,
                generation: self.ctx.generation,
                op,
                peer_rank: self.prev.rank,
                peer: self.prev.addr.clone(),
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
        Ok(())
    }

    /// Fills `buf` from the previous rank. Wakes every [`POLL_SLICE`] to look at the abort flag
    /// and the sender's acknowledgements; fails after `io_timeout` without progress.
    pub(crate) fn read_full(&mut self, buf: &mut [u8], op: &'static str) -> Result<()> {
        let mut filled = 0;
        let mut progress = Instant::now();
        while filled < buf.len() {
            if self.ctx.abort.load(Ordering::Relaxed) {
                return Err(self.ctx.aborted(op));
            }
            match self.recv.read(&mut buf[filled..]) {
                Ok(0) => return Err(self.ctx.closed(op, &self.prev)),
                Ok(n) => {
                    filled += n;
                    progress = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // A failed write to the next rank is news too: stop waiting for the previous one.
                    while self.take_ack(None, op)? {}
                    let waited = progress.elapsed();
                    if waited >= self.ctx.io_timeout {
                        return Err(self.ctx.timeout(op, &self.prev, waited));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.ctx.io(op, &self.prev, e)),
            }
        }
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Between operations no job is outstanding, so the sender is idle on its channel:
        // closing the channel ends it at once.
        self.jobs = None;
        let _ = self.send_ctl.shutdown(Shutdown::Both);
        let _ = self.recv.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often blocked reads and writes wake up to look at the abort flag.
pub(crate) const POLL_SLICE: Duration = Duration::from_millis(200);

/// The sender thread: writes queued frames in order and acknowledges each one. After the first
/// failure it writes nothing more and acknowledges every further job with that failure.
fn sender(
    mut stream: TcpStream,
    jobs: Receiver<Job>,
    done: Sender<Result<()>>,
    cancel: Arc<AtomicBool>,
    ctx: Arc<Ctx>,
    next: Peer,
) {
    let mut broken: Option<Error> = None;
    while let Ok(job) = jobs.recv() {
        let result = match &broken {
            Some(e) => Err(e.clone()),
            None => {
                // SAFETY: see `Job`: the region is valid and not written until acknowledged.
                let payload = unsafe { std::slice::from_raw_parts(job.ptr, job.len) };
                write_frame(
                    &mut stream,
                    &job.header,
                    payload,
                    &cancel,
                    &ctx,
                    &next,
                    job.op,
                )
            }
        };
        if let Err(e) = &result {
            broken = Some(e.clone());
        }
        if done.send(result).is_err() {
            break;
        }
    }
}

fn write_frame(
    stream: &mut TcpStream,
    header: &[u8],
    payload: &[u8],
    cancel: &AtomicBool,
    ctx: &Ctx,
    next: &Peer,
    op: &'static str,
) -> Result<()> {
    let mut parts = [IoSlice::new(header), IoSlice::new(payload)];
    let mut left: &mut [IoSlice<'_>] = &mut parts;
    let mut progress = Instant::now();
    while !left.is_empty() {
        if cancel.load(Ordering::Relaxed) || ctx.abort.load(Ordering::Relaxed) {
            return Err(ctx.aborted(op));
        }
        match stream.write_vectored(left) {
            Ok(0) => return Err(ctx.closed(op, next)),
            Ok(n) => {
                IoSlice::advance_slices(&mut left, n);
                progress = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let waited = progress.elapsed();
                if waited >= ctx.io_timeout {
                    return Err(ctx.timeout(op, next, waited));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ctx.io(op, next, e)),
        }
    }
    Ok(())
}
