#!/usr/bin/env bash
# Userspace instructions per proxied request of two floodgate binaries, counted by callgrind:
# deterministic to well under 1%, where CPU time on these shared VMs moves by 10-20% between
# runs (and the VM exposes no hardware counters to `perf stat`). For A/B checks of a change
# that should not change the cost of a request (a restructuring), not for comparisons with
# other proxies: callgrind counts floodgate's own instructions, not the kernel's.
#
#   examples/bench/instructions.sh OLD_BINARY NEW_BINARY
#
# Each binary serves keep-alive GETs (h2load --h1, 8 connections) from one nginx origin, once
# with N1 and once with N2 requests; the difference of the two totals over N2 - N1 is the cost
# of a request without start-up and shutdown. Knobs: N1 (1000), N2 (11000), PORT (28190),
# ORIGIN_PORT (9191), OLD_GLOBAL / NEW_GLOBAL (extra `global` keys for each side, e.g.
# OLD_GLOBAL='http1-engine: hyper' to compare the HTTP/1.1 engines of one binary), CLOSE=1 (a
# new connection per request: h2load's -H 'Connection: close'). Needs valgrind, h2load,
# nginx, curl.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
N1=${N1:-1000}
N2=${N2:-11000}
PORT=${PORT:-28190}
ORIGIN_PORT=${ORIGIN_PORT:-9191}
OLD_GLOBAL=${OLD_GLOBAL:-}
NEW_GLOBAL=${NEW_GLOBAL:-}
CLOSE=${CLOSE:-0}
for c in valgrind h2load nginx curl; do
  command -v $c >/dev/null || { echo "$c not installed" >&2; exit 1; }
done
D=$(mktemp -d /tmp/floodgate-instructions.XXXXXX)
cat >"$D/nginx.conf" <<N
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$ORIGIN_PORT backlog=4096; keepalive_requests 100000;
  location / { return 200 "hello world\n"; } } }
N
for which in old new; do
  extra=$OLD_GLOBAL
  [ $which = new ] && extra=$NEW_GLOBAL
  cat >"$D/floodgate-$which.yaml" <<Y
global: { maxconn: 100000, nbthread: 1${extra:+, $extra} }
xdp: { enabled: false }
listeners: [{ name: http, bind: '127.0.0.1:$PORT', default-backend: app }]
backends: [{ name: app, servers: ['127.0.0.1:$ORIGIN_PORT'], maxconn-server: 10000 }]
Y
done
nginx -c "$D/nginx.conf" -p "$D" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null || true' EXIT
sleep 0.5
if curl -s -o /dev/null -m 1 "http://127.0.0.1:$PORT/"; then
  echo "port $PORT is already served by something else" >&2
  exit 1
fi

# $1 binary, $2 requests, $3 old|new: prints the instructions of the whole run (every process and thread).
count() {
  local out=$D/cg.$RANDOM
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out.%p" \
    "$1" run --config "$D/floodgate-$3.yaml" >"$out.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    curl -s -o /dev/null -m 1 "http://127.0.0.1:$PORT/" && break
    sleep 0.5
  done
  local close=()
  [ "$CLOSE" = 1 ] && close=(-H 'Connection: close')
  h2load --h1 -n "$2" -c 8 -m 1 "${close[@]}" "http://127.0.0.1:$PORT/" | grep -q "$2 succeeded" ||
    { echo "h2load: not every request succeeded" >&2; exit 1; }
  kill -INT $pid
  wait $pid 2>/dev/null || true
  cat "$out".[0-9]* | awk '/^summary:/ { s += $2 } END { print s }'
}

printf '%-8s %14s %14s %12s\n' binary "Ir ($N1 req)" "Ir ($N2 req)" "Ir/request"
declare -A per
for which in old new; do
  bin=$1
  [ $which = new ] && bin=$2
  a=$(count "$bin" "$N1" $which)
  b=$(count "$bin" "$N2" $which)
  per[$which]=$(( (b - a) / (N2 - N1) ))
  printf '%-8s %14s %14s %12s\n' $which "$a" "$b" "${per[$which]}"
done
awk -v a="${per[old]}" -v b="${per[new]}" 'BEGIN { printf "new/old: %.4f\n", b / a }'
rm -rf "$D"
