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
BIN=${HOOKRELAY_BIN:-target/debug/hookrelay}
[[ -x $BIN ]] || die "no $BIN: cargo build first (or set HOOKRELAY_BIN)"
have_all prlimit python3 || die "needs prlimit and python3"

free_port port
free_port ops_port
prefix="hrt-flood$RANDOM$RANDOM"
token="flood-admin-token-$RANDOM$RANDOM$RANDOM"
logfile=$(mktemp)
trap 'api_stop; rm -f "$logfile"' EXIT
HOOKRELAY__OPS__LISTEN="127.0.0.1:$ops_port" HOOKRELAY__API__ADMIN_TOKEN="$token" \
  api_start "$prefix" "$port" "$logfile" prlimit --nofile=1024:1024
server=$API_PID

log "API on 127.0.0.1:$port (pid $server, nofile 1024): $idle idle + $half half-sent connections"
status=0
python3 scripts/bench/idle_flood.py --port "$port" --idle "$idle" --half "$half" \
  --token "$token" --server-pid "$server" || status=$?
log "ops port 127.0.0.1:$ops_port: the same flood, /healthz as the real request"
python3 scripts/bench/idle_flood.py --port "$ops_port" --idle "$idle" --half "$half" \
  --path /healthz --server-pid "$server" || status=$?
kill -0 "$server" 2>/dev/null || { cat "$logfile"; die "the API died"; }
exit "$status"
