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
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for target in csv_reader_and_type_inference dataset_manifest checkpoint_manifest; do
  rc=0
  cargo test --release --quiet -p flowsynth-common --test fuzz -- --exact "$target" --nocapture \
    > "$out" 2>&1 || rc=$?
  grep -E '^fuzz |panics|saved as' "$out" || true
  if [ "$rc" != 0 ]; then
    tail -30 "$out" >&2
    echo "fuzz: $target FAILED" >&2
    exit 1
  fi
done
