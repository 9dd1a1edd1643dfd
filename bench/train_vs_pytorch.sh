#!/usr/bin/env bash
# Training throughput of flowsynth's two stages against an idiomatic eager-PyTorch copy of the same
# model (bench/train_pytorch.py), in the same run: the same sizes (the default model config), the
# same preprocessed NSL-KDD rows (written by model/examples/train_throughput.rs, which runs the real
# Trainer), the same batch and thread count. Records the table in bench/RESULTS.md (section
# "Training throughput vs PyTorch eager", replaced on every run).
# Usage: make bench   (or ROUNDS=3 ROWS=16384 BATCH=1024 THREADS="1 2" EPOCHS=4 bash bench/train_vs_pytorch.sh)
#
# A figure is the median rows/s over the epochs after the first of each run (the first warms up,
# and in flowsynth's denoiser stage encodes the latents it then keeps, as the reference does once
# before its first epoch) and over ROUNDS rounds; within a round the two alternate per stage and
# thread count, so both see the same load.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
ROUNDS="${ROUNDS:-3}"
ROWS="${ROWS:-16384}"
BATCH="${BATCH:-1024}"
THREADS="${THREADS:-1 2}"
EPOCHS="${EPOCHS:-4}"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
source "$root/bench/torch-python.sh"
cargo build --quiet --release -p flowsynth-model --example train_throughput
ours="$root/target/release/examples/train_throughput"

out="$root/bench/out/train-vs-pytorch"
rm -rf "$out"; mkdir -p "$out"
"$bin" convert --preset nsl-kdd "$DATA/nsl-kdd/KDDTrain+.txt.gz" --out "$out/nsl" >/dev/null
common=(--rows "$ROWS" --batch "$BATCH")
"$ours" --data "$out/nsl" "${common[@]}" --vae-epochs 0 --diffusion-epochs 0 --dump "$out/dump"
for round in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    for stage in vae diffusion; do
      if [ "$stage" = vae ]; then e=(--vae-epochs "$EPOCHS" --diffusion-epochs 0)
      else e=(--vae-epochs 0 --diffusion-epochs "$EPOCHS"); fi
      "$ours" --data "$out/nsl" "${common[@]}" --threads "$t" "${e[@]}" | grep "\"stage\":\"$stage\"" \
        >> "$out/epochs.jsonl"
      python3 bench/train_pytorch.py --dump "$out/dump" --threads "$t" "${e[@]}" \
        | grep "\"stage\": \"$stage\"" >> "$out/epochs.jsonl"
    done
  done
  echo "bench: round $round/$ROUNDS done" >&2
done

python3 - "$out" "$ROUNDS" "$ROWS" "$BATCH" "$EPOCHS" <<'EOF'
import json, statistics, sys, datetime, textwrap
import torch
sys.path.insert(0, "bench")
from record_section import machine as this_machine, record
out, rounds, rows, batch, epochs = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
machine = this_machine()
runs = {}
for line in open(f"{out}/epochs.jsonl"):
    d = json.loads(line)
    if d["epoch"] > 1:
        runs.setdefault((d["stage"], d["threads"], d["impl"]), []).append(d["rows_per_second"])
lines = [
    "| stage | threads | flowsynth rows/s | PyTorch rows/s | ratio flowsynth / PyTorch |",
    "|---|---:|---:|---:|---:|",
]
for stage in ("vae", "diffusion"):
    for t in sorted({k[1] for k in runs}):
        a = statistics.median(runs[(stage, t, "flowsynth")])
        b = statistics.median(runs[(stage, t, "pytorch")])
        lines.append(f"| {'VAE' if stage == 'vae' else 'denoiser'} | {t} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")
table = "\n".join(lines)
print(table)
meta = json.load(open(f"{out}/dump/meta.json"))
date = datetime.date.today().isoformat()
intro = (
    "`make bench` (runs `bench/train_vs_pytorch.sh`): one epoch = every one of the first "
    f"{int(rows):,} NSL-KDD training rows once, batch {batch}, the default model (d_token "
    f"{meta['d_token']}, {meta['n_heads']} head, FFN {meta['ffn_dim']}, {meta['n_layers']} blocks "
    f"per Transformer, denoiser width {meta['denoiser_width']}), float32 on the CPU. flowsynth: the "
    "real Trainer (`model/examples/train_throughput.rs`, release build), which preprocesses each "
    "batch from the table and draws its noise per row from keyed streams. PyTorch "
    f"{torch.__version__} eager (`bench/train_pytorch.py`): the same model on the same "
    "preprocessed rows, AdamW / Adam, zero_grad(set_to_none=True), scaled_dot_product_attention, "
    "latents encoded once for the denoiser. A figure is the median rows/s of epochs 2.."
    f"{epochs} over {rounds} rounds (the two alternate within a round). Run on {date}, {machine}."
)
section = "## Training throughput vs PyTorch eager\n\n" + textwrap.fill(intro, 100) + "\n\n" + table + "\n"
record(section)
EOF
