#!/usr/bin/env bash
# Times `flowsynth convert` against pyarrow (pyarrow.csv.read_csv + pyarrow.parquet.write_table,
# zstd level 3 like flowsynth) on the CIC-IDS-2017 improved sample and on NSL-KDD KDDTrain+, in
# the same run, alternating the two, REPEAT times each; reports medians, in-process (flowsynth's
# own conversion time from its log, pyarrow's read + write) and whole process (flowsynth's binary,
# which loads libtorch at start, against `python3` importing pyarrow). Records the table in
# bench/RESULTS.md (section "`convert` vs pyarrow").
# Usage: make bench   (or DATA=... REPEAT=7 bash bench/convert_vs_pyarrow.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
REPEAT="${REPEAT:-5}"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
py="$root/.deps/bench-py"
if ! PYTHONPATH="$py" python3 -c "import pyarrow" 2>/dev/null; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --target "$py" pyarrow
fi
out="$root/bench/out/convert"
rm -rf "$out"; mkdir -p "$out"
: > "$out/times.tsv"

now() { date +%s.%N; }
run_case() { # name preset input [--no-header]
  local name=$1 preset=$2 input=$3 extra=${4:-}
  for i in $(seq 1 "$REPEAT"); do
    rm -rf "$out/$name"
    local s e log
    s=$(now)
    log=$("$bin" convert --preset "$preset" "$input" --out "$out/$name" 2>&1 >/dev/null)
    e=$(now)
    local inner
    inner=$(python3 -c 'import re,sys
m = re.search(r"part\(s\) at .* in ([0-9.]+)(ms|s)\b", sys.stdin.read())
print(float(m.group(1)) / (1000 if m.group(2) == "ms" else 1))' <<<"$log")
    printf '%s\tflowsynth\t%s\t%s\n' "$name" "$inner" "$(python3 -c "print($e - $s)")" >> "$out/times.tsv"
    s=$(now)
    inner=$(PYTHONPATH="$py" python3 "$root/bench/pyarrow_convert.py" "$input" "$out/$name.pyarrow.parquet" $extra)
    e=$(now)
    printf '%s\tpyarrow\t%s\t%s\n' "$name" "$inner" "$(python3 -c "print($e - $s)")" >> "$out/times.tsv"
  done
  echo "bench: $name done" >&2
}
run_case cic-ids-2017 cic-ids-2017 "$DATA/cic-ids-2017/cicids2017_improved_rnd5000.csv.gz"
run_case nsl-kdd nsl-kdd "$DATA/nsl-kdd/KDDTrain+.txt.gz" --no-header

PYTHONPATH="$py" python3 - "$out" "$REPEAT" <<'PYEOF'
import datetime, json, statistics, sys, textwrap
import pyarrow
sys.path.insert(0, "bench")
from record_section import machine as this_machine, record
out, repeat, machine = sys.argv[1], int(sys.argv[2]), this_machine()
t = {}
for line in open(f"{out}/times.tsv"):
    name, impl, inner, whole = line.split("\t")
    t.setdefault((name, impl), []).append((float(inner), float(whole)))
rows = {
    name: json.load(open(f"{out}/{name}/_dataset.json"))["total_rows"]
    for name in ("cic-ids-2017", "nsl-kdd")
}
lines = [
    "| input | rows | flowsynth s | pyarrow s | speed vs pyarrow | flowsynth process s | "
    "pyarrow process s | speed vs pyarrow (process) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
for name in ("cic-ids-2017", "nsl-kdd"):
    f, p = t[(name, "flowsynth")], t[(name, "pyarrow")]
    fi, pi = statistics.median(x[0] for x in f), statistics.median(x[0] for x in p)
    fw, pw = statistics.median(x[1] for x in f), statistics.median(x[1] for x in p)
    lines.append(
        f"| {name} | {rows[name]:,} | {fi:.3f} | {pi:.3f} | {pi / fi:.2f}x | {fw:.3f} | {pw:.3f} | {pw / fw:.2f}x |"
    )
table = "\n".join(lines)
print(table)
date = datetime.date.today().isoformat()
intro = (
    "`make bench` (runs `bench/convert_vs_pyarrow.sh`): `flowsynth convert` (default threads: all "
    "cores) against pyarrow "
    f"{pyarrow.__version__} `csv.read_csv` + `parquet.write_table(compression='zstd', "
    "compression_level=3)` (all cores), on `cic-ids-2017/cicids2017_improved_rnd5000.csv.gz` "
    "(6.5 MB gzip, 91 columns) and `nsl-kdd/KDDTrain+.txt.gz` (2.0 MB gzip, 43 columns, no "
    f"header), alternating, medians of {repeat} runs each. In-process: flowsynth's conversion time "
    "from its log line against pyarrow's read + write. Process: the whole command, flowsynth's "
    "binary (which loads libtorch, about 0.35 s here, before it does anything) against "
    "`python3` with the pyarrow import. Speed above 1 means flowsynth is faster. flowsynth does "
    "more: types, statistics, quantile sample, vocabularies, cleaning, part hashes, manifest. "
    f"Run on {date}, {machine}."
)
section = "## `convert` vs pyarrow\n\n" + textwrap.fill(intro, 100) + "\n\n" + table + "\n"
record(section)
PYEOF
