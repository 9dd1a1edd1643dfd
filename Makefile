# The two commands a new user needs: `make demo` and `make test`. Both install what they need
# (libtorch from the PyPI torch wheel into .deps/; protoc is vendored by a crate) and are
# idempotent: a second run skips what is already done.
SHELL := /bin/bash
DATA ?= ../shared/data
OUT ?= demo-out
CARGO ?= cargo

.PHONY: all setup build test demo bench clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --bin flowsynth

test: setup
	$(CARGO) test --workspace --no-fail-fast

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
