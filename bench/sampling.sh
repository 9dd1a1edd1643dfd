#!/usr/bin/env bash
# Sampling speed and quality at the default sampler steps against 50-step Heun (TabSyn's
# setting), and the sampler's peak memory at 100,000 and 1,000,000 requested rows (issue 11).
# Trains one model on NSL-KDD KDDTrain+ with the default job settings, then, alternating, ROUNDS
# times: samples CLASSES at --steps DEFAULT_STEPS and at --steps 50 (rows/s from the sampler's own
# time, `generation_seconds` in _sample.json) and scores each output with `flowsynth eval
# --no-downstream` against the real train and test splits. Then samples ROWS_SMALL and ROWS_LARGE
# rows of one class in fresh processes under /usr/bin/time -v (peak RSS). Records the tables in
# bench/RESULTS.md (section "Sampling: default steps vs 50-step Heun, memory").
# Usage: make bench   (or DATA=... ROUNDS=2 bash bench/sampling.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
ROUNDS="${ROUNDS:-2}"
DEFAULT_STEPS="${DEFAULT_STEPS:-20}"
CLASSES="${CLASSES:-neptune=4000,normal=4000,satan=2000,ipsweep=2000,portsweep=2000,smurf=2000,back=1000,guess_passwd=1000,warezmaster=1000,teardrop=1000}"
ROWS_SMALL="${ROWS_SMALL:-100000}"
ROWS_LARGE="${ROWS_LARGE:-1000000}"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
out="$root/bench/out/sampling"
rm -rf "$out"; mkdir -p "$out"
source "$root/bench/datasets.sh"

prepare nsl "$out/data"
echo "== train (default job settings)" >&2
start=$(date +%s.%N)
FLOWSYNTH_LOG=info "$bin" train --data "$out/data/train" --checkpoints "$out/checkpoints" \
  --device cpu >"$out/train.log" 2>&1
echo "   $(python3 -c "print(f'{$(date +%s.%N) - $start:.0f}')") s" >&2

: >"$out/runs.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for steps in "$DEFAULT_STEPS" 50; do
    d="$out/steps$steps-r$round"
    "$bin" sample --checkpoint "$out/checkpoints" --classes "$CLASSES" --seed "$round" \
      --steps "$steps" --out "$d/synthetic" --device cpu >"$d.log" 2>&1
    "$bin" eval --train "$out/data/train" --test "$out/data/test" --synthetic "$d/synthetic" \
      --no-downstream --out "$d/report" >"$d.eval.out" 2>"$d.eval.log"
    printf '%s\t%s\t%s\n' "$steps" "$d/synthetic/_sample.json" "$d/report/report.json" >>"$out/runs.tsv"
    echo "== round $round, $steps steps done" >&2
  done
done

: >"$out/memory.tsv"
for rows in "$ROWS_SMALL" "$ROWS_LARGE"; do
  d="$out/rows$rows"
  /usr/bin/time -v "$bin" sample --checkpoint "$out/checkpoints" --classes "normal=$rows" \
    --seed 9 --out "$d" --device cpu >"$d.log" 2>"$d.time"
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$d.time")
  printf '%s\t%s\t%s\n' "$rows" "$rss" "$d/_sample.json" >>"$out/memory.tsv"
  echo "== $rows rows: peak RSS $rss KB" >&2
done

python3 - "$out" "$ROUNDS" "$DEFAULT_STEPS" <<'PYEOF'
import datetime, json, statistics, sys, textwrap
sys.path.insert(0, "bench")
from record_section import machine as this_machine, record
out, rounds, default = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
machine = this_machine()
runs = {}
for line in open(f"{out}/runs.tsv"):
    steps, sample, report = line.strip().split("\t")
    s, r = json.load(open(sample)), json.load(open(report))
    pc = [c for c in r["per_class"] if c.get("agreement") is not None]
    runs.setdefault(int(steps), []).append({
        "rows_s": s["synthetic_rows"] / s["generation_seconds"],
        "shape": r["shape"], "trend": r["trend"],
        "cm_shape": (r.get("class_matched") or {}).get("shape") or r["shape"],
        "cm_trend": (r.get("class_matched") or {}).get("trend") or r["trend"],
        "agreement": statistics.mean(c["agreement"] for c in pc) if pc else float("nan"),
        "detection": statistics.mean(c["detection"] for c in pc if c.get("detection") is not None) if pc else float("nan"),
    })
med = lambda k, xs: statistics.median(x[k] for x in xs)
lines = [
    "| steps | network evaluations per row | rows/s | shape | trend | class-matched shape | "
    "class-matched trend | class agreement | detection score |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for steps in sorted(runs):
    xs = runs[steps]
    lines.append(
        f"| {steps}{' (default)' if steps == default else ''} | {2 * steps - 1} | {med('rows_s', xs):,.0f} | "
        f"{med('shape', xs):.4f} | {med('trend', xs):.4f} | {med('cm_shape', xs):.4f} | "
        f"{med('cm_trend', xs):.4f} | {med('agreement', xs):.4f} | {med('detection', xs):.4f} |"
    )
speedup = med("rows_s", runs[default]) / med("rows_s", runs[50])
mem = ["| rows requested | peak RSS MiB | rows/s |", "|---:|---:|---:|"]
for line in open(f"{out}/memory.tsv"):
    rows, rss, sample = line.strip().split("\t")
    s = json.load(open(sample))
    mem.append(f"| {int(rows):,} | {int(rss) / 1024:,.0f} | {s['synthetic_rows'] / s['generation_seconds']:,.0f} |")
date = datetime.date.today().isoformat()
intro = (
    "`make bench` (runs `bench/sampling.sh`): one model trained on NSL-KDD KDDTrain+ with the "
    f"default job settings; then, alternating over {rounds} rounds, the same 20,000-row request "
    f"over ten classes sampled at {default} steps (the default) and at 50 (TabSyn's setting), "
    "each scored by `flowsynth eval --no-downstream` against the real splits (medians). Rows/s "
    "from the sampler's own time (`generation_seconds`, all cores). Shape / trend: SDMetrics-"
    "style column shapes and pair trends against the real training rows; class agreement: share "
    "of each class's synthetic rows that a forest trained on real rows assigns to the class; "
    "detection: LogisticDetection per class (1 = indistinguishable); both means over classes. "
    f"Default vs 50 steps: {speedup:.2f}x the rows/s. Memory: `flowsynth sample` of one class in "
    "a fresh process under `/usr/bin/time -v` (the whole process: libtorch, the checkpoint, the "
    f"sampler's 4,096-row chunks and the Parquet writer). Run on {date}, {machine}."
)
section = ("## Sampling: default steps vs 50-step Heun, memory\n\n" + textwrap.fill(intro, 100)
           + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(mem) + "\n")
print(section)
record(section)
PYEOF
