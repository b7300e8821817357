# Gatehouse developer entry points. Everything project-local lives in .tools/ (installed by
# `make setup`), runtime state in .gatehouse/. See docs/TESTING.md.

CONFIG ?= gatehouse.yaml
VENV := .tools/venv
PYTEST_ARGS ?=
WASM_TARGET := wasm32-wasip1

.PHONY: all setup build build-service build-filter demo test test-rust test-e2e fuzz fmt-check clippy lint lint-py bench clean-state wasm-oci

all: build

setup:
	bash scripts/setup.sh

build: build-service build-filter

build-service:
	cargo build -p gatehouse-service

build-filter:
	cargo build -p gatehouse-filter --target $(WASM_TARGET) --release

demo:
	CONFIG=$(CONFIG) bash scripts/demo.sh

test: setup build test-rust lint test-e2e fuzz

test-rust:
	cargo test --workspace

fmt-check:
	cargo fmt --all --check

clippy:
	cargo clippy --workspace -- -D warnings
	cargo clippy -p gatehouse-filter --target $(WASM_TARGET) -- -D warnings

lint: fmt-check clippy lint-py

lint-py:
	cd tests && ../$(VENV)/bin/ruff check . ../scripts ../scripts/readme-check ../demo && ../$(VENV)/bin/ruff format --check . ../scripts ../scripts/readme-check ../demo

test-e2e:
	$(VENV)/bin/python -m pytest tests/ $(PYTEST_ARGS)

# The fuzz targets for a bounded time (FUZZ_SECONDS per target), stable toolchain.
fuzz:
	bash scripts/fuzz.sh

bench:
	@if [ -x scripts/bench.sh ]; then bash scripts/bench.sh; else echo "No scripts/bench.sh yet"; fi

clean-state:
	rm -rf .gatehouse

# The filter as an OCI image layout (target/oci/gatehouse-filter, tagged with the workspace
# version) for Istio to pull; push it with oras, skopeo or crane (deploy/README.md).
WASM_OCI_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
wasm-oci: build-filter
	python3 deploy/wasm_oci.py --wasm target/$(WASM_TARGET)/release/gatehouse_filter.wasm --out target/oci/gatehouse-filter --tag $(WASM_OCI_TAG)
