#!/usr/bin/env bash
# Start three drawbridge nodes on this machine for trying clustering:
#   edge-1  API https://127.0.0.1:9000  raft :9001  gossip :9002  frontends on 127.0.1.1
#   edge-2  API https://127.0.0.1:9010  raft :9011  gossip :9012  frontends on 127.0.1.2
#   edge-3  API https://127.0.0.1:9020  raft :9021  gossip :9022  frontends on 127.0.1.3
# It runs secured as in production: a cluster CA and one certificate per
# node (drawbridge tls), raft mutual TLS, an encrypted gossip, HTTPS for the
# API. Data and credentials live in ./drawbridge-cluster (tls/, gossip.key).
# Ctrl-C stops the agents; their HAProxies keep serving (as in production)
# until `make cluster-stop`.
set -euo pipefail
BIN=${BIN:-bin/drawbridge}
DIR=${DIR:-drawbridge-cluster}
# BASE moves the nine ports (BASE..BASE+22) when 9000 is taken.
BASE=${BASE:-9000}
mkdir -p "$DIR"

if [ "${1:-}" = "stop" ]; then
	for n in 1 2 3; do
		pidfile="$DIR/edge-$n/haproxy/haproxy.pid"
		if [ -f "$pidfile" ]; then
			kill "$(head -1 "$pidfile")" 2>/dev/null || true
		fi
	done
	echo "stopped the cluster's HAProxies"
	exit 0
fi

if [ -z "${DRAWBRIDGE_API_TOKEN:-}" ]; then
	if [ ! -s "$DIR/token" ]; then
		head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/token"
		chmod 600 "$DIR/token"
	fi
	DRAWBRIDGE_API_TOKEN=$(cat "$DIR/token")
fi
export DRAWBRIDGE_API_TOKEN
# The walkthrough routes to a server on 127.0.0.1: allow loopback backends
# (production agents refuse them).
export DRAWBRIDGE_ROUTES_ALLOW_LOOPBACK_BACKENDS=true
[ -s "$DIR/gossip.key" ] || { "$BIN" keygen > "$DIR/gossip.key"; chmod 600 "$DIR/gossip.key"; }
TLS="$DIR/tls"
[ -s "$TLS/ca.pem" ] || "$BIN" tls ca create --dir "$TLS" >/dev/null
for n in 1 2 3; do
	[ -s "$TLS/edge-$n.pem" ] || "$BIN" tls cert create --ca-dir "$TLS" --node "edge-$n" --ip 127.0.0.1 >/dev/null
done

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "agents stopped; HAProxies keep serving (make cluster-stop stops them)"
}
trap cleanup EXIT INT TERM

for n in 1 2 3; do
	base=$((BASE + (n - 1) * 10))
	args=(agent --node-name "edge-$n" --data-dir "$DIR/edge-$n"
		--api-addr "127.0.0.1:$base" --raft-addr "127.0.0.1:$((base + 1))" --gossip-addr "127.0.0.1:$((base + 2))"
		--haproxy-bind-address "127.0.1.$n" --bootstrap-expect 3)
	[ "$n" = 1 ] || args+=(--join "127.0.0.1:$((BASE + 2))")
	DRAWBRIDGE_GOSSIP_KEY_FILE="$DIR/gossip.key" \
		DRAWBRIDGE_RAFT_TLS_CA_FILE="$TLS/ca.pem" \
		DRAWBRIDGE_RAFT_TLS_CERT_FILE="$TLS/edge-$n.pem" DRAWBRIDGE_RAFT_TLS_KEY_FILE="$TLS/edge-$n-key.pem" \
		DRAWBRIDGE_API_TLS_CERT_FILE="$TLS/edge-$n.pem" DRAWBRIDGE_API_TLS_KEY_FILE="$TLS/edge-$n-key.pem" \
		"$BIN" "${args[@]}" 2>&1 | sed -u "s/^/[edge-$n] /" &
	pids+=($!)
done

cat <<MSG
three nodes starting; API token: export DRAWBRIDGE_API_TOKEN=$DRAWBRIDGE_API_TOKEN
the API is HTTPS with certificates from $TLS/ca.pem:
try:   $BIN members --addr https://127.0.0.1:$BASE --ca-file $TLS/ca.pem
       curl --cacert $TLS/ca.pem -H "X-Funkypenguin-Token: \$DRAWBRIDGE_API_TOKEN" -d '{"name":"demo","frontend-port":8080,"backend-port":8081,"dst-ip":"127.0.0.1","action":"add"}' https://127.0.0.1:$((BASE + 10))/hooks/update-haproxy
Ctrl-C stops the agents.
MSG
wait
