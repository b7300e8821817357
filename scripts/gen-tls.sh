#!/usr/bin/env bash
# Development TLS material: a CA and a server certificate for 127.0.0.1 / localhost.
#
#   scripts/gen-tls.sh [OUT_DIR]     (default: .gatehouse/tls)
#
# Writes OUT_DIR/ca.crt, OUT_DIR/server.crt, OUT_DIR/server.key (and the CA key), only
# if they are missing. Clients trust OUT_DIR/ca.crt. Development only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.gatehouse/tls}"

if [ -s "$OUT/ca.crt" ] && [ -s "$OUT/server.crt" ] && [ -s "$OUT/server.key" ]; then
    echo "[gen-tls] Using existing certificates in $OUT"
    exit 0
fi
command -v openssl >/dev/null || { echo "error: openssl is required (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$OUT"
chmod 700 "$OUT"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 825 \
    -subj "/CN=Gatehouse development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -subj "/CN=localhost" -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null

cat >"$tmp/server.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost
EOF
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 825 -sha256 -extfile "$tmp/server.ext" -out "$tmp/server.crt" 2>/dev/null

chmod 600 "$tmp/ca.key" "$tmp/server.key"
mv "$tmp/ca.key" "$tmp/ca.crt" "$tmp/server.key" "$tmp/server.crt" "$OUT/"
echo "[gen-tls] Wrote $OUT/ca.crt, $OUT/server.crt, $OUT/server.key (CA key: $OUT/ca.key)"
