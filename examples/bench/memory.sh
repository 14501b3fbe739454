#!/usr/bin/env bash
# Peak memory per busy connection of floodgate, as docs/benchmarks.md "Memory per connection"
# measures it: peak RSS (VmHWM) under `wrk -t1 -cN -d5s` minus the RSS before the load, over N.
# Sides alternate (old, new, old, new, ...) so a drift of the machine lands on both.
#
#   examples/bench/memory.sh OLD_BINARY NEW_BINARY
#
# Knobs: CONNS (3000), ROUNDS (3), PORT (28191), ORIGIN_PORT (9192), OLD_GLOBAL / NEW_GLOBAL
# (extra `global` keys per side, e.g. OLD_GLOBAL='http1-engine: hyper'). The proxy runs on
# CPU 0, the nginx origin and wrk on CPU 1. Needs wrk, nginx, curl.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
CONNS=${CONNS:-3000}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-28191}
ORIGIN_PORT=${ORIGIN_PORT:-9192}
OLD_GLOBAL=${OLD_GLOBAL:-}
NEW_GLOBAL=${NEW_GLOBAL:-}
for c in wrk nginx curl taskset; do
  command -v $c >/dev/null || { echo "$c not installed" >&2; exit 1; }
done
D=$(mktemp -d /tmp/floodgate-memory.XXXXXX)
cat >"$D/nginx.conf" <<N
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$ORIGIN_PORT backlog=8192; keepalive_requests 1000000;
  location / { return 200 "hello world\n"; } } }
N
for which in old new; do
  extra=$OLD_GLOBAL
  [ $which = new ] && extra=$NEW_GLOBAL
  cat >"$D/floodgate-$which.yaml" <<Y
global: { maxconn: 9000, nbthread: 1${extra:+, $extra} }
xdp: { enabled: false }
listeners: [{ name: http, bind: '127.0.0.1:$PORT', default-backend: app, backlog: 8192 }]
backends: [{ name: app, servers: ['127.0.0.1:$ORIGIN_PORT'], maxconn-server: 10000 }]
Y
done
taskset -c 1 nginx -c "$D/nginx.conf" -p "$D" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null || true; rm -rf "$D"' EXIT
sleep 0.5

# $1 binary, $2 old|new: prints "KB-per-connection rps".
measure() {
  taskset -c 0 "$1" run --config "$D/floodgate-$2.yaml" >"$D/fg.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null -m 1 "http://127.0.0.1:$PORT/" && break
    sleep 0.2
  done
  local before peak rps
  before=$(awk '/VmRSS/ { print $2 }' /proc/$pid/status)
  rps=$(taskset -c 1 wrk -t1 -c"$CONNS" -d5s "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ { print int($2) }')
  peak=$(awk '/VmHWM/ { print $2 }' /proc/$pid/status)
  kill -INT $pid
  wait $pid 2>/dev/null || true
  echo "$(( (peak - before) / CONNS )) $rps $peak"
}

printf '%-6s %-5s %12s %10s %12s\n' round side "KB/conn" "req/s" "peak KB"
for r in $(seq "$ROUNDS"); do
  for which in old new; do
    bin=$1
    [ $which = new ] && bin=$2
    read -r per rps peak < <(measure "$bin" $which)
    printf '%-6s %-5s %12s %10s %12s\n' "$r" $which "$per" "$rps" "$peak"
  done
done
