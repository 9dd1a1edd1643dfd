#!/usr/bin/env bash
# The papers' ablations, measured side by side: the same datasets, training budget and quality
# benchmark as bench/quality.sh, once per model variant:
#
#   tabular           the Transformer VAE's latent (TabSyn-like; the second paper's model)
#   multimodal        that latent joined with a CNN VAE's latent of each flow's image (MAGE-ID)
#   multimodal-joint  multimodal, the last JOINT_EPOCHS denoiser epochs training the VAEs too
#   data-space        the EDM denoiser on the preprocessed row itself, no VAE (TabDDPM-like)
#
# Per dataset and variant: training time, sampling time, `flowsynth eval` (shape, trend,
# per-class fidelity, detection, alpha/beta, macro and rare-class F1 of RF, GBT and MLP against
# real-only, ROS and SMOTE) and, unless SCORE=0, the scikit-learn reference of quality.sh; the
# multimodal variants' cross-modal coherence and the sampler's own time come from _sample.json.
# Each trained variant is also sampled from noise (`--strength 1`, the papers' setting, scored by
# `flowsynth eval` only) into <variant>/from-noise/, unless NOISE=0.
# Results: bench/out/ablation/<dataset>/<variant>/, summary in bench/out/ablation/summary.md.
#
# Usage: make bench   (or DATA=... SEEDS=3 DATASETS="nsl cic iot" VARIANTS="..." bash bench/ablation.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DATA="${DATA:-../shared/data}"
SEEDS="${SEEDS:-3}"
SCORE="${SCORE:-1}"
JOINT_EPOCHS="${JOINT_EPOCHS:-10}"
DATASETS="${DATASETS:-nsl cic iot}"
NOISE="${NOISE:-1}"
VARIANTS="${VARIANTS:-tabular multimodal multimodal-joint data-space}"
bin="$root/target/release/flowsynth"
[ -x "$bin" ] || { echo "bench: build first (make build)" >&2; exit 1; }
py="$(bash "$root/bench/setup-python.sh")"
out="$root/bench/out/ablation"
mkdir -p "$out"

source "$root/bench/datasets.sh"

for name in $DATASETS; do
  d="$out/$name"
  echo "== $name: prepare"
  prepare "$name" "$d/data"
  classes="$(classes_of "$name")"
  names="$(echo "$classes" | sed 's/=[0-9]*//g')"
  for variant in $VARIANTS; do
    v="$d/$variant"
    rm -rf "$v"; mkdir -p "$v"
    joint=0
    [ "$variant" = multimodal-joint ] && joint=$JOINT_EPOCHS
    printf '[train]\njoint_epochs = %s\n\n[model]\nmode = "%s"\n' "$joint" "${variant%-joint}" \
      >"$v/job.toml"
    run_variant "$name/$variant" "$d/data" "$v" "$classes" "$names" rf,gbt,mlp \
      --config "$v/job.toml"
    [ "$NOISE" = 0 ] && continue
    SCORE=0 sample_and_score "$name/$variant/from-noise" "$d/data" "$v/checkpoints" "$v/from-noise" \
      "$classes" "$names" rf,gbt,mlp --strength 1
  done
done
"$py" bench/quality.py ablation --out "$out/summary.md" $(for n in $DATASETS; do echo "$out/$n"; done)
cat "$out/summary.md"
