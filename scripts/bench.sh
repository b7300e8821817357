#!/usr/bin/env bash
# `make bench`: release builds, then scripts/bench.py (writes BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p gatehouse-service -p gatehouse-bench
cargo build --release -p gatehouse-filter --target wasm32-wasip1
exec .tools/venv/bin/python scripts/bench.py "$@"
