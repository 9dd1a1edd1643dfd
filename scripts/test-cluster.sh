#!/usr/bin/env bash
# `make test-cluster`: flowsynth across containers, for real. Builds the images (scripts/image.sh),
# starts the compose cluster of docker/compose.yaml (an S3 store, a coordinator, 2 workers: each a
# container with its own address on a private network, read-only root filesystems, non-root),
# then converts NSL-KDD into the store, trains on the 2 workers (the TCP ring between two
# containers), samples on both, and reads the sampled Parquet back from the store with pyarrow on
# the host. Tears the cluster down however it ends.
#
# Settings: PROFILE=debug|release (the binary in the image; default debug, the one `make test`
# builds), DATA (default ../shared/data), KEEP=1 leaves the cluster up for a look.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PROFILE="${PROFILE:-debug}"
DATA="$(cd "${DATA:-../shared/data}" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
tag="$version$([ "$PROFILE" = debug ] && echo -debug || true)"
python="$root/.deps/moto/bin/python"
log() { echo "test-cluster: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
started=$SECONDS

[ -x "$python" ] || fail "$python is missing: run make setup"
command -v docker-compose >/dev/null || fail "docker-compose is required (Debian package docker-compose)"
bash scripts/image.sh

project="flowsynth-test-$$"
S3_PORT="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export S3_PORT FLOWSYNTH_IMAGE="flowsynth:$tag" FLOWSYNTH_DATA="$DATA"
compose() { docker-compose --ansi never -p "$project" -f docker/compose.yaml "$@"; }
teardown() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    log "logs of the failed run:"
    compose logs --no-color --tail 40 >&2 || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    log "KEEP=1: cluster $project left running (docker-compose -p $project -f docker/compose.yaml down -v)"
  else
    compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap teardown EXIT

log "starting store, coordinator and 2 workers (project $project)"
compose up -d --scale worker=2 coordinator worker 2>&1 | grep -v '^$' >&2
client() { compose run --rm -T client "$@"; }

# Each host has an address of its own.
addresses="$(for c in $(compose ps -q); do docker inspect -f '{{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c"; done)"
log "hosts: $(echo "$addresses" | tr '\n' ' ')"
[ "$(echo "$addresses" | awk '{print $2}' | sort -u | grep -c .)" -ge 4 ] || fail "expected 4 hosts with distinct addresses: $addresses"

log "convert NSL-KDD into s3://flowsynth/datasets/nsl"
client convert --preset nsl-kdd --out s3://flowsynth/datasets/nsl /data/nsl-kdd/KDDTrain+.txt.gz >&2

log "train on 2 workers"
out="$(client submit train --workers 2 --wait --data s3://flowsynth/datasets/nsl \
  --checkpoints s3://flowsynth/checkpoints/nsl --max-rows 4000 --epochs 1 --diffusion-epochs 1 \
  --batch-size 256)"
echo "$out" >&2
echo "$out" | grep -q "succeeded" || fail "training did not succeed"
job="$(echo "$out" | grep -o 'job-[0-9a-z-]*' | head -n1)"
client status "$job" >&2
# Ranks 0 and 1 of the job, each in a worker container of its own.
ranks="$(compose logs --no-color worker | grep "job $job: rank" || true)"
for rank in 0 1; do
  grep -q "job $job: rank $rank/2" <<< "$ranks" || fail "no worker ran rank $rank of $job: $ranks"
done
[ "$(awk '{print $1}' <<< "$ranks" | sort -u | wc -l)" = 2 ] \
  || fail "the two ranks of $job did not run in two different worker containers: $ranks"

log "sample on 2 workers"
out="$(client submit sample --workers 2 --wait --checkpoint s3://flowsynth/checkpoints/nsl \
  --classes 'neptune=600,satan=300,ipsweep=100' --seed 5 --out s3://flowsynth/samples/nsl)"
echo "$out" >&2
echo "$out" | grep -q "succeeded" || fail "sampling did not succeed"

log "read the sampled Parquet back from the store (pyarrow, on the host)"
"$python" - "$S3_PORT" <<'EOF' || fail "the sampled output is not what was asked for"
import json, sys
import pyarrow.fs as pafs, pyarrow.parquet as pq, pyarrow.compute as pc
s3 = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{sys.argv[1]}", scheme="http",
                       access_key="testing", secret_key="testing", region="us-east-1")
prefix = "flowsynth/samples/nsl"
names = {f.path.rsplit("/", 1)[-1] for f in s3.get_file_info(pafs.FileSelector(prefix, recursive=True))}
assert "_SUCCESS" in names, names
parts = sorted(n for n in names if n.endswith(".parquet"))
assert len(parts) >= 2, f"two workers write parts of their own: {parts}"
with s3.open_input_file(f"{prefix}/_sample.json") as f:
    manifest = json.load(f)
tables = [pq.read_table(f"{prefix}/{p}", filesystem=s3) for p in parts]
rows = sum(t.num_rows for t in tables)
synthetic = sum(pc.sum(t["synthetic"]).as_py() or 0 for t in tables)
assert rows == 1000 and synthetic == 1000, (rows, synthetic)
assert manifest["synthetic_rows"] == 1000, manifest
print(f"test-cluster: read {rows} synthetic rows in {len(parts)} parts back from s3://{prefix}", file=sys.stderr)
EOF
log "passed in $((SECONDS - started)) s"
