//! Connection set-up between neighbours of the ring.
//!
//! Rank r dials rank r+1 (the connection it sends on) and accepts from rank r-1 (the one it
//! receives on). Three messages on each new connection:
//!
//! 1. hello, connector -> acceptor: magic, protocol version, job id, auth token, generation,
//!    world size, the connector's rank, the rank it means to reach, the chunk size;
//! 2. reply, acceptor -> connector: accept, reject (final: wrong job or token, stale generation,
//!    wrong rank...) or retry (the acceptor is still at an older generation and will catch up),
//!    with the acceptor's generation and a reason;
//! 3. confirm, connector -> acceptor, after an accept: proves the connector is still there, so an
//!    acceptor never pairs with a connection that waited in the listen backlog after its
//!    connector had given up.
//!
//! An acceptor drops a connection that fails any check and keeps waiting for the right one, so a
//! straggler from an older generation can neither block nor join a newer ring.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Membership, Result};

const MAGIC: [u8; 4] = *b"FSRG";
const VERSION: u16 = 1;
/// Longest job id or token accepted on the wire.
const MAX_FIELD: usize = 4096;
/// How long an accepted connection may take to say hello or to confirm.
const HANDSHAKE_READ: Duration = Duration::from_secs(5);
/// Pause between connection attempts while the next rank is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Pause between polls of the (non-blocking) listener.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

const ACCEPT: u8 = 0;
const REJECT: u8 = 1;
const RETRY: u8 = 2;
const CONFIRM: u8 = 0xA5;

struct Hello {
    job_id: String,
    auth_token: String,
    generation: u32,
    world_size: u32,
    rank: u32,
    target: u32,
    chunk_bytes: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_FIELD)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.job_id.len() + self.auth_token.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.world_size.to_le_bytes());
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.target.to_le_bytes());
        out.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        put_str(&mut out, &self.job_id);
        put_str(&mut out, &self.auth_token);
        out
    }

    fn read(stream: &mut TcpStream) -> io::Result<Hello> {
        let mut fixed = [0u8; 4 + 2 + 4 * 4 + 8];
        stream.read_exact(&mut fixed)?;
        if fixed[..4] != MAGIC {
            return Err(invalid("not a flowsynth ring handshake (bad magic)"));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        let version = u16::from_le_bytes([fixed[4], fixed[5]]);
        if version != VERSION {
            return Err(invalid(&format!(
                "protocol version {version}, this build speaks {VERSION}"
            )));
        }
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&fixed[22..30]);
        Ok(Hello {
            generation: u32_at(6),
            world_size: u32_at(10),
            rank: u32_at(14),
            target: u32_at(18),
            chunk_bytes: u64::from_le_bytes(chunk),
            job_id: read_str(stream)?,
            auth_token: read_str(stream)?,
        })
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_str(stream: &mut TcpStream) -> io::Result<String> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let len = u16::from_le_bytes(len) as usize;
    if len > MAX_FIELD {
        return Err(invalid("field too long"));
    }
    let mut b = vec![0u8; len];
    stream.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| invalid("field is not UTF-8"))
}

fn reply(status: u8, generation: u32, reason: &str) -> Vec<u8> {
    let mut out = vec![status];
    out.extend_from_slice(&generation.to_le_bytes());
    put_str(&mut out, reason);
    out
}

/// What this side expects of a connection, and how to describe failures.
pub(crate) struct Side<'a> {
    pub me: &'a Membership,
    pub peer_rank: usize,
    pub peer_addr: &'a str,
    pub chunk_bytes: usize,
    pub deadline: Instant,
    pub started: Instant,
    /// The caller's abort flag.
    pub abort: &'a AtomicBool,
    /// Raised when the other half of the set-up (connect or accept) failed.
    pub sibling_failed: &'a AtomicBool,
    /// Read/write timeout slice installed on the returned stream.
    pub slice: Duration,
    /// `SO_SNDBUF` for the returned stream (0: leave it to the kernel).
    pub send_buffer_bytes: usize,
}

impl Side<'_> {
    fn stopped(&self) -> Option<Error> {
        if self.abort.load(Ordering::Relaxed) || self.sibling_failed.load(Ordering::Relaxed) {
            return Some(Error::Aborted {
                rank: self.me.rank,
                generation: self.me.generation,
                op: "ring set-up",
            });
        }
        None
    }

    fn finish(&self, stream: TcpStream) -> io::Result<TcpStream> {
        stream.set_nodelay(true)?;
        if self.send_buffer_bytes > 0 {
            socket2::SockRef::from(&stream).set_send_buffer_size(self.send_buffer_bytes)?;
        }
        stream.set_read_timeout(Some(self.slice))?;
        stream.set_write_timeout(Some(self.slice))?;
        Ok(stream)
    }
}

enum Attempt {
    /// Worth trying again until the deadline (not listening yet, acceptor behind).
    Retry(String),
    Fatal(Error),
}

/// Dials the next rank until it accepts the handshake, it refuses it for good, or the deadline.
pub(crate) fn connect_next(side: &Side<'_>) -> Result<TcpStream> {
    let mut last = String::from("no attempt made");
    loop {
        if let Some(e) = side.stopped() {
            return Err(e);
        }
        let now = Instant::now();
        if now >= side.deadline {
            return Err(Error::Connect {
                rank: side.me.rank,
                generation: side.me.generation,
                peer_rank: side.peer_rank,
                peer: side.peer_addr.to_string(),
                waited: now - side.started,
                reason: last,
            });
        }
        match attempt(side) {
            Ok(stream) => return Ok(stream),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(reason)) => {
                last = reason;
                std::thread::sleep(
                    RETRY_PAUSE.min(side.deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    }
}

fn attempt(side: &Side<'_>) -> std::result::Result<TcpStream, Attempt> {
    let addrs: Vec<SocketAddr> = side
        .peer_addr
        .to_socket_addrs()
        .map_err(|e| Attempt::Retry(format!("resolving {}: {e}", side.peer_addr)))?
        .collect();
    let mut last = format!("{} resolves to no address", side.peer_addr);
    let mut stream = None;
    for addr in addrs {
        let left = side.deadline.saturating_duration_since(Instant::now());
        let budget = left
            .min(Duration::from_secs(5))
            .max(Duration::from_millis(10));
        match TcpStream::connect_timeout(&addr, budget) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(Attempt::Retry(last))?;
    let retry = |what: &str, e: io::Error| Attempt::Retry(format!("{what}: {e}"));
    stream
        .set_nodelay(true)
        .map_err(|e| retry("set_nodelay", e))?;
    stream
        .set_write_timeout(Some(HANDSHAKE_READ))
        .map_err(|e| retry("set_write_timeout", e))?;
    stream
        .set_read_timeout(Some(side.slice))
        .map_err(|e| retry("set_read_timeout", e))?;
    let hello = Hello {
        job_id: side.me.job_id.clone(),
        auth_token: side.me.auth_token.clone(),
        generation: side.me.generation,
        world_size: side.me.world_size as u32,
        rank: side.me.rank as u32,
        target: side.peer_rank as u32,
        chunk_bytes: side.chunk_bytes as u64,
    };
    stream
        .write_all(&hello.encode())
        .map_err(|e| retry("sending the handshake", e))?;

    // The acceptor answers once it is inside its own set-up, which can be a while.
    let mut head = [0u8; 5];
    read_until(&mut stream, &mut head, side).map_err(|e| match e {
        Wait::Stopped(e) => Attempt::Fatal(e),
        Wait::Io(e) => retry("waiting for the handshake answer", e),
    })?;
    // Read the whole reply, reason included even when empty: a byte left unread would make the
    // kernel reset this connection at close instead of finishing it, and a reset throws away
    // data the next rank has not read yet.
    let mut reason = String::new();
    read_str_until(&mut stream, &mut reason, side).map_err(|e| match e {
        Wait::Stopped(e) => Attempt::Fatal(e),
        Wait::Io(e) => retry("reading the handshake answer", e),
    })?;
    let their_generation = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    match head[0] {
        ACCEPT => {
            stream
                .write_all(&[CONFIRM])
                .map_err(|e| retry("confirming the handshake", e))?;
            side.finish(stream)
                .map_err(|e| retry("configuring the socket", e))
        }
        RETRY => Err(Attempt::Retry(format!(
            "rank {} is still at generation {their_generation}: {reason}",
            side.peer_rank
        ))),
        REJECT => Err(Attempt::Fatal(Error::Rejected {
            rank: side.me.rank,
            generation: side.me.generation,
            peer_rank: side.peer_rank,
            peer: side.peer_addr.to_string(),
            reason,
        })),
        other => Err(Attempt::Retry(format!("unknown handshake answer {other}"))),
    }
}

fn read_str_until(
    stream: &mut TcpStream,
    out: &mut String,
    side: &Side<'_>,
) -> std::result::Result<(), Wait> {
    let mut len = [0u8; 2];
    read_until(stream, &mut len, side)?;
    let len = u16::from_le_bytes(len) as usize;
    if len > MAX_FIELD {
        return Err(Wait::Io(invalid("field too long")));
    }
    let mut b = vec![0u8; len];
    read_until(stream, &mut b, side)?;
    *out = String::from_utf8_lossy(&b).into_owned();
    Ok(())
}

enum Wait {
    Stopped(Error),
    Io(io::Error),
}

/// Fills `buf` from a stream with a short read timeout, until the deadline or a stop.
fn read_until(
    stream: &mut TcpStream,
    buf: &mut [u8],
    side: &Side<'_>,
) -> std::result::Result<(), Wait> {
    let mut filled = 0;
    while filled < buf.len() {
        if let Some(e) = side.stopped() {
            return Err(Wait::Stopped(e));
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(Wait::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )));
            }
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= side.deadline {
                    return Err(Wait::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer",
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Wait::Io(e)),
        }
    }
    Ok(())
}

/// Waits for the previous rank's connection on `listener`, refusing and dropping every other.
pub(crate) fn accept_prev(listener: &TcpListener, side: &Side<'_>) -> Result<TcpStream> {
    let mut refused: Vec<String> = Vec::new();
    loop {
        if let Some(e) = side.stopped() {
            return Err(e);
        }
        let now = Instant::now();
        if now >= side.deadline {
            // Keep the message readable: the last few refusals say what went wrong.
            let skip = refused.len().saturating_sub(3);
            return Err(Error::AcceptTimeout {
                rank: side.me.rank,
                generation: side.me.generation,
                peer_rank: side.peer_rank,
                peer: side.peer_addr.to_string(),
                waited: now - side.started,
                rejected: refused[skip..].join("; "),
            });
        }
        match listener.accept() {
            Ok((stream, from)) => match vet(stream, side) {
                Ok(stream) => return Ok(stream),
                Err(reason) => {
                    let reason = format!("connection from {from}: {reason}");
                    tracing::warn!(
                        "collective rank {} (generation {}): refused {reason}",
                        side.me.rank,
                        side.me.generation
                    );
                    refused.push(reason);
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ECONNABORTED, EMFILE and the like: transient from the listener's point of view.
                refused.push(format!("accept failed: {e}"));
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// Checks one incoming connection; `Err` is the reason it was refused.
fn vet(mut stream: TcpStream, side: &Side<'_>) -> std::result::Result<TcpStream, String> {
    let me = side.me;
    // Accepted sockets do not inherit O_NONBLOCK on Linux, but other systems differ.
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HANDSHAKE_READ))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(HANDSHAKE_READ))
        .map_err(|e| e.to_string())?;
    let hello = Hello::read(&mut stream).map_err(|e| format!("no valid handshake: {e}"))?;
    let (status, reason) = judge(&hello, me, side);
    if status != ACCEPT {
        // Best effort: the connector gets a clear error instead of a reset.
        let _ = stream.write_all(&reply(status, me.generation, &reason));
        return Err(reason);
    }
    stream
        .write_all(&reply(ACCEPT, me.generation, ""))
        .map_err(|e| format!("the connector vanished before the answer: {e}"))?;
    let mut confirm = [0u8; 1];
    match stream.read_exact(&mut confirm) {
        Ok(()) if confirm[0] == CONFIRM => {}
        Ok(()) => return Err(format!("bad confirmation byte {:#x}", confirm[0])),
        Err(e) => return Err(format!("the connector gave up before confirming: {e}")),
    }
    side.finish(stream).map_err(|e| e.to_string())
}

/// Whether a hello is from the rank this side expects, in this job and generation.
fn judge(h: &Hello, me: &Membership, side: &Side<'_>) -> (u8, String) {
    if h.job_id != me.job_id {
        return (
            REJECT,
            format!(
                "job id {:?} is not this ring's job {:?}",
                h.job_id, me.job_id
            ),
        );
    }
    if h.auth_token != me.auth_token {
        return (REJECT, format!("wrong auth token for job {:?}", me.job_id));
    }
    if h.generation < me.generation {
        return (
            REJECT,
            format!(
                "stale generation {} (the ring is at generation {})",
                h.generation, me.generation
            ),
        );
    }
    if h.generation > me.generation {
        return (
            RETRY,
            format!(
                "generation {} is newer than this rank's {}; it has not caught up yet",
                h.generation, me.generation
            ),
        );
    }
    if h.world_size as usize != me.world_size {
        return (
            REJECT,
            format!(
                "world size {} but the ring has {}",
                h.world_size, me.world_size
            ),
        );
    }
    if h.target as usize != me.rank || h.rank as usize != side.peer_rank {
        return (
            REJECT,
            format!(
                "rank {} dialled rank {}, but this is rank {} waiting for rank {}",
                h.rank, h.target, me.rank, side.peer_rank
            ),
        );
    }
    if h.chunk_bytes != side.chunk_bytes as u64 {
        return (
            REJECT,
            format!(
                "chunk size {} bytes but this rank uses {} (configure every rank alike)",
                h.chunk_bytes, side.chunk_bytes
            ),
        );
    }
    (ACCEPT, String::new())
}
