#!/usr/bin/env bash
# Everything `make build/test/demo` needs beyond a Rust toolchain and python3: idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PIP_ROOT_USER_ACTION=ignore
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }
bash "$root/scripts/setup-libtorch.sh"
bash "$root/scripts/setup-moto.sh"
