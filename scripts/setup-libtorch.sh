#!/usr/bin/env bash
# Installs libtorch (from the PyPI torch wheel) into .deps/torch, idempotently.
#
# Why a wheel and not a libtorch zip: the PyPI wheel is the one artefact every machine here can
# fetch (pip reaches PyPI; download.pytorch.org is not reachable), and its torch/lib folder is a
# complete libtorch. We install it without its CUDA dependencies; libtorch_cpu.so still links
# libcudart.so.13 and libcupti.so.13, which the small cuda-toolkit extras provide and which the
# wheel finds through its rpath ($ORIGIN/../../nvidia/...), so both go into the same --target.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="2.11.0"
CUDA_TOOLKIT_VERSION="13.0.2"
dest="$root/.deps/torch"
stamp="$dest/.installed-torch-$TORCH_VERSION-cuda-toolkit-$CUDA_TOOLKIT_VERSION"

if [ -f "$stamp" ] && [ -f "$dest/torch/lib/libtorch_cpu.so" ]; then
  exit 0
fi

export PIP_ROOT_USER_ACTION=ignore
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "setup-libtorch: python3 with pip is required" >&2; exit 1; }

echo "setup-libtorch: installing torch==$TORCH_VERSION (no deps) and cuda-toolkit[cudart,cupti]==$CUDA_TOOLKIT_VERSION into .deps/torch" >&2
tmp="$dest.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --no-deps --target "$tmp" "torch==$TORCH_VERSION"
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$tmp" "cuda-toolkit[cudart,cupti]==$CUDA_TOOLKIT_VERSION"
# Nothing in the build needs torch's Python sources' bytecode or bundled headers of other
# projects to be fresh; keep the folder as pip wrote it, then publish it in one rename.
rm -rf "$dest"
mv "$tmp" "$dest"
touch "$stamp"
echo "setup-libtorch: done ($(du -sh "$dest" | cut -f1))" >&2
