#!/usr/bin/env bash
# Chaos harness (not in `make test`): training jobs on the compose cluster (docker/compose.yaml:
# moto, a coordinator, 3 workers, each its own container and address), each disturbed once at a
# random VAE epoch:
#   KILLS jobs        a random rank's worker container is killed (docker kill, SIGKILL); a new
#                     worker container takes the place of the spare it used
#   COORDINATOR jobs  the coordinator container is killed and started again (same store)
#   PARTITIONS jobs   a rank's worker container is cut off the network for PARTITION_S seconds
#                     (docker network disconnect), then reconnected
# and records per kind: jobs completed, restarts, time lost against an undisturbed job, and
# whether every final checkpoint verifies (a sampling run from it checks every file's sha256).
#
#   KILLS=20 COORDINATOR=10 PARTITIONS=5 bash bench/chaos.sh    (the defaults)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
KILLS="${KILLS:-20}"
COORDINATOR="${COORDINATOR:-10}"
PARTITIONS="${PARTITIONS:-5}"
PARTITION_S="${PARTITION_S:-15}"
JOB_TIMEOUT="${JOB_TIMEOUT:-600}"
MAX_ROWS="${MAX_ROWS:-20000}"   # NSL-KDD rows each job trains on
DATA="$(cd "${DATA:-../shared/data}" && pwd)"
# PROFILE=debug runs the binary `make test` builds (dependencies optimised, flowsynth at
# opt-level 1) instead of building the release one.
export PROFILE="${PROFILE:-release}"
log() { echo "chaos: $*" >&2; }

make --no-print-directory setup
if [ "$PROFILE" = release ]; then cargo build --release --bin flowsynth; else cargo build --bin flowsynth; fi
bash scripts/image.sh   # that binary, in the image
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
tag="$version$([ "$PROFILE" = debug ] && echo -debug || true)"
project="flowsynth-chaos-$$"
export FLOWSYNTH_IMAGE="flowsynth:$tag" FLOWSYNTH_DATA="$DATA" HEARTBEAT_TIMEOUT=5
S3_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export S3_PORT
compose() { docker-compose --ansi never -p "$project" -f docker/compose.yaml "$@"; }
trap 'compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
field() { sed -n "s/^$1: *//p"; }

# The cluster runs in containers (the faults are theirs); the harness talks to it from the host
# with the same release binary: a client container per status poll would cost seconds (container
# start, libtorch load) and dominate the time measured. The host reaches the store through its
# published port and the coordinator at its container address.
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=testing \
  AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true FLOWSYNTH_LOG=error
coordinator_url() {
  local ip
  ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(compose ps -q coordinator)")"
  echo "http://$ip:7070"
}
client() { "$root/target/$PROFILE/flowsynth" "$@" 2>/dev/null; }

compose up -d --scale worker=3 coordinator worker >/dev/null 2>&1
export FLOWSYNTH_COORDINATOR
FLOWSYNTH_COORDINATOR="$(coordinator_url)"
client convert --preset nsl-kdd --out s3://flowsynth/datasets/nsl "$DATA/nsl-kdd/KDDTrain+.txt.gz" >/dev/null
network="${project}_cluster"

# A job that takes long enough to be disturbed in its VAE stage: 8 VAE epochs with a committed
# checkpoint after each (the default is every 10 epochs: a restart would start over).
job_config="$(mktemp)"
printf '[train]\ncheckpoint_every = 1\n' > "$job_config"
submit() {  # submit NAME -> job id
  client submit train --workers 2 --config "$job_config" --data s3://flowsynth/datasets/nsl \
    --checkpoints "s3://flowsynth/checkpoints/$1" --max-rows "$MAX_ROWS" --epochs 8 \
    --diffusion-epochs 2 --batch-size 256 | grep -o 'job-[0-9a-f]*' | head -n1
}
vae_epoch() {  # vae_epoch JOB -> the current VAE epoch, 0 outside the VAE stage
  client status "$1" | field progress | sed -n 's/^vae epoch \([0-9]*\)\/.*/\1/p' | grep . || echo 0
}
wait_end() {  # wait_end JOB -> final state
  local started=$SECONDS state
  while :; do
    state="$(client status "$1" | field state)"
    case "$state" in succeeded|failed|cancelled) echo "$state"; return ;; esac
    [ $((SECONDS - started)) -lt "$JOB_TIMEOUT" ] || { echo "timeout"; return; }
    sleep 1
  done
}
container_of() {  # container_of WORKER_ID -> the worker container that registered as it last
  for c in $(compose ps -q worker); do
    if docker logs "$c" 2>&1 | grep "registered as" | tail -n1 | grep -q "$1"; then echo "$c"; return; fi
  done
}
verify() {  # verify NAME -> ok|broken
  if client sample --checkpoint "s3://flowsynth/checkpoints/$1" --classes normal=20 \
      --out "s3://flowsynth/verify/$1" --device cpu >/dev/null; then echo ok; else echo broken; fi
}

log "baseline: one undisturbed job"
t0=$SECONDS
job="$(submit baseline)"
[ "$(wait_end "$job")" = succeeded ] || { log "the undisturbed job failed"; exit 1; }
baseline=$((SECONDS - t0))
log "baseline job: $baseline s"

results="$(mktemp)"
run_case() {  # run_case KIND N
  local kind="$1" n="$2" name job epoch target ranks victim state restarts t
  name="$kind-$n"
  t=$SECONDS
  job="$(submit "$name")"
  target=$((RANDOM % 5 + 2))
  while [ "$(vae_epoch "$job")" -lt "$target" ]; do
    state="$(client status "$job" | field state)"
    case "$state" in succeeded|failed|cancelled) break ;; esac
    sleep 0.5
  done
  ranks="$(client status "$job" | field workers)"
  victim="$(echo "$ranks" | tr ',' '\n' | sed 's/ //g' | grep . | shuf -n1)"
  case "$kind" in
    kill)
      c="$(container_of "$victim")"
      docker kill "$c" >/dev/null
      compose up -d --no-recreate --scale worker=3 worker >/dev/null 2>&1 ;;
    coordinator)
      docker kill "$(compose ps -q coordinator)" >/dev/null
      sleep 1
      compose start coordinator >/dev/null 2>&1
      FLOWSYNTH_COORDINATOR="$(coordinator_url)" ;;
    partition)
      c="$(container_of "$victim")"
      docker network disconnect "$network" "$c"
      sleep "$PARTITION_S"
      docker network connect "$network" "$c" ;;
  esac
  state="$(wait_end "$job")"
  restarts="$(client status "$job" | field restarts | cut -d' ' -f1)"
  echo "$kind $state ${restarts:-0} $((SECONDS - t - baseline)) $(verify "$name") epoch=$target" | tee -a "$results" >&2
}
for n in $(seq 1 "$KILLS"); do run_case kill "$n"; done
for n in $(seq 1 "$COORDINATOR"); do run_case coordinator "$n"; done
for n in $(seq 1 "$PARTITIONS"); do run_case partition "$n"; done

python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print()
print("| fault | jobs | completed | restarts | time lost per disturbed job (median, s) | final checkpoints that verify |")
print("|---|---|---|---|---|---|")
for kind in ("kill", "coordinator", "partition"):
    r = [x for x in rows if x[0] == kind]
    if not r:
        continue
    ok = sum(x[1] == "succeeded" for x in r)
    lost = statistics.median(int(x[3]) for x in r)
    good = sum(x[4] == "ok" for x in r)
    print(f"| {kind} | {len(r)} | {ok}/{len(r)} | {sum(int(x[2]) for x in r)} | {lost:.0f} | {good}/{len(r)} |")
PY
echo
echo "baseline (undisturbed) job: $baseline s; machine: $(nproc) cores, $(uname -m)"
