# The three rare-class datasets of the quality and ablation benchmarks (sourced by both):
# `prepare NAME DIR` converts NAME's train and test splits into DIR/train and DIR/test;
# `classes_of NAME` prints the classes to augment and how many rows each gets.
# Needs $bin (the flowsynth binary), $py (the bench venv's python) and $DATA.

prepare() {
  local name=$1 d=$2
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


# `run_variant NAME DATA_DIR OUT_DIR CLASSES NAMES DETECTORS [train flags...]`: trains flowsynth on
# DATA_DIR/train (timed) into OUT_DIR/checkpoints, then runs `sample_and_score` into OUT_DIR.
run_variant() {
  local name=$1 data=$2 d=$3 classes=$4 names=$5 detectors=$6
  shift 6
  mkdir -p "$d"
  echo "== $name: train $*"
  local start end
  start=$(date +%s.%N)
  FLOWSYNTH_LOG=info "$bin" train --data "$data/train" --checkpoints "$d/checkpoints" --device cpu \
    "$@" >"$d/train.log" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.1f}')" >"$d/train_seconds"
  echo "   $(cat "$d/train_seconds") s"
  sample_and_score "$name" "$data" "$d/checkpoints" "$d" "$classes" "$names" "$detectors"
}

# `sample_and_score NAME DATA_DIR CHECKPOINTS OUT_DIR CLASSES NAMES DETECTORS [sample flags...]`:
# samples CLASSES from CHECKPOINTS (timed), then scores the same rows twice: `flowsynth eval` with
# DETECTORS and (unless SCORE=0) the scikit-learn / imbalanced-learn / SDMetrics reference,
# $SEEDS seeds each. Everything goes to OUT_DIR.
sample_and_score() {
  local name=$1 data=$2 ck=$3 d=$4 classes=$5 names=$6 detectors=$7
  shift 7
  mkdir -p "$d"
  echo "== $name: sample $classes $*"
  local start end
  start=$(date +%s.%N)
  FLOWSYNTH_LOG=info "$bin" sample --checkpoint "$ck" --classes "$classes" --seed 1 \
    --out "$d/synthetic" --device cpu "$@" >"$d/sample.log" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.1f}')" >"$d/sample_seconds"
  echo "== $name: flowsynth eval ($SEEDS seeds)"
  "$bin" eval --train "$data/train" --test "$data/test" --synthetic "$d/synthetic" \
    --augment-only "$names" --seeds "$SEEDS" --detectors "$detectors" --out "$d/report" \
    2>"$d/eval.log" | tee "$d/eval.out"
  [ "${SCORE:-1}" = 0 ] && return 0
  echo "== $name: scikit-learn / imbalanced-learn / SDMetrics reference ($SEEDS seeds)"
  "$py" bench/quality.py score --train "$data/train" --test "$data/test" --synthetic "$d/synthetic" \
    --classes "$names" --seeds "$SEEDS" --out "$d/score.json" 2>"$d/score.log" | tee "$d/score.out"
}
