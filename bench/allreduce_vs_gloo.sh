#!/usr/bin/env bash
# All-reduce bandwidth of flowsynth's TCP ring (collective/examples/allreduce_bench.rs) against
# torch.distributed gloo (bench/allreduce_gloo.py) on loopback, float32, 1..256 MB, for N=2 and
# N=4 processes, in the same run; prints busbw per size and the ratio, and records the table in
# bench/RESULTS.md (section "All-reduce vs torch.distributed gloo", replaced on every run).
# Usage: make bench   (or ROUNDS=3 SIZES_MB=1,4,16,64,256 WORLDS="2 4" bash bench/allreduce_vs_gloo.sh)
#
# Each round runs gloo then flowsynth for every world size; a size's figure is the median over
# ROUNDS rounds (the machine may be shared: alternating keeps both sides under the same load).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ROUNDS="${ROUNDS:-3}"
SIZES_MB="${SIZES_MB:-1,4,16,64,256}"
WORLDS="${WORLDS:-2 4}"
PORT="${PORT:-29650}"

source "$root/bench/torch-python.sh"

# The example needs no libtorch: its own target directory keeps this build small and separate.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/collective}"
cargo build --quiet --release -p flowsynth-collective --example allreduce_bench
bin="$CARGO_TARGET_DIR/release/examples/allreduce_bench"

out="$root/bench/out/allreduce"
rm -rf "$out"; mkdir -p "$out"
for round in $(seq 1 "$ROUNDS"); do
  for n in $WORLDS; do
    PORT=$((PORT + 10))
    python3 bench/allreduce_gloo.py --world "$n" --port "$PORT" --sizes-mb "$SIZES_MB" \
      2>/dev/null >> "$out/gloo.jsonl"
    PORT=$((PORT + 10))
    "$bin" --world "$n" --port "$PORT" --sizes-mb "$SIZES_MB" >> "$out/flowsynth.jsonl"
  done
  echo "bench: round $round/$ROUNDS done" >&2
done

python3 - "$out" "$ROUNDS" <<'EOF'
import json, statistics, sys, datetime, textwrap
sys.path.insert(0, "bench")
from record_section import machine as this_machine, record
out, rounds, machine = sys.argv[1], int(sys.argv[2]), this_machine()
def load(name):
    rows = {}
    for line in open(f"{out}/{name}.jsonl"):
        d = json.loads(line)
        rows.setdefault((d["world"], d["bytes"]), []).append(d)
    return rows
ours, gloo = load("flowsynth"), load("gloo")
torch_version = next(iter(gloo.values()))[0].get("torch", "?")
med = lambda rows, k: statistics.median(r[k] for r in rows)
lines = [
    "| N | size | flowsynth busbw GB/s | gloo busbw GB/s | ratio flowsynth / gloo | flowsynth CPU ms/op | gloo CPU ms/op |",
    "|---:|---:|---:|---:|---:|---:|---:|",
]
for key in sorted(ours):
    n, nbytes = key
    a, b = med(ours[key], "busbw_gbps"), med(gloo[key], "busbw_gbps")
    ca, cb = med(ours[key], "cpu_seconds_per_op") * 1e3, med(gloo[key], "cpu_seconds_per_op") * 1e3
    lines.append(f"| {n} | {nbytes >> 20} MB | {a:.3f} | {b:.3f} | {a / b:.2f} | {ca:.1f} | {cb:.1f} |")
table = "\n".join(lines)
print(table)
date = datetime.date.today().isoformat()
intro = (
    "`make bench` (runs `bench/allreduce_vs_gloo.sh`): `all_reduce_sum` of float32 buffers over "
    "the TCP ring (`collective/examples/allreduce_bench.rs`, release build, default `TcpConfig`) "
    f"against `torch.distributed.all_reduce` with the gloo backend (torch {torch_version}, "
    "`bench/allreduce_gloo.py`), one process per rank on 127.0.0.1, the same sizes, 2 warm-up and "
    "5..100 timed operations per size. busbw = bytes / time per op x 2(N-1)/N (the nccl-tests "
    f"definition; GB = 1e9 bytes); each figure is the median of {rounds} rounds, gloo and "
    "flowsynth alternating within a round. CPU = rank 0's process CPU time (user + system) per "
    f"operation. Run on {date}, {machine}. N=4 puts 4 processes on {machine.split()[0]} cores, and "
    "other builds may share the machine, so absolute figures move between runs; the ratios of "
    "one run compare like with like."
)
section = "## All-reduce vs torch.distributed gloo\n\n" + textwrap.fill(intro, 100) + "\n\n" + table + "\n"
record(section)
EOF
