#!/usr/bin/env bash
# Proof that hookrelay works against production-shaped Redis (issue 10, DESIGN §6/§7): each part
# starts Redis servers of its own (own ports, own data directories under a temporary directory;
# the shared Redis on 6379 is never touched), runs the real binary against them, and prints what
# it measured:
#
#   a) tls       Redis with only a TLS port (--port 0 --tls-port, client certificates required),
#                CA, server and client certificates generated for the run with openssl. A worker
#                over rediss:// with [redis.tls] delivers; a wrong CA, the system roots (which do
#                not know the run's CA) and a missing client certificate are refused at start-up
#                with a message naming the host. Then a TLS-only cluster of 3 masters (TLS on the
#                cluster bus too): a worker over rediss:// seeds delivers.
#   b) cluster   Redis Cluster of 3 masters + 3 replicas (redis-cli --cluster create). Webhooks
#                added with the CLI and the API in mode "cluster", a worker delivers a steady
#                stream; the master owning the test account's slot is killed (SIGKILL), the
#                cluster fails over, deliveries go on. Lost must be 0.
#   c) sentinel  1 master, 1 replica, 3 sentinels (quorum 2, down-after-milliseconds 1000): the
#                same steps, with mode "sentinel". Lost must be 0.
#   d) reshard   Redis Cluster of 3 masters (issue 26). The busy slot: a worker delivers about
#                $RESHARD_RATE events/s to one account with 10 webhooks (its slot also holds other
#                keys, as a real slot does), and that slot is moved between two masters with
#                `redis-cli --cluster reshard --cluster-slots 1`, $RESHARD_MOVES times each way.
#                Every move must complete, the cluster check must find no open slot, lost and
#                duplicates must be 0; attempt-log errors and cluster reconnects are reported.
#                Then a hold: the slot set MIGRATING/IMPORTING by hand (CLUSTER SETSLOT), each
#                state held $HOLD_S s (nothing moved; all but the account's core keys moved with
#                MIGRATE; the core keys split for 0.3 s; all moved), then finished, while an API
#                probe reads the account's webhooks (a lookup) every 50 ms and updates one (a
#                Lua write) every 0.5 s: every read and write must succeed; the worker's
#                not-ready time and the lookup p99 are reported.
#   e) replicas  the same Sentinel set-up: a webhook added with redis.min_replicas=1, the master
#                killed the moment the command returns; after the failover the webhook is there.
#                Then min_replicas=1 with no replica left: exit 75, "unconfirmed".
#   f) migrate   a single Redis and a Redis Cluster of 3 masters: 91 webhooks added to the
#                single one, `webhooks export`, `webhooks import --init-store` into the cluster,
#                export again: identical lines; a worker on the cluster delivers with the old
#                secret.
#
# Deliveries go through the shared RabbitMQ on 127.0.0.1:5672 under a prefix of this run's own
# (hrt-rn<pid>-...), removed at the end with scripts/sweep.sh. The receiver is `hookrelay listen`.
# Per failover part it prints published, delivered, lost, duplicates, how long the worker's
# /readyz said "not ready", and the longest pause between two deliveries; exits non-zero when
# anything was lost or a check failed.
#
# Usage: scripts/redis-nodes.sh [tls] [cluster] [sentinel] [reshard] [replicas] [migrate]  (default: all)
# Environment: REDIS_NODES_KEEP=1 keeps the temporary directory (logs) at the end;
#              HOOKRELAY_BIN=path uses that binary instead of building the debug one;
#              CARGO_TARGET_DIR is respected when locating the built binary;
#              RESHARD_MOVES (default 10: CI time), RESHARD_RATE (events/s, default 30: what a
#              debug worker on a shared 2-core machine drains in time; the issue ran 150) and HOLD_S
#              (default 3) size the reshard part.
set -euo pipefail

SCRIPT=redis-nodes
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/nodes.sh
source "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"
# Polls every 0.1 s: the failovers' figures are read from timestamps, but a faster poll ends a
# part sooner.
WAIT_STEP=0.1
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly PARTS=${*:-tls cluster sentinel reshard replicas migrate}
readonly ACCOUNT=acct-failover
readonly STREAM_BEFORE_S=4  # steady publishing before the kill
readonly STREAM_AFTER_S=6   # and after the failover
readonly PUBLISH_GAP_S=0.05 # between two publishes of the loop
# Generous: on a loaded 2-core machine an election can take far longer than the node timeout.
readonly FAILOVER_MAX_S=90
readonly DRAIN_MAX_S=60
readonly RESHARD_MOVES=${RESHARD_MOVES:-10}
readonly RESHARD_RATE=${RESHARD_RATE:-30}
readonly HOLD_S=${HOLD_S:-3}
# Its hash slot is 0, the lowest slot of the first master: `--cluster reshard --cluster-slots 1`
# moves a source's lowest slot, so each move takes exactly this account's slot.
readonly RESHARD_ACCOUNT=acct-reshard-19846

T0=$SECONDS
log() { printf 'redis-nodes: [%3ds] %s\n' "$((SECONDS - T0))" "$*"; }
now() { printf '%s' "$EPOCHREALTIME"; }

# --- what the script needs ----------------------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v jq >/dev/null || missing+=(jq)
  command -v curl >/dev/null || missing+=(curl)
  # The reshard part's publisher: one AMQP connection, one message per stdin line.
  command -v amqp-publish >/dev/null || missing+=(amqp-tools)
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
    --no-install-recommends "${missing[@]}" >/dev/null
}
ensure_tools
hookrelay_bin debug
readonly BIN

WORK=$(mktemp -d /tmp/hookrelay-redis-nodes.XXXXXX)
readonly WORK
readonly RUN_PREFIX=hrt-rn$$
PIDS=()     # processes of ours to stop at the end (workers, api, listeners, publishers)
SUMMARY=()
FAILED=0

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  # The reshard part's publisher is a pipeline: it ends (with amqp-publish) on its stop file.
  [[ -n ${RESHARD_STOP:-} ]] && : >"$RESHARD_STOP"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  redis_servers_kill
  # Our queues and exchanges on the shared RabbitMQ (and any keys under our prefix; our own Redis
  # servers die with their directories). The broker may list a stopped worker's consumers for a
  # moment, and sweep.sh keeps what has consumers: try again until nothing is kept.
  for _ in 1 2 3 4 5; do
    SWEEP_MIN_IDLE=0 "$ROOT/scripts/sweep.sh" "$RUN_PREFIX-" >"$WORK/sweep.log" 2>&1 &&
      ! grep -q kept "$WORK/sweep.log" && break
    sleep 2
  done
  grep -q kept "$WORK/sweep.log" &&
    printf 'redis-nodes: warning: could not sweep %s from RabbitMQ\n' "$RUN_PREFIX-" >&2
  if [[ ${REDIS_NODES_KEEP:-0} == 1 ]]; then
    printf 'redis-nodes: kept %s\n' "$WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- small helpers ------------------------------------------------------------------------------

listening() { ss -Hltn "sport = :$1" | grep -q .; }

# A socket in any state uses the port (also an outgoing connection's).
port_used() { ss -Htan "sport = :$1" | grep -q .; }

# free_ports N: N consecutive ports that are free, and so are the N ports 10000 above them (the
# cluster bus), printed space-separated. Below 32768, where Linux picks outgoing ports.
free_ports() {
  local n=$1 base p ok
  for _ in $(seq 50); do
    base=$((10000 + RANDOM % 12000))
    ok=1
    for ((p = base; p < base + n; p++)); do
      if port_used "$p" || port_used "$((p + 10000))"; then ok=0; fi
    done
    ((ok)) && { seq -s ' ' "$base" "$((base + n - 1))"; return 0; }
  done
  die "no free ports found"
}

# start_redis NAME PORT ARGS...: a redis-server of ours in $WORK/NAME, daemonized.
start_redis() { redis_server_start "$WORK/$1" "${@:2}"; }

cli() { timeout 10 redis-cli -h 127.0.0.1 "$@"; }

# The environment every hookrelay process of a part runs with; parts add their [redis] keys.
base_env() {
  local part=$1
  export HOOKRELAY__AMQP__PREFIX=$RUN_PREFIX-$part
  export HOOKRELAY__REDIS__PREFIX=$RUN_PREFIX-$part
  export HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS=true
  export HOOKRELAY__DELIVERY__ALLOW_HTTP=true
  export HOOKRELAY__DELIVERY__RETRY_SCHEDULE=500ms,1s,2s,4s,8s,16s
  export HOOKRELAY__REDIS__LOOKUP_TIMEOUT=2s
  # A worker stopped at the end (or by a failed check) goes within the cleanup's wait.
  export HOOKRELAY__WORKER__SHUTDOWN_GRACE=5s
  unset HOOKRELAY__REDIS__URL HOOKRELAY__REDIS__MODE HOOKRELAY__REDIS__URLS \
    HOOKRELAY__REDIS__SENTINEL_MASTER HOOKRELAY__REDIS__TLS__CA_FILE \
    HOOKRELAY__REDIS__TLS__CERT_FILE HOOKRELAY__REDIS__TLS__KEY_FILE
}

# start_listener PART SECRET...: `hookrelay listen` on $LISTEN_PORT (chosen before the webhook
# was added, as its URL names it), each delivery one line "<receipt time> <json>" in
# $WORK/PART-received.
start_listener() {
  local part=$1
  shift
  local args=() s
  for s in "$@"; do args+=(--secret "$s"); done
  "$BIN" listen --listen "127.0.0.1:$LISTEN_PORT" --json "${args[@]}" \
    2>"$WORK/$part-listen.log" \
    > >(while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done \
      >"$WORK/$part-received") &
  PIDS+=($!)
  wait_until 10 listening "$LISTEN_PORT" || die "$part: hookrelay listen did not start"
}

# start_worker PART: a worker with its ops port; waits for /readyz. Sets WORKER_PID, OPS_PORT.
start_worker() {
  local part=$1
  OPS_PORT=$(free_ports 1)
  # Workers refuse a store without its marker; init is idempotent.
  "$BIN" store init >>"$WORK/$part-worker.log" 2>&1 || die "$part: store init failed (see $WORK/$part-worker.log)"
  HOOKRELAY__OPS__LISTEN=127.0.0.1:$OPS_PORT "$BIN" worker >"$WORK/$part-worker.log" 2>&1 &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
  wait_until 30 ready || die "$part: the worker did not become ready (see $WORK/$part-worker.log)"
}

ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$OPS_PORT/readyz") == 200 ]]; }

# monitor_readiness FILE: one line "<time> <http status>" every 0.1 s until killed.
monitor_readiness() {
  while :; do
    printf '%s %s\n' "$EPOCHREALTIME" \
      "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$OPS_PORT/readyz")"
    sleep 0.1
  done >"$1"
}

# publish_stream PART STOPFILE: publishes evt_<part>_<n> to $ACCOUNT until STOPFILE exists; the
# ids the broker confirmed go to $WORK/PART-published.
publish_stream() {
  local part=$1 stop=$2 n=0
  while [[ ! -e $stop ]]; do
    n=$((n + 1))
    if "$BIN" publish --type payment.card.success --account "$ACCOUNT" --id "evt_${part}_$n" \
      --data "{\"n\":$n}" >/dev/null 2>>"$WORK/$part-publish.log"; then
      printf 'evt_%s_%d\n' "$part" "$n" >>"$WORK/$part-published"
    fi
    sleep "$PUBLISH_GAP_S"
  done
}

delivered_ids() {
  sed 's/^[^ ]* //' "$WORK/$1-received" | jq -r 'select(.verified) | .webhook_id'
}
all_delivered() {
  [[ -z $(comm -23 <(sort -u "$WORK/$1-published") <(delivered_ids "$1" | sort -u)) ]]
}

# report PART KILLED_AT: the failover part's figures; counts a loss as a failure.
report() {
  local part=$1 killed_at=$2
  local published delivered unique lost dups not_ready pause
  published=$(sort -u "$WORK/$part-published" | wc -l)
  delivered=$(delivered_ids "$part" | wc -l)
  unique=$(delivered_ids "$part" | sort -u | wc -l)
  lost=$(comm -23 <(sort -u "$WORK/$part-published") <(delivered_ids "$part" | sort -u) | wc -l)
  dups=$((delivered - unique))
  # Not ready: the sampling intervals that began with a non-200 answer.
  not_ready=$(awk 'NR > 1 && prev != 200 { s += $1 - t } { t = $1; prev = $2 }
    END { printf "%.1f", s }' "$WORK/$part-readyz")
  # The longest gap between two receipts from 1 s before the kill on.
  pause=$(awk -v k="$killed_at" '$1 >= k - 1 { if (t) { g = $1 - t; if (g > m) m = g } t = $1 }
    END { printf "%.1f", m }' "$WORK/$part-received")
  log "$part: published $published, delivered $unique (+$dups duplicates), lost $lost, worker not ready ${not_ready} s, longest delivery pause ${pause} s"
  SUMMARY+=("$(printf '%-9s %9s %9s %5s %10s %14s %14s' "$part" "$published" "$unique" "$lost" \
    "$dups" "${not_ready} s" "${pause} s")")
  ((lost == 0)) || FAILED=1
  ((published > 0)) || FAILED=1
}

# run_failover PART KILL_FN WAIT_FN: the steady stream, the kill, the failover, the drain.
run_failover() {
  local part=$1 kill_fn=$2 wait_fn=$3
  local stop=$WORK/$part-stop
  : >"$WORK/$part-published"
  monitor_readiness "$WORK/$part-readyz" &
  local monitor=$!
  PIDS+=("$monitor")
  publish_stream "$part" "$stop" &
  local publisher=$!
  PIDS+=("$publisher")
  sleep "$STREAM_BEFORE_S"
  local killed_at
  killed_at=$(now)
  "$kill_fn"
  local t_kill=$SECONDS
  wait_until "$FAILOVER_MAX_S" "$wait_fn" || die "$part: no failover within ${FAILOVER_MAX_S} s"
  log "$part: failover done $((SECONDS - t_kill)) s after the kill"
  sleep "$STREAM_AFTER_S"
  : >"$stop"
  wait "$publisher" || true
  wait_until "$DRAIN_MAX_S" all_delivered "$part" || log "$part: not everything delivered within ${DRAIN_MAX_S} s"
  wait_until 10 ready || log "$part: the worker is not ready at the end"
  kill "$monitor" 2>/dev/null || true
  report "$part" "$killed_at"
}

# add_webhook PART: the test account's webhook through the CLI; prints its secret.
add_webhook() {
  local part=$1 out
  "$BIN" store init >/dev/null || die "$part: store init failed"
  out=$("$BIN" webhooks add --account "$ACCOUNT" --url "http://127.0.0.1:$LISTEN_PORT/$part" \
    --events '*' --json) || die "$part: webhooks add failed"
  jq -r .secret <<<"$out"
}

# check_cli_and_api PART: webhooks list through the CLI; token issue, webhook create, list and
# delete through the API; each must work in this part's mode.
check_cli_and_api() {
  local part=$1
  local count
  count=$("$BIN" webhooks list --account "$ACCOUNT" --json | jq '.webhooks | length')
  [[ $count == 1 ]] || die "$part: webhooks list shows $count webhooks, expected 1"
  local api_port admin api
  admin=$(openssl rand -hex 16)
  api_port=$(free_ports 1)
  HOOKRELAY__API__LISTEN=127.0.0.1:$api_port HOOKRELAY__API__ADMIN_TOKEN=$admin \
    "$BIN" api >"$WORK/$part-api.log" 2>&1 &
  api=$!
  PIDS+=("$api")
  wait_until 20 listening "$api_port" || die "$part: the API did not start"
  local base=http://127.0.0.1:$api_port/v1/accounts/api-check token id listed
  token=$(curl -fsS -X POST -H "authorization: Bearer $admin" "$base/tokens" | jq -r .token)
  id=$(curl -fsS -X POST -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"url":"http://127.0.0.1:9/api-check","events":["customer.registered"]}' \
    "$base/webhooks" | jq -r .id)
  listed=$(curl -fsS -H "authorization: Bearer $token" "$base/webhooks" | jq -r '.webhooks[].id')
  [[ $listed == "$id" ]] || die "$part: API list shows '$listed', expected '$id'"
  curl -fsS -o /dev/null -X DELETE -H "authorization: Bearer $token" "$base/webhooks/$id" ||
    die "$part: API delete failed"
  kill -TERM "$api"
  wait "$api" 2>/dev/null || true
  log "$part: CLI webhooks add/list and API token/create/list/delete work"
}

# --- a) TLS -------------------------------------------------------------------------------------

make_certs() {
  local d=$WORK/certs
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj '/CN=hookrelay test CA' \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj '/CN=some other CA' \
      -keyout other-ca.key -out other-ca.crt 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl req -newkey rsa:2048 -nodes -subj '/CN=127.0.0.1' -keyout server.key \
      -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
      -extfile server.ext -out server.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj '/CN=hookrelay worker' -keyout client.key \
      -out client.csr 2>/dev/null
    # X.509 v3 (an extension makes it one): rustls refuses v1 certificates, also as client's.
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
      -extfile client.ext -out client.crt 2>/dev/null
  )
}

# refused CASE EXPECTED_TEXT: `webhooks list` must fail, its message naming the host and
# containing EXPECTED_TEXT.
refused() {
  local case=$1 expected=$2 err
  if err=$("$BIN" webhooks list --account "$ACCOUNT" 2>&1 >/dev/null); then
    log "tls: FAIL: $case: accepted"
    TLS_RESULTS+=("$case|accepted (FAIL)")
    FAILED=1
  elif [[ $err == *127.0.0.1* && $err == *"$expected"* ]]; then
    log "tls: $case: refused: $err"
    TLS_RESULTS+=("$case|refused: ${err##*connecting to Redis at }")
  else
    log "tls: FAIL: $case: refused without naming the host or '$expected': $err"
    TLS_RESULTS+=("$case|unclear error (FAIL)")
    FAILED=1
  fi
}

part_tls() {
  log "tls: certificates and a TLS-only Redis"
  make_certs
  local d=$WORK/certs port
  port=$(free_ports 1)
  start_redis tls 0 --tls-port "$port" --tls-cert-file "$d/server.crt" \
    --tls-key-file "$d/server.key" --tls-ca-cert-file "$d/ca.crt" --tls-auth-clients yes
  wait_until 10 listening "$port" || die "tls: redis-server did not listen on $port"
  base_env tls
  export HOOKRELAY__REDIS__URL=rediss://127.0.0.1:$port/0
  TLS_RESULTS=()

  HOOKRELAY__REDIS__TLS__CA_FILE=$d/other-ca.crt HOOKRELAY__REDIS__TLS__CERT_FILE=$d/client.crt \
    HOOKRELAY__REDIS__TLS__KEY_FILE=$d/client.key refused "wrong CA (ca_file of another CA)" certificate
  HOOKRELAY__REDIS__TLS__CERT_FILE=$d/client.crt HOOKRELAY__REDIS__TLS__KEY_FILE=$d/client.key \
    refused "no ca_file: system roots do not know the run's CA" certificate
  HOOKRELAY__REDIS__TLS__CA_FILE=$d/ca.crt refused "right CA, no client certificate (mTLS)" "127.0.0.1"
  if err=$(HOOKRELAY__REDIS__URL=redis://127.0.0.1:$port/0 "$BIN" webhooks list \
    --account "$ACCOUNT" 2>&1 >/dev/null); then
    log "tls: FAIL: plain redis:// to the TLS port was accepted"
    FAILED=1
  else
    TLS_RESULTS+=("plain redis:// to the TLS-only port|refused: ${err##*connecting to Redis at }")
  fi

  export HOOKRELAY__REDIS__TLS__CA_FILE=$d/ca.crt
  export HOOKRELAY__REDIS__TLS__CERT_FILE=$d/client.crt
  export HOOKRELAY__REDIS__TLS__KEY_FILE=$d/client.key
  LISTEN_PORT=$(free_ports 1)
  local secret
  secret=$(add_webhook tls)
  start_listener tls "$secret"
  start_worker tls
  : >"$WORK/tls-published"
  local n
  for n in $(seq 20); do
    "$BIN" publish --type payment.card.success --account "$ACCOUNT" --id "evt_tls_$n" \
      --data '{}' >/dev/null && echo "evt_tls_$n" >>"$WORK/tls-published"
  done
  if wait_until 30 all_delivered "tls"; then
    TLS_RESULTS+=("worker over rediss:// with ca_file + client cert|20 published, $(delivered_ids tls | sort -u | wc -l) delivered")
  else
    TLS_RESULTS+=("worker over rediss:// with ca_file + client cert|NOT all delivered (FAIL)")
    FAILED=1
  fi
  log "tls: worker delivered over TLS; the server has no plain-text port (--port 0)"
  kill -TERM "$WORKER_PID"
  wait "$WORKER_PID" 2>/dev/null || true
  tls_cluster
}

# A TLS-only cluster of 3 masters (TLS on the cluster bus too): the worker reaches every node it
# discovers over TLS with the same [redis.tls] files.
tls_cluster() {
  local d=$WORK/certs ports p nodes=()
  read -r -a ports <<<"$(free_ports 3)"
  for p in "${ports[@]}"; do
    start_redis "tls-cluster-$p" 0 --tls-port "$p" --tls-cert-file "$d/server.crt" \
      --tls-key-file "$d/server.key" --tls-ca-cert-file "$d/ca.crt" --tls-auth-clients yes \
      --tls-cluster yes --tls-replication yes --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 1000
    nodes+=("127.0.0.1:$p")
  done
  for p in "${ports[@]}"; do wait_until 10 listening "$p" || die "tls: cluster node $p"; done
  local tls_cli=(--tls --cacert "$d/ca.crt" --cert "$d/client.crt" --key "$d/client.key")
  redis-cli "${tls_cli[@]}" --cluster create "${nodes[@]}" --cluster-yes \
    >"$WORK/tls-cluster-create.log" 2>&1 || die "tls: cluster create failed"
  tls_cluster_ok() {
    cli -p "${ports[0]}" "${tls_cli[@]}" cluster info | grep -q 'cluster_state:ok'
  }
  wait_until 30 tls_cluster_ok || die "tls: cluster state not ok"
  export HOOKRELAY__REDIS__MODE=cluster
  export HOOKRELAY__REDIS__URLS="rediss://${nodes[0]},rediss://${nodes[1]}"
  unset HOOKRELAY__REDIS__URL
  export HOOKRELAY__REDIS__PREFIX=$RUN_PREFIX-tlscluster
  export HOOKRELAY__AMQP__PREFIX=$RUN_PREFIX-tlscluster
  local secret n case="Redis Cluster over rediss:// (3 TLS-only masters)"
  LISTEN_PORT=$(free_ports 1)
  secret=$(add_webhook tlscluster)
  start_listener tlscluster "$secret"
  start_worker tlscluster
  : >"$WORK/tlscluster-published"
  for n in $(seq 10); do
    "$BIN" publish --type payment.card.success --account "$ACCOUNT" --id "evt_tlsc_$n" \
      --data '{}' >/dev/null && echo "evt_tlsc_$n" >>"$WORK/tlscluster-published"
  done
  if wait_until 30 all_delivered tlscluster; then
    TLS_RESULTS+=("$case|10 published, $(delivered_ids tlscluster | sort -u | wc -l) delivered")
  else
    TLS_RESULTS+=("$case|NOT all delivered (FAIL)")
    FAILED=1
  fi
  log "tls: a worker delivered through a TLS-only Redis Cluster"
  kill -TERM "$WORKER_PID"
  wait "$WORKER_PID" 2>/dev/null || true
}

# --- b) cluster ---------------------------------------------------------------------------------

CLUSTER_PORTS=()
KILLED_PORT=""

# The master port serving the slot of the test account's hash tag, asked from node $1.
slot_owner() {
  local slot
  slot=$(cli -p "$1" cluster keyslot "$ACCOUNT")
  cli -p "$1" cluster nodes | awk -v s="$slot" '
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) {
        n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1])
        if (s >= lo && s <= hi) { split($2, a, "[:@]"); print a[2] }
      }
    }'
}

kill_cluster_master() {
  KILLED_PORT=$(slot_owner "${CLUSTER_PORTS[0]}")
  [[ -n $KILLED_PORT ]] || die "cluster: no master found for the account's slot"
  log "cluster: killing master 127.0.0.1:$KILLED_PORT (owns the slot of {$ACCOUNT})"
  kill -KILL "$(cat "$WORK/cluster-$KILLED_PORT/redis.pid")"
}

cluster_failed_over() {
  local p owner
  for p in "${CLUSTER_PORTS[@]}"; do
    [[ $p == "$KILLED_PORT" ]] && continue
    owner=$(slot_owner "$p" 2>/dev/null) || continue
    [[ -n $owner && $owner != "$KILLED_PORT" ]] &&
      cli -p "$owner" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && return 0
  done
  return 1
}

part_cluster() {
  log "cluster: 3 masters + 3 replicas"
  read -r -a CLUSTER_PORTS <<<"$(free_ports 6)"
  local p nodes=()
  for p in "${CLUSTER_PORTS[@]}"; do
    # A replica may take over however long ago it last heard its master (validity factor 0):
    # under load the replication link can look stale, and a refused election is not the test.
    start_redis "cluster-$p" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 1000 --cluster-replica-validity-factor 0
    nodes+=("127.0.0.1:$p")
  done
  for p in "${CLUSTER_PORTS[@]}"; do wait_until 10 listening "$p" || die "cluster: node $p"; done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >"$WORK/cluster-create.log" 2>&1 || die "cluster: create failed (see $WORK/cluster-create.log)"
  cluster_ok() {
    local q
    for q in "${CLUSTER_PORTS[@]}"; do
      cli -p "$q" cluster info | grep -q 'cluster_state:ok' || return 1
    done
  }
  wait_until 30 cluster_ok || die "cluster: state not ok"
  base_env cluster
  export HOOKRELAY__REDIS__MODE=cluster
  # Three seeds, enough to find the cluster whichever one is down; the master that will be
  # killed first, so that the worker follows the change channel there and must move over.
  local owner seeds
  owner=$(slot_owner "${CLUSTER_PORTS[0]}")
  seeds="redis://127.0.0.1:$owner"
  for p in "${CLUSTER_PORTS[@]:0:3}"; do
    [[ $p == "$owner" ]] || seeds+=",redis://127.0.0.1:$p"
  done
  export HOOKRELAY__REDIS__URLS=$seeds
  LISTEN_PORT=$(free_ports 1)
  local secret
  secret=$(add_webhook cluster)
  start_listener cluster "$secret"
  check_cli_and_api cluster
  start_worker cluster
  run_failover cluster kill_cluster_master cluster_failed_over
  # bench on the same config: 20 accounts spread over the masters' slots, and its clean-up
  # (Store::purge_prefix) must find its keys on every master.
  "$BIN" bench --events 300 --accounts 20 --workers 1 --skip-ceiling \
    >"$WORK/cluster-bench.log" 2>&1 || {
    tail -n 20 "$WORK/cluster-bench.log" >&2
    die "cluster: bench failed (its log's end above)"
  }
  local left=0
  for p in "${CLUSTER_PORTS[@]}"; do
    [[ $p == "$KILLED_PORT" ]] && continue
    left=$((left + $(cli -p "$p" --scan --pattern 'hrbench-*' | wc -l)))
  done
  ((left == 0)) || die "cluster: bench left $left keys behind (purge_prefix missed a master)"
  log "cluster: bench ran in cluster mode and its purge left no key on any node"
}

# --- c) sentinel --------------------------------------------------------------------------------

SENTINEL_PORTS=()
MASTER_PORT=""
REPLICA_PORT=""

master_addr() { cli -p "${SENTINEL_PORTS[0]}" sentinel get-master-addr-by-name hrmaster | tail -n 1; }

kill_sentinel_master() {
  log "sentinel: killing master 127.0.0.1:$MASTER_PORT"
  kill -KILL "$(cat "$WORK/$SENTINEL_SET-master/redis.pid")"
}

sentinel_failed_over() {
  [[ $(master_addr 2>/dev/null) == "$REPLICA_PORT" ]] &&
    cli -p "$REPLICA_PORT" role 2>/dev/null | head -n 1 | grep -q master
}

# start_sentinel_set NAME: 1 master, 1 replica, 3 sentinels (quorum 2) in $WORK/NAME-*; sets
# MASTER_PORT, REPLICA_PORT, SENTINEL_PORTS and exports the [redis] keys of sentinel mode.
start_sentinel_set() {
  SENTINEL_SET=$1
  local ports
  read -r -a ports <<<"$(free_ports 5)"
  MASTER_PORT=${ports[0]}
  REPLICA_PORT=${ports[1]}
  SENTINEL_PORTS=("${ports[@]:2:3}")
  start_redis "$SENTINEL_SET-master" "$MASTER_PORT"
  start_redis "$SENTINEL_SET-replica" "$REPLICA_PORT" --replicaof 127.0.0.1 "$MASTER_PORT"
  local s i=0 dir
  for s in "${SENTINEL_PORTS[@]}"; do
    i=$((i + 1))
    dir=$WORK/$SENTINEL_SET-sentinel-$i
    mkdir -p "$dir"
    REDIS_DIRS+=("$dir")
    cat >"$dir/sentinel.conf" <<EOF
bind 127.0.0.1
port $s
daemonize yes
pidfile $dir/redis.pid
logfile $dir/sentinel.log
dir $dir
sentinel monitor hrmaster 127.0.0.1 $MASTER_PORT 2
sentinel down-after-milliseconds hrmaster 1000
sentinel failover-timeout hrmaster 10000
EOF
    redis-server "$dir/sentinel.conf" --sentinel
  done
  for s in "${SENTINEL_PORTS[@]}"; do wait_until 10 listening "$s" || die "sentinel $s"; done
  replica_synced() { cli -p "$REPLICA_PORT" info replication | grep -q 'master_link_status:up'; }
  wait_until 30 replica_synced || die "$SENTINEL_SET: the replica did not sync"
  sentinels_see_replica() {
    cli -p "${SENTINEL_PORTS[0]}" sentinel replicas hrmaster | grep -q "$REPLICA_PORT" &&
      [[ $(cli -p "${SENTINEL_PORTS[0]}" sentinel sentinels hrmaster | grep -c '^name$') -ge 2 ]]
  }
  wait_until 30 sentinels_see_replica || die "$SENTINEL_SET: sentinels did not discover each other"
  export HOOKRELAY__REDIS__MODE=sentinel
  export HOOKRELAY__REDIS__URLS="redis://127.0.0.1:${SENTINEL_PORTS[0]},redis://127.0.0.1:${SENTINEL_PORTS[1]},redis://127.0.0.1:${SENTINEL_PORTS[2]}"
  export HOOKRELAY__REDIS__SENTINEL_MASTER=hrmaster
}

part_sentinel() {
  log "sentinel: 1 master, 1 replica, 3 sentinels"
  base_env sentinel
  start_sentinel_set sentinel
  LISTEN_PORT=$(free_ports 1)
  local secret
  secret=$(add_webhook sentinel)
  start_listener sentinel "$secret"
  check_cli_and_api sentinel
  # The webhook must be on the replica before the master dies (replication is asynchronous).
  cli -p "$MASTER_PORT" wait 1 5000 >/dev/null
  start_worker sentinel
  run_failover sentinel kill_sentinel_master sentinel_failed_over
}

# --- d) reshard ---------------------------------------------------------------------------------

RESHARD_PORTS=()
RESHARD_SLOT=""

node_id() { cli -p "$1" cluster myid; }

# reshard_owner PORT: the master port serving $RESHARD_SLOT as node PORT sees it (fields in
# brackets, a slot's migration state, are skipped).
reshard_owner() {
  cli -p "$1" cluster nodes | awk -v s="$RESHARD_SLOT" '
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) {
        if ($i ~ /^\[/) continue
        n = split($i, r, "-"); lo = r[1] + 0; hi = (n == 2 ? r[2] : r[1]) + 0
        if (s >= lo && s <= hi) { split($2, a, "[:@]"); print a[2] }
      }
    }'
}

# cluster_clean: every node agrees, every slot is covered, none is left migrating/importing.
cluster_clean() {
  local out
  out=$(timeout 20 redis-cli --cluster check "127.0.0.1:${RESHARD_PORTS[0]}" 2>&1) || return 1
  ! grep -qE '\[(WARNING|ERR)\]' <<<"$out"
}

# reshard_publish STOPFILE: $RESHARD_RATE events/s to the account through one AMQP connection
# (amqp-publish, one message per line) until STOPFILE exists; the count so far in
# $WORK/reshard-count (the ids are evt_rs_1..count).
reshard_publish() {
  local stop=$1 n=0 start=${EPOCHREALTIME/./} due at
  while [[ ! -e $stop ]]; do
    due=$(((${EPOCHREALTIME/./} - start) * RESHARD_RATE / 1000000))
    at=$(date -u +%FT%TZ)
    while ((n < due)); do
      n=$((n + 1))
      printf '{"id":"evt_rs_%d","type":"payment.card.success","account_id":"%s","created_at":"%s","data":{"n":%d}}\n' \
        "$n" "$RESHARD_ACCOUNT" "$at" "$n"
    done
    printf '%d\n' "$n" >"$WORK/reshard-count"
    sleep 0.05
  done | amqp-publish -l -u amqp://guest:guest@127.0.0.1:5672 -e "$HOOKRELAY__AMQP__PREFIX.events" \
    -r payment.card.success -p -C application/json 2>>"$WORK/reshard-publish.log"
}

# Each delivery as "<path> <event id>": one per event and webhook is expected.
reshard_delivered() {
  sed 's/^[^ ]* //' "$WORK/reshard-received" | jq -r 'select(.verified) | "\(.path) \(.webhook_id)"'
}
reshard_expected() {
  awk -v n="$(cat "$WORK/reshard-count")" 'BEGIN {
    for (i = 1; i <= n; i++) for (w = 1; w <= 10; w++) printf "/r%d evt_rs_%d\n", w, i }'
}
# A cheap count first (the receipts file grows by tens of thousands of lines), then the check.
reshard_all_delivered() {
  (($(wc -l <"$WORK/reshard-received") >= $(cat "$WORK/reshard-count") * 10)) || return 1
  (($(reshard_delivered | sort -u | wc -l) >= $(cat "$WORK/reshard-count") * 10))
}
# reshard_drained SECONDS: until everything is delivered, or nothing more arrives for SECONDS
# (a loaded machine drains the backlog slowly: that is not a loss), or 180 s in all.
reshard_drained() {
  local quiet=$1 cap=$((SECONDS + 180)) seen=-1 since=$SECONDS now
  until reshard_all_delivered; do
    now=$(wc -l <"$WORK/reshard-received")
    ((now > seen)) && { seen=$now; since=$SECONDS; }
    ((SECONDS - since < quiet && SECONDS < cap)) || return 1
    sleep 1
  done
}

# metric NAME: its value on the worker's /metrics (0 when absent), "?" when it does not answer.
metric() {
  local out
  out=$(curl -s --max-time 10 "http://127.0.0.1:$OPS_PORT/metrics") || { echo '?'; return; }
  awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }' <<<"$out"
}

# not_ready_s FILE: "X s (N samples unanswered)": seconds of the sampling intervals that began
# with a 503, and how many samples got no answer within 1 s (a starved CPU, not a 503).
not_ready_s() {
  awk 'NR > 1 && prev == 503 { s += $1 - t } { t = $1; prev = $2 } $2 == "000" { n++ }
    END { printf "%.1f s (%d samples unanswered)", s, n }' "$1"
}

# redirect_stats: ASK, MOVED and TRYAGAIN answers the cluster's nodes gave (INFO errorstats).
redirect_stats() {
  local p
  for p in "${RESHARD_PORTS[@]}"; do cli -p "$p" info errorstats; done |
    awk -F'[_:=,]' '/^errorstat_(ASK|MOVED|TRYAGAIN)/ { n[$2] += $4 }
      END { printf "ASK %d, MOVED %d, TRYAGAIN %d", n["ASK"], n["MOVED"], n["TRYAGAIN"] }'
}

# reshard_move FROM TO: one `--cluster reshard` of one slot (the source's lowest: ours); true
# when it exits 0, the slot's owner is TO, and the cluster check is clean again.
reshard_move() {
  local from=$1 to=$2
  timeout 60 redis-cli --cluster reshard "127.0.0.1:$from" --cluster-from "$(node_id "$from")" \
    --cluster-to "$(node_id "$to")" --cluster-slots 1 --cluster-yes \
    >>"$WORK/reshard-moves.log" 2>&1 || return 1
  [[ $(reshard_owner "$to") == "$to" ]] || return 1
  wait_until 20 cluster_clean
}

part_reshard() {
  RESHARD_RESULTS=()
  log "reshard: 3 masters"
  read -r -a RESHARD_PORTS <<<"$(free_ports 3)"
  local p nodes=()
  for p in "${RESHARD_PORTS[@]}"; do
    start_redis "reshard-$p" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000
    nodes+=("127.0.0.1:$p")
  done
  for p in "${RESHARD_PORTS[@]}"; do wait_until 10 listening "$p" || die "reshard: node $p"; done
  redis-cli --cluster create "${nodes[@]}" --cluster-yes >"$WORK/reshard-create.log" 2>&1 ||
    die "reshard: create failed (see $WORK/reshard-create.log)"
  reshard_ok() {
    local q
    for q in "${RESHARD_PORTS[@]}"; do
      cli -p "$q" cluster info | grep -q 'cluster_state:ok' || return 1
    done
    cluster_clean
  }
  wait_until 30 reshard_ok || die "reshard: cluster not ok"
  RESHARD_SLOT=$(cli -p "${RESHARD_PORTS[0]}" cluster keyslot "$RESHARD_ACCOUNT")
  local a=${RESHARD_PORTS[0]} b=${RESHARD_PORTS[1]}
  [[ $(reshard_owner "$a") == "$a" && $RESHARD_SLOT == 0 ]] ||
    die "reshard: slot $RESHARD_SLOT of $RESHARD_ACCOUNT is not the first master's lowest"
  base_env reshard
  export HOOKRELAY__REDIS__MODE=cluster
  HOOKRELAY__REDIS__URLS=$(printf 'redis://%s,' "${nodes[@]}")
  export HOOKRELAY__REDIS__URLS=${HOOKRELAY__REDIS__URLS%,}
  LISTEN_PORT=$(free_ports 1)
  "$BIN" store init >/dev/null || die "reshard: store init failed"
  local secrets=() w
  for w in $(seq 10); do
    secrets+=("$("$BIN" webhooks add --account "$RESHARD_ACCOUNT" --events '*' --json \
      --url "http://127.0.0.1:$LISTEN_PORT/r$w" | jq -r .secret)") || die "reshard: webhooks add"
  done
  # Other keys in the slot, as a real slot has: the move must carry them too.
  for w in $(seq 200); do printf 'SET other:{%s}:%d %s\n' "$RESHARD_ACCOUNT" "$w" "$RANDOM$RANDOM"; done |
    cli -p "$a" >/dev/null
  start_listener reshard "${secrets[@]}"
  start_worker reshard
  : >"$WORK/reshard-count"
  local stop=$WORK/reshard-stop
  RESHARD_STOP=$stop
  reshard_publish "$stop" &
  PIDS+=($!)
  local publisher=$!
  monitor_readiness "$WORK/reshard-readyz" &
  local monitor=$!
  PIDS+=("$monitor")
  sleep 3
  local errors_before reconnects_before moves=0 done_moves=0 t_moves=$SECONDS i
  errors_before=$(metric hookrelay_attempt_log_errors_total)
  reconnects_before=$(grep -c 'Cluster connection lost' "$WORK/reshard-worker.log" || true)
  log "reshard: $RESHARD_MOVES moves of slot $RESHARD_SLOT each way under ~$RESHARD_RATE events/s x 10 webhooks"
  for ((i = 1; i <= RESHARD_MOVES; i++)); do
    for p in "$a:$b" "$b:$a"; do
      moves=$((moves + 1))
      if reshard_move "${p%:*}" "${p#*:}"; then
        done_moves=$((done_moves + 1))
      else
        log "reshard: FAIL: move $moves (${p%:*} -> ${p#*:}) did not complete; its log:"
        tail -n 5 "$WORK/reshard-moves.log"
        FAILED=1
        break 2
      fi
    done
  done
  local moves_s=$((SECONDS - t_moves)) errors_after reconnects_after ready_moves
  errors_after=$(metric hookrelay_attempt_log_errors_total)
  reconnects_after=$(grep -c 'Cluster connection lost' "$WORK/reshard-worker.log" || true)
  kill "$monitor" 2>/dev/null || true
  ready_moves=$(not_ready_s "$WORK/reshard-readyz")
  log "reshard: $done_moves of $moves moves completed in ${moves_s} s"
  RESHARD_RESULTS+=("moves completed / attempted|$done_moves / $moves in ${moves_s} s")
  RESHARD_RESULTS+=("attempt-log errors before / after moves|$errors_before / $errors_after")
  RESHARD_RESULTS+=("cluster reconnects during moves|$((reconnects_after - reconnects_before))")
  RESHARD_RESULTS+=("worker not ready (503) during moves|${ready_moves}")
  ((done_moves == moves)) && reshard_hold
  : >"$stop"
  wait "$publisher" || true
  reshard_drained 20 || log "reshard: deliveries stopped before everything was delivered"
  local published delivered unique lost
  published=$(($(cat "$WORK/reshard-count") * 10))
  reshard_delivered | sort >"$WORK/reshard-delivered"
  delivered=$(wc -l <"$WORK/reshard-delivered")
  unique=$(sort -u "$WORK/reshard-delivered" | wc -l)
  lost=$(comm -23 <(reshard_expected | sort -u) <(sort -u "$WORK/reshard-delivered") | wc -l)
  RESHARD_RESULTS+=("deliveries delivered / published (x10 webhooks)|$unique / $published, lost $lost, duplicates $((delivered - unique))")
  RESHARD_RESULTS+=("attempt-log errors at the end|$(metric hookrelay_attempt_log_errors_total)")
  RESHARD_RESULTS+=("redirects the nodes answered|$(redirect_stats)")
  log "reshard: delivered $unique of $published, lost $lost, duplicates $((delivered - unique))"
  ((lost == 0 && published > 0 && delivered == unique)) || FAILED=1
}

# reshard_hold: the slot MIGRATING/IMPORTING by hand, each state held $HOLD_S s, with the API
# probes (see the header) and the worker's readiness sampled throughout.
reshard_hold() {
  local src dst other src_id dst_id
  src=$(reshard_owner "${RESHARD_PORTS[0]}")
  for p in "${RESHARD_PORTS[@]}"; do
    [[ $p == "$src" ]] && continue
    if [[ -z ${dst:-} ]]; then dst=$p; else other=$p; fi
  done
  src_id=$(node_id "$src")
  dst_id=$(node_id "$dst")
  local admin api_port api
  admin=$(openssl rand -hex 16)
  api_port=$(free_ports 1)
  HOOKRELAY__API__LISTEN=127.0.0.1:$api_port HOOKRELAY__API__ADMIN_TOKEN=$admin \
    "$BIN" api >"$WORK/reshard-api.log" 2>&1 &
  api=$!
  PIDS+=("$api")
  wait_until 20 listening "$api_port" || die "reshard: the API did not start"
  local base=http://127.0.0.1:$api_port/v1/accounts/$RESHARD_ACCOUNT/webhooks id
  id=$(curl -fsS -H "authorization: Bearer $admin" "$base" | jq -r '.webhooks[0].id')
  local stop=$WORK/hold-stop
  (while [[ ! -e $stop ]]; do
    curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}\n' \
      -H "authorization: Bearer $admin" "$base"
    sleep 0.05
  done >"$WORK/hold-reads") &
  local reader=$!
  PIDS+=("$reader")
  (n=0; while [[ ! -e $stop ]]; do
    n=$((n + 1))
    curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}\n' -X PATCH \
      -H "authorization: Bearer $admin" -H 'content-type: application/json' \
      -d "{\"description\":\"hold $n\"}" "$base/$id"
    sleep 0.5
  done >"$WORK/hold-writes") &
  local writer=$!
  PIDS+=("$writer")
  monitor_readiness "$WORK/hold-readyz" &
  local monitor=$!
  PIDS+=("$monitor")
  sleep 1
  log "reshard: hold: slot $RESHARD_SLOT MIGRATING on $src, IMPORTING on $dst, nothing moved"
  cli -p "$dst" cluster setslot "$RESHARD_SLOT" importing "$src_id" >/dev/null
  cli -p "$src" cluster setslot "$RESHARD_SLOT" migrating "$dst_id" >/dev/null
  sleep "$HOLD_S"
  # Everything but the account's webhooks, urls and version (which the scripts and the lookup
  # read together): the attempt logs, failing marks and other keys are then on $dst.
  local prefix=$HOOKRELAY__REDIS__PREFIX:{$RESHARD_ACCOUNT}
  local core=("$prefix:webhooks" "$prefix:urls" "$prefix:version") rest=() k
  mapfile -t rest < <(cli -p "$src" cluster getkeysinslot "$RESHARD_SLOT" 5000 |
    grep -vxF -e "${core[0]}" -e "${core[1]}" -e "${core[2]}")
  log "reshard: hold: ${#rest[@]} keys moved with MIGRATE, the account's 3 core keys not"
  hold_migrate "$src" "$dst" "${rest[@]}"
  sleep "$HOLD_S"
  # The core keys split for a moment, as a reshard's batches can leave them: reads and scripts
  # get TRYAGAIN and retry until the rest follows.
  hold_migrate "$src" "$dst" "${core[2]}"
  sleep 0.3
  hold_migrate "$src" "$dst" "${core[0]}" "${core[1]}"
  mapfile -t rest < <(cli -p "$src" cluster getkeysinslot "$RESHARD_SLOT" 5000)
  ((${#rest[@]} == 0)) || hold_migrate "$src" "$dst" "${rest[@]}"
  log "reshard: hold: every key on $dst, slot still MIGRATING/IMPORTING"
  sleep "$HOLD_S"
  for p in "$dst" "$src" "$other"; do
    cli -p "$p" cluster setslot "$RESHARD_SLOT" node "$dst_id" >/dev/null
  done
  wait_until 20 cluster_clean || { log "reshard: FAIL: cluster not clean after the hold"; FAILED=1; }
  sleep 1
  : >"$stop"
  wait "$reader" "$writer" 2>/dev/null || true
  kill "$monitor" "$api" 2>/dev/null || true
  local reads bad_reads p99 max writes bad_writes
  reads=$(wc -l <"$WORK/hold-reads")
  bad_reads=$(awk '$1 != 200' "$WORK/hold-reads" | wc -l)
  p99=$(awk '{ print $2 * 1000 }' "$WORK/hold-reads" | sort -n |
    awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.0f", v[i] }')
  max=$(awk '{ print $2 * 1000 }' "$WORK/hold-reads" | sort -n | tail -n 1)
  writes=$(wc -l <"$WORK/hold-writes")
  bad_writes=$(awk '$1 != 200' "$WORK/hold-writes" | wc -l)
  RESHARD_RESULTS+=("hold: lookups (API list) ok / made|$((reads - bad_reads)) / $reads, p99 ${p99} ms, max ${max%.*} ms")
  RESHARD_RESULTS+=("hold: Lua writes (API update) ok / made|$((writes - bad_writes)) / $writes")
  RESHARD_RESULTS+=("hold: worker not ready (503)|$(not_ready_s "$WORK/hold-readyz")")
  log "reshard: hold: lookups $((reads - bad_reads))/$reads ok (p99 ${p99} ms), writes $((writes - bad_writes))/$writes ok"
  ((bad_reads == 0 && bad_writes == 0 && reads > 0)) || FAILED=1
}

# hold_migrate SRC DST KEY...: MIGRATE the keys in batches of 50 (each batch atomic).
hold_migrate() {
  local src=$1 dst=$2
  shift 2
  while (($# > 0)); do
    local batch=("${@:1:50}")
    shift "${#batch[@]}"
    cli -p "$src" migrate 127.0.0.1 "$dst" "" 0 5000 keys "${batch[@]}" >>"$WORK/hold-migrate.log" ||
      { log "reshard: FAIL: MIGRATE refused"; FAILED=1; }
  done
}

# --- e) replicas: redis.min_replicas on the Sentinel set-up --------------------------------------

# A webhook added with redis.min_replicas=1 returns only once the replica has it, so killing the
# master the moment `webhooks add` returns loses nothing: after the failover it is there. With
# min_replicas above the number of replicas, the CLI exits 75 saying the write is unconfirmed.
part_replicas() {
  log "replicas: redis.min_replicas on 1 master, 1 replica, 3 sentinels"
  base_env replicas
  start_sentinel_set replicas
  "$BIN" store init >/dev/null || die "replicas: store init failed"
  local out id rc err
  out=$(HOOKRELAY__REDIS__MIN_REPLICAS=1 "$BIN" webhooks add --account "$ACCOUNT" \
    --url https://example.com/replicated --events '*' --json) ||
    die "replicas: webhooks add with min_replicas=1 failed"
  kill_sentinel_master
  id=$(jq -r .id <<<"$out")
  log "replicas: added $id with min_replicas=1, then killed the master at once"
  wait_until "$FAILOVER_MAX_S" sentinel_failed_over ||
    die "replicas: no failover within ${FAILOVER_MAX_S} s"
  log "replicas: failover done; the replica 127.0.0.1:$REPLICA_PORT is the master"
  # Right after a failover the sentinels may still name the old master for a moment: a show that
  # cannot reach Redis (69) or fails mid-command (75) is tried again; only "no such webhook" (1)
  # or a success ends the wait.
  local shown=1 deadline=$((SECONDS + 30))
  while :; do
    shown=0
    out=$("$BIN" webhooks show "$id" --json 2>&1) || shown=$?
    [[ $shown == 69 || $shown == 75 ]] && ((SECONDS < deadline)) || break
    sleep 0.5
  done
  if [[ $shown == 0 ]]; then
    log "replicas: after the failover: $(jq -c '{id, url, enabled}' <<<"$out")"
    REPLICA_RESULTS+=("min_replicas=1, master killed right after add|$id present after the failover")
  else
    log "replicas: FAIL: $id is not there after the failover (exit $shown): $out"
    REPLICA_RESULTS+=("min_replicas=1, master killed right after add|LOST (FAIL)")
    FAILED=1
  fi
  # The new master has no replica at all now: the one asked for cannot confirm.
  rc=0
  err=$(HOOKRELAY__REDIS__MIN_REPLICAS=1 "$BIN" webhooks add --account "$ACCOUNT" \
    --url https://example.com/unconfirmed --events '*' 2>&1 >/dev/null) || rc=$?
  log "replicas: min_replicas=1 with no replica left: exit $rc: $err"
  if [[ $rc == 75 && $err == *"on the Redis primary but unconfirmed"* ]]; then
    REPLICA_RESULTS+=("min_replicas=1, no replica left|exit 75: on the primary, unconfirmed")
  else
    REPLICA_RESULTS+=("min_replicas=1, no replica left|exit $rc (FAIL)")
    FAILED=1
  fi
}

# --- f) migrate: a single Redis's store moved to a Redis Cluster with export and import ----------

# Webhooks added to a single Redis (rate limits, a disabled one, a rotated secret among them) are
# exported, imported into a Redis Cluster of 3 masters, and exported again from there: both
# exports must hold the same lines, and a worker on the cluster delivers to a webhook of the old
# store, signed with the secret it had there.
readonly MIGRATE_ACCOUNTS=30
readonly MIGRATE_PER_ACCOUNT=3

# start_migrate_nodes: a single Redis (MIGRATE_SINGLE) and a 3-master cluster (MIGRATE_NODES).
start_migrate_nodes() {
  local p ports
  MIGRATE_SINGLE=$(free_ports 1)
  start_redis migrate-single "$MIGRATE_SINGLE"
  wait_until 10 listening "$MIGRATE_SINGLE" || die "migrate: redis-server did not listen"
  read -r -a ports <<<"$(free_ports 3)"
  MIGRATE_PORTS=("${ports[@]}")
  MIGRATE_NODES=()
  for p in "${ports[@]}"; do
    start_redis "migrate-cluster-$p" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 1000
    MIGRATE_NODES+=("127.0.0.1:$p")
  done
  for p in "${ports[@]}"; do wait_until 10 listening "$p" || die "migrate: node $p"; done
  redis-cli --cluster create "${MIGRATE_NODES[@]}" --cluster-yes >"$WORK/migrate-create.log" 2>&1 ||
    die "migrate: cluster create failed"
  migrate_cluster_ok() { cli -p "${ports[0]}" cluster info | grep -q 'cluster_state:ok'; }
  wait_until 30 migrate_cluster_ok || die "migrate: cluster state not ok"
}

# fill_single: the test account's webhook (its secret in MIGRATE_SECRET) and
# MIGRATE_ACCOUNTS x MIGRATE_PER_ACCOUNT more; one of them disabled and rotated.
fill_single() {
  local a n some
  MIGRATE_SECRET=$(add_webhook migrate)
  for a in $(seq "$MIGRATE_ACCOUNTS"); do
    for n in $(seq "$MIGRATE_PER_ACCOUNT"); do
      "$BIN" webhooks add --account "migrate-$a" --url "https://shop-$a.example.com/hooks/$n" \
        --events 'payment.card.success,customer.registered' --rate-limit "$((a * n))" \
        >/dev/null || die "migrate: webhooks add failed"
    done
  done
  some=$("$BIN" webhooks list --account migrate-1 --json | jq -r '.webhooks[0].id')
  "$BIN" webhooks update "$some" --enabled false >/dev/null || die "migrate: update failed"
  "$BIN" webhooks rotate-secret "$some" >/dev/null || die "migrate: rotate-secret failed"
}

part_migrate() {
  log "migrate: a single Redis, then a Redis Cluster of 3 masters"
  base_env migrate
  start_migrate_nodes
  export HOOKRELAY__REDIS__URL=redis://127.0.0.1:$MIGRATE_SINGLE/0
  "$BIN" store init >/dev/null || die "migrate: store init failed"
  LISTEN_PORT=$(free_ports 1)
  fill_single
  local expected=$((MIGRATE_ACCOUNTS * MIGRATE_PER_ACCOUNT + 1)) exported summary
  "$BIN" webhooks export --output "$WORK/migrate-single.jsonl" 2>"$WORK/migrate-export.log" ||
    die "migrate: export from the single Redis failed"
  exported=$(wc -l <"$WORK/migrate-single.jsonl")
  log "migrate: $(tail -n 1 "$WORK/migrate-export.log")"

  unset HOOKRELAY__REDIS__URL
  export HOOKRELAY__REDIS__MODE=cluster
  export HOOKRELAY__REDIS__URLS="redis://${MIGRATE_NODES[0]},redis://${MIGRATE_NODES[1]}"
  summary=$("$BIN" webhooks import "$WORK/migrate-single.jsonl" --init-store --json \
    2>"$WORK/migrate-import.log") ||
    die "migrate: import into the cluster failed: $(tail -n 3 "$WORK/migrate-import.log")"
  log "migrate: import into the cluster: $(jq -c . <<<"$summary")"
  "$BIN" webhooks export --output "$WORK/migrate-cluster.jsonl" 2>/dev/null ||
    die "migrate: export from the cluster failed"
  local p spread=0 same=no delivered=0
  for p in "${MIGRATE_PORTS[@]}"; do
    (($(cli -p "$p" --scan --pattern "$RUN_PREFIX-migrate:{*}:webhooks" | wc -l) > 0)) &&
      spread=$((spread + 1))
  done
  cmp -s <(sort "$WORK/migrate-single.jsonl") <(sort "$WORK/migrate-cluster.jsonl") && same=yes
  start_listener migrate "$MIGRATE_SECRET"
  start_worker migrate
  "$BIN" publish --type payment.card.success --account "$ACCOUNT" --id evt_migrate_1 \
    --data '{}' >/dev/null || die "migrate: publish failed"
  echo evt_migrate_1 >"$WORK/migrate-published"
  wait_until 30 all_delivered migrate && delivered=1
  MIGRATE_RESULTS=(
    "webhooks in the single Redis|$expected"
    "lines exported from it|$exported"
    "imported into the cluster|$(jq -r '"\(.created) created, \(.updated) updated, \(.unchanged) unchanged"' <<<"$summary")"
    "masters holding accounts|$spread of ${#MIGRATE_PORTS[@]}"
    "cluster export identical to the single one|$same ($(wc -l <"$WORK/migrate-cluster.jsonl") lines)"
    "delivery via the cluster, signed with the old secret|$delivered of 1 verified"
  )
  [[ $exported == "$expected" && $(jq -r .created <<<"$summary") == "$expected" &&
    $same == yes && $delivered == 1 && $spread -gt 1 ]] || FAILED=1
  kill -TERM "$WORKER_PID"
  wait "$WORKER_PID" 2>/dev/null || true
}

# --- run ------------------------------------------------------------------------------------------

for part in $PARTS; do
  case $part in
    tls) part_tls ;;
    cluster) part_cluster ;;
    sentinel) part_sentinel ;;
    reshard) part_reshard ;;
    replicas) part_replicas ;;
    migrate) part_migrate ;;
    *) die "unknown part '$part' (tls, cluster, sentinel, reshard, replicas, migrate)" ;;
  esac
  base_env "$part"
done

echo
if [[ -n ${TLS_RESULTS+x} ]]; then
  echo "TLS checks"
  for r in "${TLS_RESULTS[@]}"; do printf '  %-55s %s\n' "${r%%|*}" "${r#*|}"; done
  echo
fi
if [[ -n ${RESHARD_RESULTS+x} ]]; then
  echo "Reshard under load (slot $RESHARD_SLOT of $RESHARD_ACCOUNT, 10 webhooks)"
  for r in "${RESHARD_RESULTS[@]}"; do printf '  %-48s %s\n' "${r%%|*}" "${r#*|}"; done
  echo
fi
if [[ -n ${REPLICA_RESULTS+x} ]]; then
  echo "redis.min_replicas on Sentinel"
  for r in "${REPLICA_RESULTS[@]}"; do printf '  %-55s %s\n' "${r%%|*}" "${r#*|}"; done
  echo
fi
if [[ -n ${MIGRATE_RESULTS+x} ]]; then
  echo "Migration: single Redis -> Redis Cluster (webhooks export | import)"
  for r in "${MIGRATE_RESULTS[@]}"; do printf '  %-55s %s\n' "${r%%|*}" "${r#*|}"; done
  echo
fi
if ((${#SUMMARY[@]} > 0)); then
  printf '%-9s %9s %9s %5s %10s %14s %14s\n' scenario published delivered lost duplicates \
    "not ready" "longest pause"
  printf '%s\n' "${SUMMARY[@]}"
fi
((FAILED == 0)) || die "some checks failed (see above)"
log "all passed"
