#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/) for a bounded time on the stable toolchain, so a crash
# in the masker or the SSE framer fails `make test`.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default: $FUZZ_SECONDS or 30)
#
# cargo-fuzz needs nightly only for its sanitizers; libFuzzer's coverage instrumentation is
# made of stable `-C` flags, which is all this build uses (no AddressSanitizer: the targets
# are safe Rust, and a panic or an abort is what they look for). Inputs that crash are kept
# under target/fuzz/artifacts/<target>/ to replay: `target/fuzz/…/release/<target> <file>`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-${FUZZ_SECONDS:-30}}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
OUT="$ROOT/target/fuzz"
BIN="$OUT/$TRIPLE/release"

# --target: the flags must reach the fuzz targets only, not build scripts and proc macros.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
    cargo build --manifest-path "$ROOT/fuzz/Cargo.toml" --locked --release --bins \
    --target "$TRIPLE" --target-dir "$OUT"

# Seeds: every input of the labeled masking corpora, behind each target's selector byte.
for target in mask_json sse_masker; do
    corpus="$OUT/corpus/$target"
    mkdir -p "$corpus" "$OUT/artifacts/$target"
    python3 - "$ROOT/tests/corpus" "$corpus" "$target" <<'PY'
import json, pathlib, sys
src, out, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
prefix = b"\0" if target == "mask_json" else b"\0\0"
for path in sorted(src.glob("*.jsonl")):
    for i, line in enumerate(open(path, encoding="utf-8")):
        text = json.loads(line)["input"].encode()
        body = text if target == "mask_json" else b"data: " + text.replace(b"\n", b"\ndata: ") + b"\n\n"
        (out / f"{path.stem}{i}").write_bytes(prefix + body)
PY
    echo "[fuzz] $target for ${SECONDS_PER_TARGET}s"
    "$BIN/$target" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$OUT/artifacts/$target/" "$corpus" 2>"$OUT/$target.log" || {
        tail -n 40 "$OUT/$target.log" >&2
        echo "[fuzz] $target found a crash: $(ls "$OUT/artifacts/$target/")" >&2
        exit 1
    }
    grep -E '^stat::number_of_executed_units' "$OUT/$target.log" | sed "s/^/[fuzz] $target /"
done
