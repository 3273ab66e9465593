#!/usr/bin/env bash
# Issue 20's idle-connection figure: starts `hookrelay api` under a file limit of 1,024 (its ops
# port too), on its own prefix and free ports, then opens IDLE connections that send nothing and
# HALF that send half a request head, holds them, and times a real request every 200 ms.
# Passes when every real request was answered in under a second and the server closed every
# held connection. Needs Redis on 127.0.0.1:6379 (scripts/services.sh).
#
#   scripts/idle-flood.sh [IDLE=10000] [HALF=2000]     (HOOKRELAY_BIN: the binary to run)
set -euo pipefail
SCRIPT=idle-flood.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

idle=${1:-10000}
half=${2:-2000}
bin=${HOOKRELAY_BIN:-target/debug/hookrelay}
[[ -x $bin ]] || die "no $bin: cargo build first (or set HOOKRELAY_BIN)"
have_all prlimit python3 || die "needs prlimit and python3"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
ops_port=$(free_port)
prefix="hrt-flood$RANDOM$RANDOM"
token="flood-admin-token-$RANDOM$RANDOM$RANDOM"
logfile=$(mktemp)

HOOKRELAY__API__LISTEN="127.0.0.1:$port" HOOKRELAY__OPS__LISTEN="127.0.0.1:$ops_port" \
  HOOKRELAY__API__ADMIN_TOKEN="$token" HOOKRELAY__REDIS__PREFIX="$prefix" \
  HOOKRELAY__AMQP__PREFIX="$prefix" RUST_LOG=warn \
  prlimit --nofile=1024:1024 "$bin" api >"$logfile" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  redis-cli --scan --pattern "$prefix*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -f "$logfile"
}
trap cleanup EXIT
wait_until 60 tcp_open 127.0.0.1 "$port" || { cat "$logfile"; die "the API did not start"; }

log "API on 127.0.0.1:$port (pid $server, nofile 1024): $idle idle + $half half-sent connections"
status=0
python3 scripts/bench/idle_flood.py --port "$port" --idle "$idle" --half "$half" \
  --token "$token" --server-pid "$server" || status=$?
log "ops port 127.0.0.1:$ops_port: the same flood, /healthz as the real request"
python3 scripts/bench/idle_flood.py --port "$ops_port" --idle "$idle" --half "$half" \
  --path /healthz --server-pid "$server" || status=$?
kill -0 "$server" 2>/dev/null || { cat "$logfile"; die "the API died"; }
exit "$status"
