#!/usr/bin/env bash
# The main job end to end on the embedded default (file-backed object store, loopback gRPC):
# convert NSL-KDD -> start a coordinator and two workers as separate processes -> data-parallel
# training on both (gradients all-reduced over a TCP ring) -> sampling split across both -> an
# augmented dataset (real rows + synthetic rare-attack rows) -> an evaluation report of the
# synthetic rows against the untouched test split (fidelity, privacy, validity, detection F1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
OUT="${OUT:-demo-out}"
bin="$root/target/release/flowsynth"
input="$DATA/nsl-kdd/KDDTrain+.txt.gz"
test_input="$DATA/nsl-kdd/KDDTest+.txt.gz"
[ -f "$input" ] || { echo "demo: $input not found; set DATA=/path/to/data (see README)" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
step() { printf '\n== %s\n' "$*"; }

step "1/5 convert NSL-KDD ($input) -> $OUT/nsl-kdd"
"$bin" convert --preset nsl-kdd "$input" --out "$OUT/nsl-kdd"

step "2/5 start a coordinator and two workers on loopback"
"$bin" coordinator --listen 127.0.0.1:0 --store "$OUT/coordinator" >"$OUT/coordinator.out" 2>"$OUT/coordinator.log" &
coord_pid=$!
worker_pids=""
cleanup() {
  for p in $worker_pids; do kill "$p" 2>/dev/null || true; done
  kill "$coord_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  addr="$(sed -n 's/^listening on //p' "$OUT/coordinator.out" 2>/dev/null || true)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "demo: coordinator did not start; see $OUT/coordinator.log" >&2; exit 1; }
export FLOWSYNTH_COORDINATOR="http://$addr"
echo "coordinator at $FLOWSYNTH_COORDINATOR (log: $OUT/coordinator.log)"
for w in 0 1; do
  "$bin" worker >"$OUT/worker-$w.log" 2>&1 &
  worker_pids="$worker_pids $!"
done
echo "2 workers started (logs: $OUT/worker-0.log, $OUT/worker-1.log)"

step "3/5 train on 2 workers (config: scripts/demo.toml; global batch = 2 x batch_size)"
"$bin" submit train --workers 2 --data "$OUT/nsl-kdd" --checkpoints "$OUT/checkpoints" --config scripts/demo.toml --wait

step "4/5 sample rare attacks and write the augmented dataset"
"$bin" submit sample --checkpoint "$OUT/checkpoints" \
  --classes 'guess_passwd=1000,warezmaster=1000,imap=500,buffer_overflow=500,rootkit=500,pod=1000,land=500' \
  --with-real --seed 7 --out "$OUT/augmented" --workers 2 --wait

"$bin" status

step "5/5 evaluate the synthetic rare attacks against the NSL-KDD test split"
"$bin" convert --preset nsl-kdd "$test_input" --out "$OUT/nsl-kdd-test"
"$bin" eval --train "$OUT/nsl-kdd" --test "$OUT/nsl-kdd-test" --synthetic "$OUT/augmented" \
  --augment-only guess_passwd,warezmaster,imap,buffer_overflow,rootkit,pod,land \
  --seeds 3 --out "$OUT/report"
cat <<MSG

Everything went to $OUT:
  dataset      $OUT/nsl-kdd          (Parquet parts + _dataset.json)
  checkpoints  $OUT/checkpoints      (ckpt-*/ with manifest.json; 'latest' names the newest)
  augmented    $OUT/augmented        (real + synthetic rows, column 'synthetic'; _sample.json, _SUCCESS)
  report       $OUT/report/report.html (report.json, plots/)
  logs         $OUT/coordinator.log, $OUT/worker-0.log, $OUT/worker-1.log
Read it with any Parquet reader, e.g. python3 -c "import pyarrow.dataset as d; print(d.dataset('$OUT/augmented').to_table().num_rows)"
MSG
