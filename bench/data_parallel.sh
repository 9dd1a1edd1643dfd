#!/usr/bin/env bash
# Data-parallel efficiency: the same training job on NSL-KDD with 1 worker x 1 libtorch thread
# and with 2 workers x 1 thread each (per-worker batch B, so the global batch doubles, as in
# PyTorch DDP), measured in the same run. Efficiency = rows/s(2 workers) / (2 x rows/s(1 worker)).
# Rows/s are the trainer's own per-epoch figures (global rows over the epoch's wall time),
# averaged over the epochs of each stage after the first (warm-up).
# Usage: make bench   (or DATA=... bash bench/data_parallel.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
BATCH="${BATCH:-1024}"
EPOCHS="${EPOCHS:-3}"
input="$DATA/nsl-kdd/KDDTrain+.txt.gz"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
out="$root/bench/out/dp"
rm -rf "$out"; mkdir -p "$out"
"$bin" convert --preset nsl-kdd "$input" --out "$out/data" --row-group-rows 4096 >/dev/null
cat >"$out/job.toml" <<TOML
[train]
epochs = $EPOCHS
diffusion_epochs = $EPOCHS
batch_size = $BATCH
threads = 1
checkpoint_every = 1000

[model]
ffn_dim = 32
denoiser_width = 256
TOML

run() { # workers [name] -> log file
  local n=$1 name=${2:-$1}
  FLOWSYNTH_LOG=info "$bin" train --data "$out/data" --checkpoints "$out/ck-$name" \
    --config "$out/job.toml" --device cpu --local-workers "$n" 2>"$out/train-$name.log" >/dev/null
}
# Mean rows/s of a stage's epochs after the first, from one rank's log lines
# "<stage> epoch E/N: loss L (R rows/s over W rank(s))".
rate() { # log stage
  python3 - "$1" "$2" <<'PY'
import re, sys
path, stage = sys.argv[1], sys.argv[2]
seen, rates = set(), []
for line in open(path, errors="replace"):
    m = re.search(rf"{stage} epoch (\d+)/\d+: loss \S+ \((\d+) rows/s", line)
    if m and m.group(1) not in seen:  # every rank logs each epoch: count it once
        seen.add(m.group(1))
        if m.group(1) != "1":
            rates.append(float(m.group(2)))
print(f"{sum(rates) / len(rates):.0f}" if rates else "nan")
PY
}
run 1
run 2
# Control: two independent single-worker jobs at once (no communication at all) show how much
# of 2x this machine gives two busy processes.
run 1 c1 & run 1 c2 & wait
printf '%-10s %16s %17s %11s %24s\n' stage "1 worker rows/s" "2 workers rows/s" efficiency "2 independent jobs (sum)"
for stage in vae diffusion; do
  a=$(rate "$out/train-1.log" "$stage")
  b=$(rate "$out/train-2.log" "$stage")
  c=$(python3 -c "print(f'{$(rate "$out/train-c1.log" "$stage") + $(rate "$out/train-c2.log" "$stage"):.0f}')")
  e=$(python3 -c "print(f'{$b / (2 * $a) * 100:.1f}%')")
  f=$(python3 -c "print(f'{$c / (2 * $a) * 100:.1f}%')")
  printf '%-10s %16s %17s %11s %17s (%s)\n' "$stage" "$a" "$b" "$e" "$c" "$f"
done
echo "(NSL-KDD full train file, per-worker batch $BATCH, $EPOCHS epochs per stage, 1 libtorch thread per worker, $(nproc) cores)"
