#!/usr/bin/env bash
# Development TLS material, each set written only if it is missing:
#
#   scripts/gen-tls.sh [OUT_DIR]     (default: .gatehouse/tls)
#
# The gateway's HTTPS listener (clients trust OUT_DIR/ca.crt):
#   ca.crt (+ ca.key), server.crt, server.key          for 127.0.0.1 / localhost
# mTLS between Envoy and the service's gRPC listener (service.grpc_tls), under a CA of its
# own, so that no certificate of the public listener's CA can call the service:
#   grpc-ca.crt (+ grpc-ca.key), grpc-server.crt/.key (the service), grpc-client.crt/.key (Envoy)
#
# Keys are 0600 in a 0700 folder. Development only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.gatehouse/tls}"

command -v openssl >/dev/null || { echo "error: openssl is required (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$OUT"
chmod 700 "$OUT"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

have() {
    local f
    for f in "$@"; do [ -s "$OUT/$f" ] || return 1; done
}

# ca NAME CN: a self-signed CA in $tmp/NAME.crt, $tmp/NAME.key.
ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 825 \
        -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$tmp/$1.key" -out "$tmp/$1.crt" 2>/dev/null
}

# leaf CA NAME CN EKU: a certificate for 127.0.0.1 / localhost signed by CA.
leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
        -subj "/CN=$3" -keyout "$tmp/$2.key" -out "$tmp/$2.csr" 2>/dev/null
    cat >"$tmp/$2.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$4
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost
EOF
    openssl x509 -req -in "$tmp/$2.csr" -CA "$tmp/$1.crt" -CAkey "$tmp/$1.key" -CAcreateserial \
        -days 825 -sha256 -extfile "$tmp/$2.ext" -out "$tmp/$2.crt" 2>/dev/null
}

# install NAME...: moves each NAME.crt and NAME.key into OUT, keys 0600.
install_set() {
    local n
    for n in "$@"; do
        chmod 600 "$tmp/$n.key"
        mv "$tmp/$n.key" "$tmp/$n.crt" "$OUT/"
    done
}

if have ca.crt server.crt server.key; then
    echo "[gen-tls] Using the existing HTTPS certificates in $OUT"
else
    ca ca "Gatehouse development CA"
    leaf ca server localhost serverAuth
    install_set ca server
    echo "[gen-tls] Wrote $OUT/ca.crt, $OUT/server.crt, $OUT/server.key (CA key: $OUT/ca.key)"
fi

if have grpc-ca.crt grpc-server.crt grpc-server.key grpc-client.crt grpc-client.key; then
    echo "[gen-tls] Using the existing gRPC mTLS certificates in $OUT"
else
    ca grpc-ca "Gatehouse development gRPC CA"
    leaf grpc-ca grpc-server localhost serverAuth
    leaf grpc-ca grpc-client "gatehouse-envoy" clientAuth
    install_set grpc-ca grpc-server grpc-client
    echo "[gen-tls] Wrote $OUT/grpc-ca.crt, $OUT/grpc-server.{crt,key}, $OUT/grpc-client.{crt,key}"
fi
