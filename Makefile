# The two commands a new user needs: `make demo` and `make test`. Both install what they need
# (libtorch from the PyPI torch wheel into .deps/; protoc is vendored by a crate) and are
# idempotent: a second run skips what is already done.
SHELL := /bin/bash
DATA ?= ../shared/data
OUT ?= demo-out
CARGO ?= cargo

.PHONY: all setup build test test-cluster image demo bench clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --bin flowsynth

# The tests, then the container cluster test where a Docker engine answers (a few minutes; the
# base image and layers are cached where the machine keeps them).
test: setup
	$(CARGO) test --workspace --no-fail-fast
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then \
	  PROFILE=debug DATA="$(DATA)" bash scripts/test-cluster.sh; \
	else \
	  echo "make test: no Docker engine answers here: the container cluster test (make test-cluster) is SKIPPED" >&2; \
	fi

# Container images (docker/, scripts/image.sh): the debootstrapped base once, then flowsynth and
# the moto store; CUDA=1 adds the CUDA image.
image: build
	@bash scripts/image.sh

# Convert -> train on 2 workers -> sample across containers (docker/compose.yaml), with the debug
# binary `make test` builds. Needs Docker; `make test` runs it where a Docker engine answers.
test-cluster: setup
	$(CARGO) build --bin flowsynth
	@PROFILE=debug DATA="$(DATA)" bash scripts/test-cluster.sh

demo: build
	@DATA="$(DATA)" OUT="$(OUT)" bash scripts/demo.sh

bench: build
	@DATA="$(DATA)" bash bench/convert_vs_pyarrow.sh
	@bash bench/allreduce_vs_gloo.sh
	@DATA="$(DATA)" bash bench/train_vs_pytorch.sh
	@DATA="$(DATA)" bash bench/data_parallel.sh
	@DATA="$(DATA)" bash bench/eval_nsl_kdd.sh
	@DATA="$(DATA)" bash bench/quality.sh
	@DATA="$(DATA)" bash bench/ablation.sh
	@DATA="$(DATA)" bash bench/sampling.sh
	@DATA="$(DATA)" bash bench/worker_memory.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT)
