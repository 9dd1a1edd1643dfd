#!/usr/bin/env bash
# Augmentation quality: do flowsynth's rows for the rare classes make detectors better than the
# rows a user would otherwise add (random oversampling, SMOTE), on three datasets?
#
#   NSL-KDD      train on KDDTrain+, test on KDDTest+; augment pod, guess_passwd,
#                buffer_overflow, warezmaster, land, imap, rootkit (+1,000 rows each)
#   CIC-IDS-2017 improved sample, stratified 70/30 split; augment Botnet, Web Attack - Brute Force,
#                Infiltration, Web Attack - XSS, Web Attack - SQL Injection, Heartbleed (+1,000 each)
#   CICIoT2023   sample, stratified 70/30 split, DDoS, Mirai and Spoofing cut to 100 training
#                rows (the test split untouched); augment those three (+2,000 each)
#
# Per dataset: flowsynth trains with the default configuration (its time is recorded against the
# 10-minute budget), samples with the default sampler, then two independent scorings of the same
# rows: `flowsynth eval` (its own detectors, per-class fidelity, agreement, copies) and the
# same-run reference in Python (scikit-learn RandomForest and HistGradientBoosting, imbalanced-
# learn RandomOverSampler and SMOTE-NC, SDMetrics QualityReport), SEEDS seeds each.
# Results: bench/out/quality/<dataset>/{report,score.json}, summary in bench/out/quality/summary.md.
#
# Usage: make bench   (or DATA=... SEEDS=5 DATASETS="nsl cic iot" bash bench/quality.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
SEEDS="${SEEDS:-5}"
DATASETS="${DATASETS:-nsl cic iot}"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
py="$(bash "$root/bench/setup-python.sh")"
out="$root/bench/out/quality"
mkdir -p "$out"

source "$root/bench/datasets.sh"

for name in $DATASETS; do
  d="$out/$name"
  echo "== $name: prepare"
  prepare "$name" "$d"
  classes="$(classes_of "$name")"
  names="$(echo "$classes" | sed 's/=[0-9]*//g')"
  run_variant "$name" "$d" "$d" "$classes" "$names" rf,gbt
done
"$py" bench/quality.py summary --out "$out/summary.md" $(for n in $DATASETS; do echo "$out/$n"; done)
cat "$out/summary.md"
