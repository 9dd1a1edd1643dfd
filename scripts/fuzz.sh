#!/usr/bin/env bash
# Mutation fuzzing of the CSV reader + type inference, the dataset manifest and the checkpoint
# manifest (common/tests/fuzz.rs) for a fixed time per target, optimised build. A panicking
# input is saved under common/tests/fuzz_regressions/<target>/ (commit it with the fix: every
# later run replays it) and the run fails.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 300; FUZZ_SEED=N for another seed)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-libtorch.sh >/dev/null
export FUZZ_SECONDS="${1:-300}"
echo "fuzz: ${FUZZ_SECONDS} s per target, seed ${FUZZ_SEED:-0x5eed (default)}" >&2
# One target at a time: each gets the machine, and the times add up as stated.
for target in csv_reader_and_type_inference dataset_manifest checkpoint_manifest; do
  cargo test --release --quiet -p flowsynth-common --test fuzz -- --exact "$target" --nocapture 2>&1 \
    | grep -E '^fuzz |panics|FAILED|error' || true
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz: $target FAILED" >&2; exit 1; }
done
