#!/usr/bin/env bash
# Two comparisons the shared harness (../shared/bench/run.sh) cannot make, on its method: proxy
# pinned to CPU 0, one nginx origin worker (3 ports) and wrk on the last CPU, runs back to back
# in alternating order, CPU from /proc.
#
#   examples/bench/compare.sh equal-cpu   # HAProxy and floodgate with the same CPU budget
#   examples/bench/compare.sh floor       # HAProxy, floodgate and two do-nothing proxies
#
# equal-cpu: each proxy in turn runs in a cgroup whose CFS quota is QUOTA_PCT% of one core, so
#   the proxy, not the load generator, saturates, and requests per second are the proxy's
#   throughput for that budget. On these 2-core machines the harness's full-handshake runs
#   (`tlsfull`) saturate the load generator's core first: both proxies then serve the same
#   handshakes per second, only CPU per handshake can be compared, and each idle proxy pays for
#   sleeping and waking between connections. Scenarios (SCENARIOS): tls13-full and tls12-full
#   (wrk -c64, `Connection: close`, resumption forbidden: one full handshake per request; TLS 1.3,
#   or wrk's OpenSSL capped at TLS 1.2) and https-ka (TLS keep-alive). Printed: requests per
#   second, CPU (% of one core) and the share of quota periods in which the proxy was throttled
#   (about 100: the budget was the limit), and the median B/A.
#
# floor: HTTP/1.1 keep-alive (wrk -c64), no quota, CPU microseconds per request of HAProxy,
#   floodgate and the two yardsticks of `fg-floor` (tests/src/bin/fg-floor.rs): `relay`, a
#   tokio relay with nothing but the four syscalls per request, and `hyper`, the same behind
#   hyper's HTTP/1.1 server. Printed: us/req and each one's ratio to HAProxy's in the same
#   repeat, then the medians.
#
# It reuses what the shared harness set up under BENCH_DIR: HAProxy's launcher
# (examples/haproxy-proxy.sh, the harness's own baseline configuration), the ECDSA P-256
# certificate and the LD_PRELOAD shim that forbids TLS resumption; `cargo xtask bench tls` and
# `cargo xtask bench floor` run the harness first. Knobs: REPEATS (3), DURATION (10 s),
# QUOTA_PCT (25), SCENARIOS, CONNS (64), PROXY_CPU (0), LOAD_CPU (the last).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
MODE=${1:-}
BENCH_DIR=${BENCH_DIR:-/tmp/floodgate-bench}
QUOTA_PCT=${QUOTA_PCT:-25}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-$(($(nproc) - 1))}
CONNS=${CONNS:-64}
HTTP_PORT=28180 HTTPS_PORT=28543 ORIGIN_PORTS="9111 9112 9113"

die() { echo "compare: $*" >&2; exit 1; }
case $MODE in
  equal-cpu) SCENARIOS=${SCENARIOS:-"tls13-full tls12-full https-ka"}; PROXIES=(haproxy floodgate);;
  floor) SCENARIOS=${SCENARIOS:-"http-ka"}; PROXIES=(haproxy floodgate relay hyper);;
  *) die "usage: compare.sh equal-cpu|floor";;
esac
HAPROXY_CMD=$BENCH_DIR/examples/haproxy-proxy.sh
NORESUME=$BENCH_DIR/tools/noresume.so
CERTS=$BENCH_DIR/certs
for f in "$HAPROXY_CMD" "$NORESUME" "$CERTS/cert.pem" "$CERTS/key.pem" "$CERTS/combined.pem"; do
  [ -e "$f" ] || die "$f missing: run the shared harness once first (cargo xtask bench tls does)"
done
for b in floodgate fg-floor; do
  [ -x "$here/target/release/$b" ] || die "target/release/$b missing: cargo build --release --bins"
done
for c in wrk nginx haproxy taskset curl; do command -v $c >/dev/null || die "$c not installed"; done
ORIGINS=$(for p in $ORIGIN_PORTS; do printf '127.0.0.1:%s,' "$p"; done)
ORIGINS=${ORIGINS%,}
declare -A CMD=(
  [haproxy]=$HAPROXY_CMD
  [floodgate]=$here/examples/bench/floodgate-under-test.sh
  [relay]="$here/target/release/fg-floor relay 127.0.0.1:$HTTP_PORT $ORIGINS"
  [hyper]="$here/target/release/fg-floor hyper 127.0.0.1:$HTTP_PORT $ORIGINS"
)

RUN=$(mktemp -d /tmp/floodgate-compare.XXXXXX)
HZ=$(getconf CLK_TCK)
SIDS=()
CG=
cleanup() {
  for s in "${SIDS[@]}"; do kill -TERM -- "-$s" 2>/dev/null || true; done
  sleep 0.5
  [ -n "$CG" ] && rmdir "$CG" 2>/dev/null || true
}
trap cleanup EXIT

# The cgroup of equal-cpu: v2 (cpu.max) when its cpu controller is there, else v1 (cfs_quota_us).
if [ "$MODE" = equal-cpu ]; then
  [ "$(id -u)" = 0 ] || die "equal-cpu needs root for its cgroup"
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    CG=/sys/fs/cgroup/floodgate-bench
    echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$CG"
    echo "$((QUOTA_PCT * 1000)) 100000" > "$CG/cpu.max"
  elif [ -d /sys/fs/cgroup/cpu ]; then
    CG=/sys/fs/cgroup/cpu/floodgate-bench
    mkdir -p "$CG"
    echo 100000 > "$CG/cpu.cfs_period_us"
    echo $((QUOTA_PCT * 1000)) > "$CG/cpu.cfs_quota_us"
  else
    die "no cgroup cpu controller (neither cgroup v2 cpu.max nor v1 cpu)"
  fi
fi
throttle() { if [ -n "$CG" ]; then awk '/^nr_periods/{p=$2} /^nr_throttled/{t=$2} END{print p+0, t+0}' "$CG/cpu.stat"; else echo 0 0; fi; }

# Origins: one nginx worker on the load generator's core, as in the harness.
{
  echo "worker_processes 1; daemon off; pid $RUN/origin.pid; error_log $RUN/origin-error.log warn;"
  echo "events { worker_connections 10000; multi_accept on; }"
  echo "http { access_log off; keepalive_timeout 75s; keepalive_requests 1000000; server {"
  for p in $ORIGIN_PORTS; do echo "  listen 127.0.0.1:$p backlog=4096;"; done
  echo '  location / { default_type text/plain; return 200 "ok\n"; } } }'
} > "$RUN/origin.conf"
setsid taskset -c "$LOAD_CPU" nginx -p "$RUN" -c "$RUN/origin.conf" >"$RUN/origin.log" 2>&1 &
SIDS+=($!)
sleep 0.5
printf 'openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n[ssl_sect]\nsystem_default = system_default_sect\n[system_default_sect]\nMaxProtocol = TLSv1.2\n' \
  > "$RUN/tls12.cnf"

# $1 proxy; sets SID, which is the proxy's pid once its launcher execs it.
start() {
  local rd=$RUN/$1 url=http://127.0.0.1:$HTTP_PORT/
  [ "$MODE" = equal-cpu ] && url=https://127.0.0.1:$HTTPS_PORT/
  mkdir -p "$rd"
  BENCH_HTTP_ADDR=127.0.0.1:$HTTP_PORT BENCH_HTTP_PORT=$HTTP_PORT \
  BENCH_HTTPS_ADDR=127.0.0.1:$HTTPS_PORT BENCH_HTTPS_PORT=$HTTPS_PORT \
  BENCH_ORIGINS=$ORIGINS BENCH_CERT=$CERTS/cert.pem BENCH_KEY=$CERTS/key.pem BENCH_CERT_KEY=$CERTS/combined.pem \
  BENCH_THREADS=1 BENCH_CPUS=$PROXY_CPU BENCH_MAXCONN=9900 BENCH_SERVER_MAXCONN=10000 \
  BENCH_TLS_MIN=TLSv1.2 BENCH_TLS_TICKETS=off BENCH_TLS12_CIPHERS=ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256 \
  BENCH_TIMEOUT_CLIENT=50s BENCH_TIMEOUT_CONNECT=5s BENCH_TIMEOUT_QUEUE=5s BENCH_TIMEOUT_HTTP_REQUEST=10s \
  BENCH_TIMEOUT_KEEPALIVE=1s BENCH_RUN_DIR=$rd BENCH_ADMIN_ADDR=127.0.0.1:$((HTTP_PORT + 1000)) CG=$CG \
    setsid taskset -c "$PROXY_CPU" bash -c '[ -z "$CG" ] || echo $$ > "$CG/cgroup.procs"; exec $0' "${CMD[$1]}" \
    >>"$rd/stdout.log" 2>&1 &
  SID=$!
  SIDS+=("$SID")
  for _ in $(seq 100); do
    [ "$(curl -sk -m 2 -o /dev/null -w '%{http_code}' "$url")" = 200 ] && return 0
    kill -0 "$SID" 2>/dev/null || die "$1 exited at start: $(tail -3 "$rd/stdout.log")"
    sleep 0.1
  done
  die "$1 not ready after 10 s"
}
stop() {
  kill -TERM -- "-$SID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$SID" 2>/dev/null || true
  sleep 0.3
}
ticks() { awk '{print $14 + $15}' "/proc/$SID/stat"; }

# $1 scenario -> "rps cpu% throttled% us/req errors"
measure() {
  local out=$RUN/wrk.out env=() args=(-t1 "-c$CONNS" "-d${DURATION}s") url=https://127.0.0.1:$HTTPS_PORT/
  case $1 in
    tls13-full) env=(LD_PRELOAD=$NORESUME); args+=(-H 'Connection: close');;
    tls12-full) env=(LD_PRELOAD=$NORESUME OPENSSL_CONF=$RUN/tls12.cnf); args+=(-H 'Connection: close');;
    https-ka) ;;
    http-ka) url=http://127.0.0.1:$HTTP_PORT/;;
    *) die "unknown scenario $1";;
  esac
  local t0 t1 p0 n0 p1 n1
  t0=$(ticks)
  read -r p0 n0 < <(throttle)
  env "${env[@]}" timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" wrk "${args[@]}" "$url" >"$out" 2>&1
  t1=$(ticks)
  read -r p1 n1 < <(throttle)
  awk -v t=$((t1 - t0)) -v hz="$HZ" -v d="$DURATION" -v np=$((p1 - p0)) -v nt=$((n1 - n0)) '
    /^Requests\/sec:/ {rps = $2} /requests in/ {req = $1}
    /Socket errors/ {gsub(",", ""); err += $4 + $6 + $8 + $10} /Non-2xx/ {err += $NF}
    END {printf "%.0f %.1f %.0f %.1f %d\n", rps, 100 * t / hz / d, np ? 100 * nt / np : 0,
         req ? 1e6 * t / hz / req : 0, err}' "$out"
}

median() { sort -n | awk '{v[++n] = $1} END {if (n) printf "%.2f", n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2}'; }

RESULTS=$RUN/results.tsv
if [ "$MODE" = equal-cpu ]; then
  echo "# equal CPU budget: each proxy capped at ${QUOTA_PCT}% of one core ($CG), pinned to CPU $PROXY_CPU;"
  echo "# wrk -c$CONNS and the origins on CPU $LOAD_CPU; ${DURATION} s per run, $REPEATS repeats, alternating"
  printf '%-11s %-3s %9s %9s %5s %7s %7s %6s %6s %6s\n' scenario rep "HAProxy" floodgate "B/A" "cpu%H" "cpu%f" "thr%H" "thr%f" errors
else
  echo "# HTTP/1.1 keep-alive, wrk -c$CONNS; proxies pinned to CPU $PROXY_CPU, wrk and the origins on CPU $LOAD_CPU;"
  echo "# ${DURATION} s per run, $REPEATS repeats, order rotated; us/req = proxy CPU per request"
  printf '%-8s %-3s %9s %9s %9s %9s %8s %8s %8s %6s\n' scenario rep "HAProxy" floodgate relay hyper "f/H" "relay/H" "hyper/H" errors
fi
for r in $(seq "$REPEATS"); do
  for s in $SCENARIOS; do
    # Rotate who goes first, so drift in the VM's speed does not favour one proxy.
    order=("${PROXIES[@]:$(((r - 1) % ${#PROXIES[@]}))}" "${PROXIES[@]:0:$(((r - 1) % ${#PROXIES[@]}))}")
    declare -A res=()
    for p in "${order[@]}"; do
      start "$p"
      res[$p]=$(measure "$s")
      stop
    done
    read -r ra ca ta ua ea <<<"${res[haproxy]}"
    read -r rb cb tb ub eb <<<"${res[floodgate]}"
    if [ "$MODE" = equal-cpu ]; then
      ratio=$(awk -v a="$ra" -v b="$rb" 'BEGIN { printf "%.2f", a ? b / a : 0 }')
      printf '%-11s %-3s %9s %9s %5s %7s %7s %6s %6s %6s\n' "$s" "$r" "$ra" "$rb" "$ratio" "$ca" "$cb" "$ta" "$tb" $((ea + eb))
      printf '%s\tfloodgate\t%s\n' "$s" "$ratio" >>"$RESULTS"
    else
      read -r _ _ _ ur er <<<"${res[relay]}"
      read -r _ _ _ uh eh <<<"${res[hyper]}"
      rat() { awk -v a="$ua" -v b="$1" 'BEGIN { printf "%.2f", a ? b / a : 0 }'; }
      printf '%-8s %-3s %9s %9s %9s %9s %8s %8s %8s %6s\n' "$s" "$r" "$ua" "$ub" "$ur" "$uh" "$(rat "$ub")" "$(rat "$ur")" "$(rat "$uh")" $((ea + eb + er + eh))
      printf '%s\tfloodgate\t%s\n%s\trelay\t%s\n%s\thyper\t%s\n' "$s" "$(rat "$ub")" "$s" "$(rat "$ur")" "$s" "$(rat "$uh")" >>"$RESULTS"
    fi
  done
done
if [ "$MODE" = equal-cpu ]; then
  echo "# median B/A of requests per second (floodgate / HAProxy) at the same CPU budget:"
else
  echo "# median ratio of CPU per request to HAProxy's:"
fi
for s in $SCENARIOS; do
  for p in floodgate relay hyper; do
    m=$(awk -F'\t' -v s="$s" -v p="$p" '$1 == s && $2 == p {print $3}' "$RESULTS" | median)
    if [ -n "$m" ]; then printf '%-11s %-9s %s\n' "$s" "$p" "$m"; fi
  done
done
