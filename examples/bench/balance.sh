#!/usr/bin/env bash
# How floodgate's workers share connections and requests, `global.worker-balance: load` against
# `hash`, and the scaling from one worker to two, as docs/benchmarks.md "Workers balanced by
# load" reports them. Configurations alternate (1 worker, 2 hash, 2 load, 1, 2 hash, ...) so a
# drift of the machine lands on each.
#
#   examples/bench/balance.sh BINARY
#
# Each round, per configuration:
# - staggered: CONNS keep-alive connections opened one after another (curl, each answered
#   before the next opens; what a steady trickle of long-lived clients looks like), then the
#   split of open connections between the workers (`floodgate_worker_connections`);
# - burst: h2load -c C64 -n REQS keep-alive (64 connections opened at once), the request rate
#   and the split of connections while they are open.
# Knobs: ROUNDS (5), CONNS (200), C64 (64), REQS (200000), PORT (28193), ADMIN (28194),
# ORIGIN_PORT (9193). Needs h2load, nginx, curl, python3.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BINARY" >&2; exit 2; }
BIN=$1
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-200}
C64=${C64:-64}
REQS=${REQS:-200000}
PORT=${PORT:-28193}
ADMIN=${ADMIN:-28194}
ORIGIN_PORT=${ORIGIN_PORT:-9193}
for c in h2load nginx curl python3; do
  command -v $c >/dev/null || { echo "$c not installed" >&2; exit 1; }
done
D=$(mktemp -d /tmp/floodgate-balance.XXXXXX)
cat >"$D/nginx.conf" <<N
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$ORIGIN_PORT backlog=8192; keepalive_requests 1000000;
  location / { return 200 "hello world\n"; } } }
N
for cfg in "1 hash" "2 hash" "2 load"; do
  set -- $cfg
  cat >"$D/fg-$1-$2.yaml" <<Y
global: { maxconn: 9000, nbthread: $1, worker-balance: $2, timeouts: { http-keep-alive: 60s } }
xdp: { enabled: false }
admin: { bind: '127.0.0.1:$ADMIN' }
listeners: [{ name: http, bind: '127.0.0.1:$PORT', default-backend: app, backlog: 8192 }]
backends: [{ name: app, servers: ['127.0.0.1:$ORIGIN_PORT'], maxconn-server: 10000 }]
Y
done
nginx -c "$D/nginx.conf" -p "$D" &
NGINX=$!
FG=
trap 'kill $NGINX 2>/dev/null || true; [ -n "$FG" ] && kill $FG 2>/dev/null || true' EXIT
sleep 0.5

# The workers' open connections, as "a/b" (or "a" with one worker).
split() {
  curl -s "http://127.0.0.1:$ADMIN/metrics" |
    awk '/^floodgate_worker_connections\{/ { v[v_n++] = $2 } END { s = v[0]; for (i = 1; i < v_n; i++) s = s "/" v[i]; print s }'
}

# Opens $CONNS connections one after another and holds them; prints the split.
staggered() {
  python3 - "$PORT" "$CONNS" "$ADMIN" <<'P'
import socket, sys, urllib.request
port, n, admin = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while not got.endswith(b"hello world\n"):
        got += s.recv(4096)
    held.append(s)
m = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
print("/".join(l.split()[1] for l in m.splitlines() if l.startswith("floodgate_worker_connections{")))
P
}

printf '%-8s %-6s %-5s %-14s %-12s %-10s\n' round workers mode staggered burst_split burst_rps
for r in $(seq 1 "$ROUNDS"); do
  for cfg in "1 hash" "2 hash" "2 load"; do
    set -- $cfg
    "$BIN" run --config "$D/fg-$1-$2.yaml" >"$D/fg.log" 2>&1 &
    FG=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    st=$(staggered)
    sleep 0.3
    h2load --h1 -c "$C64" -n "$REQS" "http://127.0.0.1:$PORT/" >"$D/h2load.out" 2>&1 &
    H=$!
    sleep 0.5
    bs=$(split)
    wait $H
    rps=$(awk '/^finished in/ { print int($4) }' "$D/h2load.out")
    printf '%-8s %-6s %-5s %-14s %-12s %-10s\n' "$r" "$1" "$2" "$st" "$bs" "$rps"
    kill -INT $FG
    wait $FG 2>/dev/null || true
    FG=
  done
done
