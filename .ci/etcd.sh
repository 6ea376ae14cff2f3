#!/usr/bin/env bash
# Starts etcd on 127.0.0.1 (non-default ports, temporary data dir), waits until it
# is healthy, runs palisade-balance's etcd tests, the order demo's unit tests with
# its etcd feature and its separate processes registered in etcd against it, and
# stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq etcd-server protobuf-compiler libprotobuf-dev >/dev/null
fi

CLIENT_PORT="${PALISADE_ETCD_CLIENT_PORT:-23791}"
PEER_PORT="${PALISADE_ETCD_PEER_PORT:-23801}"
DATA_DIR="$(mktemp -d /tmp/palisade-etcd.XXXXXX)"
CLIENT_URL="http://127.0.0.1:${CLIENT_PORT}"
PEER_URL="http://127.0.0.1:${PEER_PORT}"

etcd --name palisade-ci --data-dir "$DATA_DIR" \
    --listen-client-urls "$CLIENT_URL" --advertise-client-urls "$CLIENT_URL" \
    --listen-peer-urls "$PEER_URL" --initial-advertise-peer-urls "$PEER_URL" \
    --initial-cluster "palisade-ci=${PEER_URL}" >"$DATA_DIR.log" 2>&1 &
ETCD_PID=$!
cleanup() {
    kill "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
    rm -rf "$DATA_DIR" "$DATA_DIR.log"
}
trap cleanup EXIT

healthy=0
for _ in $(seq 1 100); do
    if curl -fsS "${CLIENT_URL}/health" 2>/dev/null | grep -q '"health":"true"'; then
        healthy=1
        break
    fi
    sleep 0.2
done
if [ "$healthy" != 1 ]; then
    echo "etcd did not become healthy; its log:" >&2
    cat "$DATA_DIR.log" >&2
    exit 1
fi

export PALISADE_ETCD_ENDPOINTS="127.0.0.1:${CLIENT_PORT}"
# The etcd tests skip without an etcd; here a missing one fails them.
export PALISADE_REQUIRE_ETCD=1
cargo test -p palisade-balance --features etcd --test etcd
cargo test -p order-demo --features etcd --lib --test serve_etcd
