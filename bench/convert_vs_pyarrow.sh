#!/usr/bin/env bash
# Times `flowsynth convert` on the CIC-IDS-2017 improved sample against pyarrow
# (pyarrow.csv.read_csv + pyarrow.parquet.write_table, zstd) in the same run, and prints the ratio.
# Usage: make bench   (or DATA=... bash bench/convert_vs_pyarrow.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
REPEAT="${REPEAT:-3}"
input="$DATA/cic-ids-2017/cicids2017_improved_rnd5000.csv.gz"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
py="$root/.deps/bench-py"
if ! PYTHONPATH="$py" python3 -c "import pyarrow" 2>/dev/null; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --target "$py" pyarrow
fi
out="$root/bench/out"
rm -rf "$out"; mkdir -p "$out"

best() { sort -n | head -1; }
ours=()
for i in $(seq 1 "$REPEAT"); do
  rm -rf "$out/flowsynth"
  s=$(date +%s.%N)
  "$bin" convert --preset cic-ids-2017 "$input" --out "$out/flowsynth" >/dev/null 2>&1
  e=$(date +%s.%N)
  ours+=("$(python3 -c "print(f'{$e - $s:.3f}')")")
done
theirs=()
for i in $(seq 1 "$REPEAT"); do
  t=$(PYTHONPATH="$py" python3 "$root/bench/pyarrow_convert.py" "$input" "$out/pyarrow.parquet")
  theirs+=("$t")
done
a=$(printf '%s\n' "${ours[@]}" | best)
b=$(printf '%s\n' "${theirs[@]}" | best)
rows=$(python3 -c "import json;print(json.load(open('$out/flowsynth/dataset.json'))['total_rows'])")
echo "input: $input"
echo "flowsynth convert (two passes, stats, quantiles, cleaning): best of $REPEAT = ${a}s ($rows rows kept)"
echo "pyarrow read_csv + write_table (zstd):                       best of $REPEAT = ${b}s"
echo "ratio flowsynth/pyarrow = $(python3 -c "print(f'{$a / $b:.2f}')") (below 1 = flowsynth faster)"
