#!/usr/bin/env bash
# The key material Gatehouse needs on Kubernetes, written as files into OUT_DIR (0600 keys in
# a 0700 folder); deploy/README.md turns them into Secrets with `kubectl create secret`.
# Nothing is sent anywhere. Keep OUT_DIR safe (or delete it once the Secrets exist): the CA
# key signs client certificates the gRPC listener accepts.
#
#   deploy/gen-secrets.sh OUT_DIR [NAMESPACE]      (NAMESPACE of the service: gatehouse)
#
#   grpc-ca.crt, grpc-ca.key          the gRPC listener's own CA (service.grpc_tls.ca_file)
#   grpc-server.crt, grpc-server.key  the service's certificate (serverAuth), named for its
#                                     headless Service gatehouse-grpc.NAMESPACE.svc (and
#                                     .cluster.local); Envoy checks that the gRPC CA signed it
#   grpc-client.crt, grpc-client.key  the sidecars' client certificate (clientAuth)
#   checkpoint-key.pem                Ed25519 (PKCS#8): signs audit checkpoints, all replicas
#   session-key                       hex, 32 bytes: binds MCP session ids to their caller
#   mask-token-key                    hex, 32 bytes: keyed tokens of masked values
set -euo pipefail

OUT="${1:?usage: deploy/gen-secrets.sh OUT_DIR [NAMESPACE]}"
NS="${2:-gatehouse}"
command -v openssl >/dev/null || { echo "error: openssl is required" >&2; exit 1; }
if [ -e "$OUT/grpc-ca.key" ]; then
    echo "error: $OUT already holds keys; use another folder" >&2
    exit 1
fi
mkdir -p "$OUT"
chmod 700 "$OUT"
umask 077

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ec_key "$OUT/grpc-ca.key"
openssl req -x509 -new -key "$OUT/grpc-ca.key" -sha256 -days 825 \
    -subj "/CN=Gatehouse gRPC CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$OUT/grpc-ca.crt"

# leaf NAME CN EKU SAN: a certificate signed by the gRPC CA.
leaf() {
    ec_key "$OUT/$1.key"
    openssl req -new -key "$OUT/$1.key" -subj "/CN=$2" -out "$OUT/$1.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=$3" "subjectAltName=$4" >"$OUT/$1.ext"
    openssl x509 -req -in "$OUT/$1.csr" -CA "$OUT/grpc-ca.crt" -CAkey "$OUT/grpc-ca.key" \
        -CAcreateserial -days 825 -sha256 -extfile "$OUT/$1.ext" -out "$OUT/$1.crt" 2>/dev/null
    rm -f "$OUT/$1.csr" "$OUT/$1.ext"
}
san="DNS:gatehouse-grpc.$NS.svc,DNS:gatehouse-grpc.$NS.svc.cluster.local"
leaf grpc-server "gatehouse-grpc.$NS.svc" serverAuth "$san"
leaf grpc-client "gatehouse-envoy" clientAuth "DNS:gatehouse-envoy"
rm -f "$OUT/grpc-ca.srl"

openssl genpkey -algorithm ed25519 -out "$OUT/checkpoint-key.pem"
openssl rand -hex 32 >"$OUT/session-key"
openssl rand -hex 32 >"$OUT/mask-token-key"

echo "Wrote $OUT: grpc-ca.{crt,key}, grpc-server.{crt,key}, grpc-client.{crt,key}, checkpoint-key.pem, session-key, mask-token-key"
