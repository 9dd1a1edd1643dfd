#!/usr/bin/env bash
# Peak RSS of a training worker against dataset size (issue 11, goal 4): NSL-KDD KDDTrain+ tiled
# to SMALL and LARGE rows (plain CSV, the same 125,973 rows repeated), converted, then one short
# `flowsynth train` per size (1 VAE + 1 denoiser epoch of the default 16,384-row budget, so the
# compute is the same and only the data differs) under /usr/bin/time -v. The goal is the same
# peak (within 10%) at both sizes; records the table in bench/RESULTS.md (section "Training
# worker memory against dataset size").
# The peak moves by several percent from run to run (allocator and libtorch thread timing), so
# each size is trained REPEAT times and the median is compared.
# Usage: make bench   (or DATA=... SMALL=500000 LARGE=5000000 REPEAT=3 bash bench/worker_memory.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
SMALL="${SMALL:-500000}"
LARGE="${LARGE:-5000000}"
REPEAT="${REPEAT:-3}"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
out="$root/bench/out/worker-memory"
rm -rf "$out"; mkdir -p "$out"

: >"$out/memory.tsv"
for rows in "$SMALL" "$LARGE"; do
  csv="$out/kdd-$rows.csv"
  python3 - "$DATA/nsl-kdd/KDDTrain+.txt.gz" "$csv" "$rows" <<'PYEOF'
import gzip, itertools, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = gzip.open(src, "rt").read().splitlines(keepends=True)
with open(dst, "w") as f:
    f.writelines(itertools.islice(itertools.cycle(lines), n))
PYEOF
  "$bin" convert --preset nsl-kdd "$csv" --out "$out/data-$rows" 2>"$out/convert-$rows.log" >/dev/null
  rm -f "$csv"
  for run in $(seq "$REPEAT"); do
    rm -rf "$out/ck-$rows"
    /usr/bin/time -v "$bin" train --data "$out/data-$rows" --checkpoints "$out/ck-$rows" \
      --epochs 1 --diffusion-epochs 1 --device cpu >"$out/train-$rows.log" 2>"$out/train-$rows.time"
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/train-$rows.time")
    printf '%s\t%s\n' "$rows" "$rss" >>"$out/memory.tsv"
    echo "== $rows rows, run $run: peak RSS $rss KB" >&2
  done
done

python3 - "$out" <<'PYEOF'
import datetime, sys, textwrap
sys.path.insert(0, "bench")
from record_section import machine as this_machine, record
out, machine = sys.argv[1], this_machine()
import statistics
runs = {}
for line in open(f"{out}/memory.tsv").read().splitlines():
    n, kb = line.split("\t")
    runs.setdefault(int(n), []).append(int(kb) / 1024)
lines = ["| dataset rows | peak RSS MiB, median | runs (MiB) |", "|---:|---:|---|"]
lines += [
    f"| {n:,} | {statistics.median(v):,.0f} | {', '.join(f'{x:,.0f}' for x in v)} |"
    for n, v in runs.items()
]
sizes = sorted(runs)
ratio = statistics.median(runs[sizes[-1]]) / statistics.median(runs[sizes[0]])
intro = (
    "`make bench` (runs `bench/worker_memory.sh`): NSL-KDD KDDTrain+ tiled to each size, "
    "converted, then `flowsynth train --epochs 1 --diffusion-epochs 1` (embedded coordinator and "
    "one worker, default 16,384-row epoch budget: the same compute at both sizes) under "
    f"`/usr/bin/time -v`, {len(next(iter(runs.values())))} runs per size. Default `shuffle_window_rows` (262,144) and `max_validation_rows` "
    "(16,384): both sizes stream their row groups. Median peak RSS ratio largest / smallest: "
    f"{ratio:.2f} (goal: within 1.10). Before streaming (every worker read its whole shard): "
    "907 MiB at 500,000 rows, 6,152 MiB at 5,000,000 (6.78x). "
    f"Run on {datetime.date.today().isoformat()}, {machine}."
)
section = ("## Training worker memory against dataset size\n\n" + textwrap.fill(intro, 100)
           + "\n\n" + "\n".join(lines) + "\n")
print(section)
record(section)
PYEOF
