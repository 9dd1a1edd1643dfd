#!/usr/bin/env bash
# The Python the quality benchmark uses for its same-run references, in a virtual environment at
# .deps/bench (idempotent; the stamp is written last). Prints the interpreter's path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.deps/bench"
pins="scikit-learn==1.9.1 imbalanced-learn==0.14.2 sdmetrics==0.32.0 pyarrow==26.0.1 pandas==2.3.3"
stamp="$dest/.installed-$(echo "$pins" | tr ' =' '_-')"
if [ ! -f "$stamp" ]; then
  echo "bench: installing $pins into .deps/bench" >&2
  rm -rf "$dest"
  trap 'rm -rf "$dest"' ERR INT TERM
  python3 -m venv "$dest"
  # shellcheck disable=SC2086
  PIP_ROOT_USER_ACTION=ignore "$dest/bin/python" -m pip install --quiet --disable-pip-version-check $pins >&2
  touch "$stamp"
  trap - ERR INT TERM
fi
echo "$dest/bin/python"
