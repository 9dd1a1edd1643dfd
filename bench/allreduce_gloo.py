"""All-reduce bandwidth of torch.distributed's gloo backend, the reference for flowsynth's TCP ring.

Mirrors collective/examples/allreduce_bench.rs: one process per rank on loopback, float32 tensors
of the same sizes, the same warm-up and iteration counts, and the same JSON line per size from
rank 0 (algbw = bytes / time per op, busbw = algbw * 2(N-1)/N, GB = 1e9 bytes).

    python3 bench/allreduce_gloo.py --world N --port PORT [--sizes-mb 1,4,16,64,256]

(spawns N processes of itself; `--rank R` runs a single rank).
"""

import argparse
import json
import os
import subprocess
import sys
import time


def iterations(nbytes):
    """The same rule as allreduce_bench.rs: (warm-up, timed)."""
    timed = max(5, min(100, (512 << 20) // max(nbytes, 1)))
    return 2, timed


def run_rank(args):
    # Keep gloo on loopback, as the Rust bench is.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=args.rank,
        world_size=args.world,
    )
    n = args.world
    for mb in args.sizes_mb:
        nbytes = mb << 20
        t = torch.ones(nbytes // 4, dtype=torch.float32)
        warmup, iters = iterations(nbytes)
        for _ in range(warmup):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        dist.all_reduce(torch.zeros(1), op=dist.ReduceOp.SUM)
        cpu_start = time.process_time()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        per_op = (time.perf_counter() - start) / iters
        cpu_per_op = (time.process_time() - cpu_start) / iters
        if args.rank == 0:
            algbw = nbytes / per_op / 1e9
            print(
                json.dumps(
                    {
                        "impl": "torch-gloo",
                        "world": n,
                        "bytes": nbytes,
                        "iters": iters,
                        "seconds_per_op": round(per_op, 6),
                        "algbw_gbps": round(algbw, 4),
                        "busbw_gbps": round(algbw * 2 * (n - 1) / n, 4),
                        "cpu_seconds_per_op": round(cpu_per_op, 6),
                        "torch": torch.__version__,
                    }
                ),
                flush=True,
            )
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--port", type=int, default=29700)
    p.add_argument("--sizes-mb", default="1,4,16,64,256")
    args = p.parse_args()
    args.sizes_mb = [int(s) for s in args.sizes_mb.split(",")]
    if args.rank is not None:
        run_rank(args)
        return
    sizes = ",".join(str(s) for s in args.sizes_mb)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank", str(r), "--world", str(args.world),
             "--port", str(args.port), "--sizes-mb", sizes]
        )
        for r in range(args.world)
    ]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        sys.exit(f"allreduce_gloo: rank exit codes {codes}")


if __name__ == "__main__":
    main()
