//! All-reduce bandwidth of the TCP ring, one process per rank on loopback, in the format of
//! `bench/allreduce_gloo.py` (its torch.distributed gloo counterpart) so the two compare line by
//! line. `bench/allreduce_vs_gloo.sh` runs both.
//!
//! ```text
//! allreduce_bench --world N --port BASE [--sizes-mb 1,4,16,64,256] [--chunk-bytes B]
//!                 [--send-buffer-bytes B]
//!     spawns N copies of itself, one per rank; rank r listens on 127.0.0.1:BASE+r
//! allreduce_bench --rank R --world N --port BASE [...]
//!     runs one rank (start all N)
//! ```
//!
//! Rank 0 prints one JSON line per size:
//! `{"impl":"flowsynth-tcp","world":N,"bytes":B,"iters":I,"seconds_per_op":T,"algbw_gbps":..,"busbw_gbps":..,"cpu_seconds_per_op":..}`
//! with algbw = bytes / T and busbw = algbw * 2(N-1)/N (the nccl-tests definitions; GB = 1e9 B);
//! `cpu_seconds_per_op` is rank 0's process CPU time (user + system) per operation.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use flowsynth_collective::{Buffer, Collective, Membership, TcpConfig, TcpListenerHandle, TcpRing};

struct Args {
    rank: Option<usize>,
    world: usize,
    port: u16,
    sizes_mb: Vec<usize>,
    chunk_bytes: usize,
    send_buffer_bytes: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        rank: None,
        world: 2,
        port: 29_600,
        sizes_mb: vec![1, 4, 16, 64, 256],
        chunk_bytes: TcpConfig::default().chunk_bytes,
        send_buffer_bytes: TcpConfig::default().send_buffer_bytes,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--rank" => args.rank = Some(num(value()?)?),
            "--world" => args.world = num(value()?)?,
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--sizes-mb" => {
                args.sizes_mb = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--sizes-mb {s}: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--chunk-bytes" => args.chunk_bytes = num(value()?)?,
            "--send-buffer-bytes" => args.send_buffer_bytes = num(value()?)?,
            "-h" | "--help" => {
                return Err("usage: allreduce_bench [--rank R] --world N --port BASE [--sizes-mb 1,4,16] [--chunk-bytes B] [--send-buffer-bytes B]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.world == 0 || args.rank.is_some_and(|r| r >= args.world) {
        return Err("need 0 <= rank < world".into());
    }
    Ok(args)
}

/// Iterations per size: enough to run for a while at small sizes, a few at the largest.
/// The same rule as bench/allreduce_gloo.py.
fn iterations(bytes: usize) -> (usize, usize) {
    let timed = ((512usize << 20) / bytes.max(1)).clamp(5, 100);
    (2, timed)
}

/// CPU time (user + system, all threads) this process has used, from /proc (Linux; 0 elsewhere).
/// Reported beside wall time because on a shared machine the CPU cost per operation is the
/// steadier figure.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces):
    // utime and stime are the 12th and 13th, in clock ticks (100 per second on Linux).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn run_rank(args: &Args, rank: usize) -> Result<(), String> {
    let n = args.world;
    let peers: Vec<String> = (0..n)
        .map(|r| format!("127.0.0.1:{}", args.port as usize + r))
        .collect();
    let listener = TcpListenerHandle::bind(&peers[rank]).map_err(|e| e.to_string())?;
    let membership = Membership {
        job_id: "allreduce-bench".into(),
        auth_token: "bench".into(),
        generation: 0,
        rank,
        world_size: n,
    };
    let config = TcpConfig {
        chunk_bytes: args.chunk_bytes,
        send_buffer_bytes: args.send_buffer_bytes,
        ..TcpConfig::default()
    };
    let mut ring = TcpRing::connect(
        &listener,
        membership,
        &peers,
        config,
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| e.to_string())?;
    for &mb in &args.sizes_mb {
        let bytes = mb << 20;
        let mut buf = vec![1.0f32; bytes / 4];
        let (warmup, iters) = iterations(bytes);
        for _ in 0..warmup {
            ring.all_reduce_sum(Buffer::F32(&mut buf))
                .map_err(|e| e.to_string())?;
        }
        // Line the ranks up so rank 0's clock measures only the timed operations.
        ring.all_reduce_sum(Buffer::F32(&mut [0.0f32]))
            .map_err(|e| e.to_string())?;
        let cpu_start = cpu_seconds();
        let start = Instant::now();
        for _ in 0..iters {
            ring.all_reduce_sum(Buffer::F32(&mut buf))
                .map_err(|e| e.to_string())?;
        }
        let per_op = start.elapsed().as_secs_f64() / iters as f64;
        let cpu_per_op = (cpu_seconds() - cpu_start) / iters as f64;
        if rank == 0 {
            let algbw = bytes as f64 / per_op / 1e9;
            let busbw = algbw * 2.0 * (n as f64 - 1.0) / n as f64;
            println!(
                "{{\"impl\":\"flowsynth-tcp\",\"world\":{n},\"bytes\":{bytes},\"iters\":{iters},\
                 \"seconds_per_op\":{per_op:.6},\"algbw_gbps\":{algbw:.4},\"busbw_gbps\":{busbw:.4},\
                 \"cpu_seconds_per_op\":{cpu_per_op:.6},\"chunk_bytes\":{},\"send_buffer_bytes\":{}}}",
                args.chunk_bytes, args.send_buffer_bytes
            );
        }
    }
    Ok(())
}

fn spawn_all(args: &Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let sizes = args
        .sizes_mb
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for r in 0..args.world {
        let child = Command::new(&exe)
            .args(["--rank", &r.to_string(), "--world", &args.world.to_string()])
            .args(["--port", &args.port.to_string(), "--sizes-mb", &sizes])
            .args(["--chunk-bytes", &args.chunk_bytes.to_string()])
            .args(["--send-buffer-bytes", &args.send_buffer_bytes.to_string()])
            .spawn()
            .map_err(|e| format!("spawning rank {r}: {e}"))?;
        children.push(child);
    }
    let mut failed = Vec::new();
    for (r, mut c) in children.into_iter().enumerate() {
        match c.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => failed.push(format!("rank {r}: {s}")),
            Err(e) => failed.push(format!("rank {r}: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

fn main() -> ExitCode {
    let result = parse().and_then(|args| match args.rank {
        Some(r) => run_rank(&args, r),
        None => spawn_all(&args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allreduce_bench: {e}");
            // Let a sibling's message land first when a whole group fails.
            std::thread::sleep(Duration::from_millis(10));
            ExitCode::FAILURE
        }
    }
}
