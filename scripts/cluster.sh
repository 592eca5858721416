#!/usr/bin/env bash
# Start three drawbridge nodes on this machine for trying clustering:
#   edge-1  API 127.0.0.1:9000  raft :9001  gossip :9002  frontends on 127.0.1.1
#   edge-2  API 127.0.0.1:9010  raft :9011  gossip :9012  frontends on 127.0.1.2
#   edge-3  API 127.0.0.1:9020  raft :9021  gossip :9022  frontends on 127.0.1.3
# Data lives in ./drawbridge-cluster. Ctrl-C stops the agents; their HAProxies
# keep serving (as in production) until `make cluster-stop`.
set -euo pipefail
BIN=${BIN:-bin/drawbridge}
DIR=${DIR:-drawbridge-cluster}
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
[ -s "$DIR/gossip.key" ] || { "$BIN" keygen > "$DIR/gossip.key"; chmod 600 "$DIR/gossip.key"; }

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "agents stopped; HAProxies keep serving (make cluster-stop stops them)"
}
trap cleanup EXIT INT TERM

for n in 1 2 3; do
	base=$((9000 + (n - 1) * 10))
	args=(agent --node-name "edge-$n" --data-dir "$DIR/edge-$n"
		--api-addr "127.0.0.1:$base" --raft-addr "127.0.0.1:$((base + 1))" --gossip-addr "127.0.0.1:$((base + 2))"
		--haproxy-bind-address "127.0.1.$n" --bootstrap-expect 3)
	[ "$n" = 1 ] || args+=(--join 127.0.0.1:9002)
	DRAWBRIDGE_GOSSIP_KEY_FILE="$DIR/gossip.key" "$BIN" "${args[@]}" 2>&1 | sed -u "s/^/[edge-$n] /" &
	pids+=($!)
done

cat <<MSG
three nodes starting; API token: export DRAWBRIDGE_API_TOKEN=$DRAWBRIDGE_API_TOKEN
try:   $BIN members
       curl -H "X-Funkypenguin-Token: \$DRAWBRIDGE_API_TOKEN" -d '{"name":"demo","frontend-port":8080,"backend-port":8081,"dst-ip":"127.0.0.1","action":"add"}' http://127.0.0.1:9010/hooks/update-haproxy
Ctrl-C stops the agents.
MSG
wait
