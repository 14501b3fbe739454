#!/usr/bin/env bash
# floodgate as the proxy under test of ../shared/bench/run.sh (see its header for the BENCH_*
# convention). Writes a config from the harness's environment into BENCH_RUN_DIR and execs the
# release binary in the foreground, so SIGTERM reaches floodgate directly.
#
#   PROXY_CMD=examples/bench/floodgate-under-test.sh PROXY_NAME=floodgate ../shared/bench/run.sh
#
# BENCH_XDP_IFACE (optional) also attaches floodgate's XDP program there (e.g. lo).
# FLOODGATE_GLOBAL (optional) adds keys to `global`, one per line of YAML at its indentation,
# e.g. FLOODGATE_GLOBAL='http1-engine: hyper' for a run of the previous HTTP/1.1 server.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLOODGATE_BIN:-$here/target/release/floodgate}
[ -x "$bin" ] || { echo "floodgate-under-test: $bin missing: cargo build --release" >&2; exit 1; }
run=${BENCH_RUN_DIR:?BENCH_RUN_DIR not set}
servers=$(echo "${BENCH_ORIGINS:?}" | tr ',' '\n' | sed "s/.*/'&'/" | paste -sd, -)
if [ -n "${BENCH_XDP_IFACE:-}" ]; then
  xdp="{ enabled: true, interfaces: [$BENCH_XDP_IFACE], mode: auto, pin-dir: /sys/fs/bpf/floodgate-bench, conntrack-bypass: false }"
else
  xdp="{ enabled: false }"
fi
tickets=false; [ "${BENCH_TLS_TICKETS:-off}" = on ] && tickets=true
cat > "$run/floodgate.yaml" <<YAML
global:
  maxconn: ${BENCH_MAXCONN:-100000}
  nbthread: ${BENCH_THREADS:-1}
${FLOODGATE_GLOBAL:+  $FLOODGATE_GLOBAL}
  timeouts:
    client: ${BENCH_TIMEOUT_CLIENT:-50s}
    connect: ${BENCH_TIMEOUT_CONNECT:-5s}
    queue: ${BENCH_TIMEOUT_QUEUE:-5s}
    http-request: ${BENCH_TIMEOUT_HTTP_REQUEST:-10s}
    http-keep-alive: ${BENCH_TIMEOUT_KEEPALIVE:-1s}
xdp: $xdp
tls:
  min-version: "${BENCH_TLS_MIN:-TLSv1.2}"
  tickets: $tickets
  ciphers: "${BENCH_TLS12_CIPHERS:-ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256}"
admin: { bind: "${BENCH_ADMIN_ADDR:-127.0.0.1:29080}" }
listeners:
  - { name: http, bind: "${BENCH_HTTP_ADDR:?}", default-backend: origins }
  - name: https
    bind: "${BENCH_HTTPS_ADDR:?}"
    default-backend: origins
    tls: { certificates: [ { cert: "${BENCH_CERT:?}", key: "${BENCH_KEY:?}" } ] }
backends:
  - name: origins
    balance: roundrobin
    maxconn-server: ${BENCH_SERVER_MAXCONN:-10000}
    servers: [$servers]
YAML
exec "$bin" run --config "$run/floodgate.yaml" 2>"$run/floodgate.log"
