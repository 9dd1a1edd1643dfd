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

prepare() {
  local name=$1 d="$out/$1"
  rm -rf "$d"; mkdir -p "$d"
  case $name in
    nsl)
      "$bin" convert --preset nsl-kdd "$DATA/nsl-kdd/KDDTrain+.txt.gz" --out "$d/train" >/dev/null
      "$bin" convert --preset nsl-kdd "$DATA/nsl-kdd/KDDTest+.txt.gz" --out "$d/test" >/dev/null ;;
    cic)
      "$py" bench/quality.py split --input "$DATA/cic-ids-2017/cicids2017_improved_rnd5000.csv.gz" \
        --label Label --out "$d/csv" >/dev/null
      for s in train test; do
        "$bin" convert --preset cic-ids-2017 "$d/csv/$s.csv.gz" --out "$d/$s" >/dev/null
      done ;;
    iot)
      "$py" bench/quality.py split --input "$DATA/ciciot2023/CICIoT2023_sample.csv.gz" \
        --label label_multiclass --cut DDoS=100,Mirai=100,Spoofing=100 --out "$d/csv" >/dev/null
      for s in train test; do
        "$bin" convert --preset ciciot2023 "$d/csv/$s.csv.gz" --out "$d/$s" >/dev/null
      done ;;
  esac
}

classes_of() {
  case $1 in
    nsl) echo 'pod=1000,guess_passwd=1000,buffer_overflow=1000,warezmaster=1000,land=1000,imap=1000,rootkit=1000' ;;
    cic) echo 'Botnet=1000,Web Attack - Brute Force=1000,Infiltration=1000,Web Attack - XSS=1000,Web Attack - SQL Injection=1000,Heartbleed=1000' ;;
    iot) echo 'DDoS=2000,Mirai=2000,Spoofing=2000' ;;
  esac
}

for name in $DATASETS; do
  d="$out/$name"
  echo "== $name: prepare"
  prepare "$name"
  classes="$(classes_of "$name")"
  names="$(echo "$classes" | sed 's/=[0-9]*//g')"
  echo "== $name: train (default configuration)"
  start=$(date +%s.%N)
  FLOWSYNTH_LOG=info "$bin" train --data "$d/train" --checkpoints "$d/checkpoints" --device cpu \
    >"$d/train.log" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.1f}')" >"$d/train_seconds"
  echo "   $(cat "$d/train_seconds") s"
  echo "== $name: sample $classes"
  start=$(date +%s.%N)
  FLOWSYNTH_LOG=info "$bin" sample --checkpoint "$d/checkpoints" --classes "$classes" --seed 1 \
    --out "$d/synthetic" --device cpu >"$d/sample.log" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.1f}')" >"$d/sample_seconds"
  echo "== $name: flowsynth eval ($SEEDS seeds)"
  "$bin" eval --train "$d/train" --test "$d/test" --synthetic "$d/synthetic" --augment-only "$names" \
    --seeds "$SEEDS" --detectors rf,gbt --out "$d/report" 2>"$d/eval.log" | tee "$d/eval.out"
  echo "== $name: scikit-learn / imbalanced-learn / SDMetrics reference ($SEEDS seeds)"
  "$py" bench/quality.py score --train "$d/train" --test "$d/test" --synthetic "$d/synthetic" \
    --classes "$names" --seeds "$SEEDS" --out "$d/score.json" 2>"$d/score.log" | tee "$d/score.out"
done
"$py" bench/quality.py summary --out "$out/summary.md" $(for n in $DATASETS; do echo "$out/$n"; done)
cat "$out/summary.md"
