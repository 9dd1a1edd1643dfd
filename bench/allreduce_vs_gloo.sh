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

# torch 2.11.0 is in .deps/torch (scripts/setup-libtorch.sh, without its CUDA dependencies).
# Importing it in Python loads libtorch_cuda.so, which links cuDNN, cuBLAS, NCCL, ... even on a
# CPU: install those libraries (and torch's pure-Python dependencies) beside it, once.
[ -d .deps/torch/torch ] || { echo "bench: libtorch missing; run make build first" >&2; exit 1; }
py="$root/.deps/bench-torch"
pylibs() { ls -d "$py"/nvidia/*/lib 2>/dev/null | paste -sd: -; }
torch_ok() {
  LD_LIBRARY_PATH="$(pylibs)" PYTHONPATH="$root/.deps/torch:$py" \
    python3 -c "import torch.distributed as d; assert d.is_gloo_available()" 2>/dev/null
}
if ! torch_ok; then
  echo "bench: installing torch's runtime libraries into $py (about 2.3 GB, once)" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --target "$py" --upgrade \
    "cuda-toolkit[cublas,cufft,cufile,curand,cusparse]==13.0.2" nvidia-cudnn-cu13==9.19.0.56 \
    nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9 nvidia-nvshmem-cu13==3.4.5 \
    typing_extensions sympy networkx jinja2 filelock fsspec numpy
  torch_ok || { echo "bench: torch.distributed with gloo still does not import" >&2; exit 1; }
fi
export LD_LIBRARY_PATH="$(pylibs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$root/.deps/torch:$py"

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

machine="$(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //; s/ [0-9]*-Core Processor//'), $(free -g | awk '/Mem:/ {print $2}') GiB"
python3 - "$out" "$ROUNDS" "$machine" <<'EOF'
import json, statistics, sys, datetime, re, pathlib, textwrap
out, rounds, machine = sys.argv[1], int(sys.argv[2]), sys.argv[3]
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
p = pathlib.Path("bench/RESULTS.md")
text = p.read_text()
pattern = re.compile(r"## All-reduce vs torch\.distributed gloo\n.*?(?=\n## |\Z)", re.S)
if pattern.search(text):
    text = pattern.sub(section.rstrip("\n") + "\n", text)
else:
    text = text.rstrip("\n") + "\n\n" + section
p.write_text(text)
print("\nbench: recorded in bench/RESULTS.md", file=sys.stderr)
EOF
