#!/usr/bin/env bash
# The whole Gatehouse stack on this machine, loopback only, until Ctrl-C:
#   server-everything (demo MCP server)   ← Envoy + gatehouse.wasm ← you
#   demo/mcp_server.py (fake customer DB)         ↕ ext_authz / audit ingest
#                                          gatehouse serve (SQLite audit store)
#
#   scripts/demo.sh                  (CONFIG=path/to/gatehouse.yaml to use another config)
#
# Logs and state go to .gatehouse/ (logs/, envoy.yaml, audit.db, demo.db, tls/, dev issuer key).
# The upstream named "demo" in the config, if any, is demo/mcp_server.py: answers full of
# fake secrets and personal data, to watch masking at work.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG="${CONFIG:-gatehouse.yaml}"
STATE="$ROOT/.gatehouse"
LOGS="$STATE/logs"
mkdir -p "$LOGS"

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[demo] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ -f "$CONFIG" ] || die "no config file $CONFIG"

if [ -z "${DEMO_SKIP_BUILD:-}" ]; then
    bash scripts/setup.sh demo
    say "Building the service and the filter"
    cargo build -p gatehouse-service
    cargo build -p gatehouse-filter --target wasm32-wasip1 --release
fi

GATEHOUSE="${GATEHOUSE_BIN:-$ROOT/target/debug/gatehouse}"
ENVOY="${ENVOY_BIN:-$ROOT/.tools/bin/envoy}"
NODE="$ROOT/.tools/bin/node"
PY="$ROOT/.tools/venv/bin/python"
[ -x "$GATEHOUSE" ] || die "$GATEHOUSE not built (make build)"
[ -x "$ENVOY" ] || die "$ENVOY missing (make setup)"

# The development certificates (HTTPS listener, gRPC mTLS) the demo config names.
bash scripts/gen-tls.sh "$STATE/tls"

"$GATEHOUSE" check-config "$CONFIG" >/dev/null || { "$GATEHOUSE" check-config "$CONFIG"; exit 1; }

# The addresses the demo needs, read from the config (relative paths → config's directory).
eval "$("$PY" - "$CONFIG" <<'EOF'
import os, shlex, sys, urllib.parse, yaml
path = sys.argv[1]
base = os.path.dirname(os.path.abspath(path))
c = yaml.safe_load(open(path))
e, s, up = c["envoy"], c["service"], c["upstreams"][0]
u = urllib.parse.urlsplit(up["url"])
def port(addr): return addr.rsplit(":", 1)[1]
def resolve(p): return p if os.path.isabs(p) else os.path.join(base, p)
out = {
    "REST": s["rest_listen"], "GRPC": s["grpc_listen"], "PUBLIC_URL": s["public_url"].rstrip("/"),
    "HTTP": e["http_listen"], "HTTPS": e.get("https_listen") or "", "ADMIN": e["admin_listen"],
    "TLS_CERT": resolve(e["tls_cert"]) if e.get("tls_cert") else "",
    "UP_NAME": up["name"], "UP_HOST": u.hostname, "UP_PORT": str(u.port or 80),
    "MCP_PATH": up.get("path") or u.path,
    "TOKEN_KEY_FILE": resolve(c["masking"]["token_key_file"]) if (c.get("masking") or {}).get("token_key_file") else "",
}
demo = next((x for x in c["upstreams"] if x["name"] == "demo"), None)
if demo:
    d = urllib.parse.urlsplit(demo["url"])
    out |= {"DEMO_HOST": d.hostname, "DEMO_PORT": str(d.port or 80), "DEMO_PATH": demo.get("path") or d.path}
for k, v in out.items():
    print(f"{k}={shlex.quote(v)}")
EOF
)"

listening() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

PIDS=()
NAMES=()
cleanup() {
    trap - EXIT INT TERM
    echo
    say "Stopping"
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

start() { # name logfile command...
    local name="$1" log="$2"
    shift 2
    # Own session: Ctrl-C reaches only this script, whose trap stops the children in order.
    setsid "$@" >"$log" 2>&1 </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
}

wait_until() { # what pid timeout-seconds probe...
    local what="$1" pid="$2" timeout="$3"
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "$what exited; see its log in $LOGS"
        ((SECONDS < deadline)) || die "$what not ready after ${timeout}s; see $LOGS"
        sleep 0.2
    done
}

for addr in "$REST" "$GRPC" "$HTTP" "$ADMIN" ${HTTPS:+"$HTTPS"}; do
    listening "$addr" && die "$addr is already in use (another demo running?)"
done

if [ -n "$TLS_CERT" ]; then
    bash scripts/gen-tls.sh "$(dirname "$TLS_CERT")"
    CA="$(dirname "$TLS_CERT")/ca.crt"
fi

if listening "$UP_HOST:$UP_PORT"; then
    say "Upstream $UP_HOST:$UP_PORT already answers; using it"
else
    case "$UP_HOST" in 127.0.0.1 | localhost) ;; *) die "upstream $UP_HOST:$UP_PORT is not up" ;; esac
    say "Starting server-everything on 127.0.0.1:$UP_PORT"
    # It calls listen(PORT) without a host: the preload binds it to loopback only.
    start server-everything "$LOGS/server-everything.log" env PORT="$UP_PORT" HOST=127.0.0.1 \
        "$NODE" --import "$ROOT/scripts/loopback-listen.mjs" \
        "$ROOT/.tools/npm/node_modules/.bin/mcp-server-everything" streamableHttp
    wait_until server-everything "${PIDS[-1]}" 30 listening "127.0.0.1:$UP_PORT"
fi

if [ -n "${DEMO_PORT:-}" ]; then
    if listening "$DEMO_HOST:$DEMO_PORT"; then
        say "Demo database server $DEMO_HOST:$DEMO_PORT already answers; using it"
    else
        case "$DEMO_HOST" in 127.0.0.1 | localhost) ;; *) die "demo upstream $DEMO_HOST:$DEMO_PORT is not up" ;; esac
        say "Starting the demo database server on 127.0.0.1:$DEMO_PORT (fake data in $STATE/demo.db)"
        start demo-mcp-server "$LOGS/demo-mcp-server.log" "$PY" "$ROOT/demo/mcp_server.py" \
            --port "$DEMO_PORT" --db "$STATE/demo.db"
        wait_until demo-mcp-server "${PIDS[-1]}" 30 listening "127.0.0.1:$DEMO_PORT"
    fi
fi

"$GATEHOUSE" envoy-config --config "$CONFIG" --out "$STATE/envoy.yaml"

say "Starting gatehouse serve"
start gatehouse "$LOGS/gatehouse.log" env RUST_LOG="${RUST_LOG:-info}" "$GATEHOUSE" serve --config "$CONFIG"
wait_until "gatehouse serve" "${PIDS[-1]}" 30 curl -fsS -o /dev/null "http://$REST/healthz"

say "Starting Envoy"
# The masking token key reaches the filter through Envoy's environment, never its config
# (Envoy's admin /config_dump shows the config).
if [ -n "$TOKEN_KEY_FILE" ]; then
    GATEHOUSE_MASK_TOKEN_KEY="$(cat "$TOKEN_KEY_FILE")"
    export GATEHOUSE_MASK_TOKEN_KEY
fi
start envoy "$LOGS/envoy.log" "$ENVOY" -c "$STATE/envoy.yaml" --base-id "${ADMIN##*:}" --log-level info
unset GATEHOUSE_MASK_TOKEN_KEY
wait_until envoy "${PIDS[-1]}" 30 curl -fsS -o /dev/null "http://$ADMIN/ready"

token() { "$GATEHOUSE" dev-token --config "$CONFIG" --sub "$1" --groups "$2"; }
ALICE="$(token alice eng)"
BOB="$(token bob approvers)"
AUDITOR="$("$GATEHOUSE" dev-token --config "$CONFIG" --sub ines --groups auditors --auditor)"
CAROL="$(token carol support)"
# Approvers' tokens are for the approvals audience only: an MCP token cannot approve.
BOB_APPROVER="$("$GATEHOUSE" dev-token --config "$CONFIG" --sub bob --groups approvers --approver)"

cat <<EOF

  Gatehouse demo is running (Ctrl-C stops everything).

  MCP endpoint     http://$HTTP$MCP_PATH   (upstream "$UP_NAME" → http://$UP_HOST:$UP_PORT)
EOF
[ -n "$HTTPS" ] && cat <<EOF
  MCP over TLS     https://$HTTPS$MCP_PATH
  CA certificate   $CA
EOF
[ -n "${DEMO_PORT:-}" ] && cat <<EOF
  Demo database    $PUBLIC_URL$DEMO_PATH   (upstream "demo" → http://$DEMO_HOST:$DEMO_PORT/mcp; fake PII, masked)
EOF
cat <<EOF
  Service (REST)   http://$REST   (healthz, metrics, /v1/audit/..., /v1/approvals/...)
  Approvals page   http://$REST/ui#token=$BOB_APPROVER   (bob approves; opens signed in)
  Envoy admin      http://$ADMIN
  Logs             $LOGS/{envoy,gatehouse,server-everything,demo-mcp-server}.log

  Dev tokens (1 h, dev issuer — not for production):
    alice (eng):        $ALICE
    bob (approvers):    $BOB
    bob, approving:     $BOB_APPROVER   (approvals audience: /v1/approvals and the page only)
    ines (auditors):    $AUDITOR   (audit audience: /v1/audit only)
    carol (support):    $CAROL   (sees e-mails in clear where masking.reveal says so)

  Try:
    curl -s http://$HTTP$MCP_PATH -H "authorization: Bearer \$ALICE" \\
      -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \\
      -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'
    curl -s "http://$REST/v1/audit/records?limit=5" -H "authorization: Bearer \$AUDITOR"

EOF
{
    echo "export ALICE='$ALICE'"
    echo "export BOB='$BOB'"
    echo "export BOB_APPROVER='$BOB_APPROVER'"
    echo "export AUDITOR='$AUDITOR'"
    echo "export CAROL='$CAROL'"
} >"$STATE/demo-tokens.sh"
say "Tokens also in $STATE/demo-tokens.sh (source it)"

# Run until Ctrl-C, or until one of the processes dies.
while true; do
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
            die "${NAMES[i]} stopped; see $LOGS/${NAMES[i]}.log"
        fi
    done
    sleep 1
done
