#!/usr/bin/env bash
# CPU per request of two floodgate binaries, alternating A and B in every round, on the shared
# harness's method: the proxy pinned to CPU 0 and measured from /proc (user + system time of
# the whole process), one nginx origin and the load generator (wrk, 1 thread) on the last CPU.
# For a change whose effect is smaller than the drift of these VMs between two harness runs:
# each round runs both binaries back to back, and the ratio is taken within the round.
#
#   examples/bench/ab.sh OLD_BINARY NEW_BINARY
#
# Knobs: ROUNDS (7), DURATION (10 s), CONNS (64), CLOSE=1 (wrk -H 'Connection: close': a new
# connection per request), PORT (28190), ORIGIN_PORT (9191), THREADS (1, floodgate's nbthread).
# Printed per round: requests/s and us/req of each, and B/A; then the median B/A.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
CLOSE=${CLOSE:-0}
PORT=${PORT:-28190}
ORIGIN_PORT=${ORIGIN_PORT:-9191}
THREADS=${THREADS:-1}
LOAD_CPU=$(($(nproc) - 1))
for c in wrk nginx curl; do
  command -v $c >/dev/null || { echo "$c not installed" >&2; exit 1; }
done
D=$(mktemp -d /tmp/floodgate-ab.XXXXXX)
cat >"$D/nginx.conf" <<N
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$ORIGIN_PORT backlog=4096; keepalive_requests 100000;
  location / { return 200 "hello world\n"; } } }
N
cat >"$D/floodgate.yaml" <<Y
global: { maxconn: 9000, nbthread: $THREADS }
xdp: { enabled: false }
listeners:
  - { name: web, bind: '127.0.0.1:$PORT', default-backend: app }
backends: [{ name: app, servers: ['127.0.0.1:$ORIGIN_PORT'] }]
Y
taskset -c "$LOAD_CPU" nginx -c "$D/nginx.conf" &
origin=$!
trap 'kill $origin 2>/dev/null; rm -rf "$D"' EXIT
sleep 0.5
close=()
[ "$CLOSE" = 1 ] && close=(-H 'Connection: close')
ticks=$(getconf CLK_TCK)

# One measured run of binary $1: prints "rps us_per_req".
run() {
  taskset -c 0 "$1" run --config "$D/floodgate.yaml" >"$D/fg.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "${close[@]}" "http://127.0.0.1:$PORT/" >/dev/null
  local before after out
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${close[@]}" "http://127.0.0.1:$PORT/")
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -INT $pid
  wait $pid 2>/dev/null || true
  local requests
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v r="$requests" -v t=$((after - before)) -v hz="$ticks" -v d="$DURATION" \
    'BEGIN { printf "%.0f %.2f\n", r / d, t / hz * 1e6 / r }'
}

ratios=()
printf "%-6s %10s %10s %10s %10s %8s\n" round A_rps A_us/req B_rps B_us/req B/A
for r in $(seq "$ROUNDS"); do
  # Alternate which binary goes first.
  if [ $((r % 2)) = 1 ]; then
    a=$(run "$1"); b=$(run "$2")
  else
    b=$(run "$2"); a=$(run "$1")
  fi
  ratio=$(awk -v a="${a#* }" -v b="${b#* }" 'BEGIN { printf "%.3f", b / a }')
  ratios+=("$ratio")
  printf "%-6s %10s %10s %10s %10s %8s\n" "$r" ${a% *} ${a#* } ${b% *} ${b#* } "$ratio"
done
printf "%s\n" "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "median B/A us/req: %s (range %s-%s)\n", v[int((NR + 1) / 2)], v[1], v[NR] }'
