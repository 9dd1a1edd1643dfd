#!/usr/bin/env bash
# `flowsynth eval` wall time on NSL-KDD: full KDDTrain+ (125,973 rows) and KDDTest+ (22,544 rows)
# with a 20,000-row synthetic set sampled from a trained checkpoint, default options (5 seeds,
# random forest + gradient boosting + MLP, --sample-rows 5000). Goal: under 5 minutes on 2 cores.
# The checkpoint comes from `make demo` (demo-out/checkpoints) when present; otherwise a short
# training run makes one (its time is not part of the figure).
# Usage: make bench   (or DATA=... bash bench/eval_nsl_kdd.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
out="$root/bench/out/eval"
rm -rf "$out"; mkdir -p "$out"
"$bin" convert --preset nsl-kdd "$DATA/nsl-kdd/KDDTrain+.txt.gz" --out "$out/train" >/dev/null
"$bin" convert --preset nsl-kdd "$DATA/nsl-kdd/KDDTest+.txt.gz" --out "$out/test" >/dev/null

ck="${CHECKPOINTS:-$root/demo-out/checkpoints}"
if [ ! -e "$ck/latest" ]; then
  ck="$out/checkpoints"
  printf '[train]\nepochs = 2\ndiffusion_epochs = 3\nbatch_size = 1024\n' >"$out/job.toml"
  echo "no demo checkpoint; training a short model into $ck"
  "$bin" train --data "$out/train" --checkpoints "$ck" --config "$out/job.toml" --device cpu >/dev/null
fi
# 20,000 rows: the common classes in rough proportion, the rare attacks boosted.
classes='normal=5000,neptune=3000,satan=1500,ipsweep=1500,portsweep=1500,smurf=1500,nmap=1000,back=1000,teardrop=1000,warezclient=1000,pod=500,guess_passwd=500,buffer_overflow=300,warezmaster=300,land=200,imap=200'
"$bin" sample --checkpoint "$ck" --classes "$classes" --seed 5 --out "$out/synthetic" --device cpu >/dev/null

start=$(date +%s.%N)
FLOWSYNTH_LOG=info "$bin" eval --train "$out/train" --test "$out/test" --synthetic "$out/synthetic" \
  --out "$out/report" 2>"$out/eval.log" | tee "$out/eval.out"
end=$(date +%s.%N)
secs=$(python3 -c "print(f'{$end - $start:.1f}')")
echo "eval wall time: ${secs} s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
python3 - "$out/report/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("stage seconds:", ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()))
for d in r["downstream"]["detectors"]:
    print(d["detector"], "train seconds per fit:",
          ", ".join(f'{s["setting"]} {s["train_seconds"]:.1f}' for s in d["settings"]))
PY
