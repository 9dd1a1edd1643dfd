#!/usr/bin/env bash
# Installs moto's S3 server (PyPI `moto[server]`) into a virtual environment at .deps/moto,
# idempotently. The S3 tests start `.deps/moto/bin/moto_server` on a loopback port: a real HTTP
# S3 endpoint (multipart upload, conditional puts) that needs no account and no network.
#
# A venv hard-codes its own absolute path in its scripts, so it is built in place rather than
# built elsewhere and renamed; what marks it complete is the stamp, written last (it holds the
# path, so a moved checkout reinstalls). An install that fails is removed, never left half done.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOTO_VERSION="5.2.5"
dest="$root/.deps/moto"
stamp="$dest/.installed-moto-$MOTO_VERSION"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$dest" ] && [ -x "$dest/bin/moto_server" ]; then
  exit 0
fi

export PIP_ROOT_USER_ACTION=ignore
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "setup-moto: python3 (with venv and pip) is required" >&2; exit 1; }

echo "setup-moto: installing moto[server]==$MOTO_VERSION into .deps/moto" >&2
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
trap 'rm -rf "$dest"; echo "setup-moto: install failed; removed .deps/moto" >&2' ERR INT TERM
"$python" -m venv "$dest"
"$dest/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  "moto[server]==$MOTO_VERSION"
"$dest/bin/moto_server" --help >/dev/null
printf '%s' "$dest" > "$stamp"
trap - ERR INT TERM
echo "setup-moto: done ($(du -sh "$dest" | cut -f1))" >&2
