#!/usr/bin/env bash
# Builds the container images, idempotently (`make image`):
#   flowsynth-base:bookworm   a minimal Debian bookworm from debootstrap, `docker import`ed: these
#                             machines reach Debian's packages but no container registry, so no
#                             base image can be pulled. Built once; skipped while it exists.
#   flowsynth:<version>       the runtime image (docker/flowsynth.Dockerfile): the stripped binary
#                             and the libtorch libraries it links, from .deps/torch.
#   flowsynth-moto:<version>  moto's S3 server (docker/moto.Dockerfile), for the compose cluster.
#   flowsynth-cuda:<version>  only with CUDA=1 (several GB: torch's CUDA wheels and NCCL).
# Docker's layer cache makes a second run with unchanged inputs a no-op.
#
# Settings (environment):
#   PROFILE=release|debug   which target/<profile>/flowsynth goes into the image (default release;
#                           `make test-cluster` uses the debug binary `make test` already built)
#   TAG=...                 tag of the flowsynth images (default: the crate version, plus
#                           `-debug` for a debug binary, so the two never mix)
#   BASE=...                a base image to use instead of building one, e.g. debian:bookworm-slim
#   CUDA=1                  also build the CUDA image
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PROFILE="${PROFILE:-release}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
suffix=""
if [ "$PROFILE" = debug ]; then suffix="-debug"; fi
TAG="${TAG:-$version$suffix}"
MOTO_VERSION="5.2.5"
DEBIAN_SUITE="bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "image: $*" >&2; }

command -v docker >/dev/null || { log "docker is required (Docker Engine with a running daemon)"; exit 1; }
docker info >/dev/null 2>&1 || { log "the Docker daemon is not reachable (is it running? may this user use it?)"; exit 1; }
bin="target/$PROFILE/flowsynth"
[ -x "$bin" ] || { log "$bin is missing: build it first (make build, or cargo build for PROFILE=debug)"; exit 1; }

# 1. The base image, once.
if [ -z "${BASE:-}" ]; then
  BASE="flowsynth-base:$DEBIAN_SUITE"
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null; then
      log "installing debootstrap (Debian package)"
      apt-get install -y --no-install-recommends debootstrap >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends debootstrap >/dev/null; } \
        || { log "cannot install debootstrap; install it, or pass BASE=debian:bookworm-slim"; exit 1; }
    fi
    rootfs="$(mktemp -d "$root/.deps/base-rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $DEBIAN_SUITE (minbase + ca-certificates) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --include=ca-certificates "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
      > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' \
      --message "debootstrap --variant=minbase $DEBIAN_SUITE" - "$BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "built $BASE"
  fi
fi

# 2. The build context: the stripped binary and the libtorch libraries it links from .deps/.
ctx="target/image/$PROFILE"
rm -rf "$ctx"
mkdir -p "$ctx/lib"
strip -o "$ctx/flowsynth" "$bin"
mapfile -t libs < <(ldd "$bin" | awk '$3 ~ /\/\.deps\// { print $3 }')
[ "${#libs[@]}" -gt 0 ] || { log "ldd $bin names no library from .deps/ (is it linked against .deps/torch?)"; exit 1; }
for lib in "${libs[@]}"; do cp -L "$lib" "$ctx/lib/"; done
touch -d @0 "$ctx/flowsynth" "$ctx"/lib/*  # stable metadata: unchanged inputs hit the layer cache

build() {  # build IMAGE DOCKERFILE CONTEXT [ARGS...]
  local image="$1" file="$2" context="$3"
  shift 3
  log "building $image"
  docker build --quiet --file "$file" --tag "$image" --build-arg "BASE=$BASE" "$@" "$context" >/dev/null
}
# Wheels for the Python-based images, fetched here on the host (which reaches PyPI, through its
# own proxy and certificates where it has them) rather than inside the build. The host's python3
# must be the base's minor version (3.11 for bookworm): the wheels are for it.
wheels() {  # wheels DIR REQUIREMENT...
  local dir="$1"
  shift
  local stamp="$dir/.requirements"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ]; then return; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  log "fetching wheels for $*"
  python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dir" "$@" \
    || { rm -rf "$dir"; log "cannot fetch wheels for $*"; exit 1; }
  echo "$*" > "$stamp"
}
pyminor="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$pyminor" = 3.11 ] || { log "python3 is $pyminor; the images' Python is Debian bookworm's 3.11, and the wheels must match it"; exit 1; }

build "flowsynth:$TAG" docker/flowsynth.Dockerfile "$ctx" --build-arg "VERSION=$version"
moto_ctx="target/image/moto"
wheels "$moto_ctx/wheels" "moto[server]==$MOTO_VERSION"
build "flowsynth-moto:$MOTO_VERSION" docker/moto.Dockerfile "$moto_ctx" --build-arg "MOTO_VERSION=$MOTO_VERSION"
if [ "${CUDA:-0}" = 1 ]; then
  cuda_ctx="target/image/cuda"
  wheels "$cuda_ctx/wheels" "torch==2.11.0" "nvidia-nccl-cu13==2.28.9"
  cp -p "$ctx/flowsynth" "$cuda_ctx/flowsynth"
  build "flowsynth-cuda:$TAG" docker/flowsynth-cuda.Dockerfile "$cuda_ctx" --build-arg "VERSION=$version"
fi

# Smoke test: the image runs as its non-root user on a read-only root filesystem.
got="$(docker run --rm --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges "flowsynth:$TAG")"
[ "$got" = "flowsynth $version" ] || { log "flowsynth:$TAG --version printed '$got', expected 'flowsynth $version'"; exit 1; }
size="$(docker image inspect -f '{{.Size}}' "flowsynth:$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
log "ready: flowsynth:$TAG ($size), flowsynth-moto:$MOTO_VERSION"
