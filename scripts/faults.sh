#!/usr/bin/env bash
# The proof of DESIGN §3's guarantee (issue 5): at-least-once, nothing lost when a worker is
# killed, the broker restarts or Redis restarts. Runs hookrelay against a RabbitMQ node and a
# Redis of its own (own node name, ports and data directory; the RabbitMQ on 5672 and the Redis on
# 6379 that other work uses are never touched), publishes a steady stream of events to webhooks on
# a local verifying receiver, and injects one fault after another:
#
#   a) SIGKILL a worker, start another          d) Redis down 10 s (shutdown + start, data kept)
#   b) force-close the workers' broker          e) receiver down 20 s
#      connections                              f) SIGTERM a worker mid-stream, start another
#   c) restart RabbitMQ (stop + start the node)
#   g) the store's keys deleted mid-stream (3 workers), then restored from a backup taken before
#   h) Redis restarted empty (no persistence) mid-stream, then restored from a backup
#   i) a worker started with the wrong redis.url database refuses to start (exit 78)
#
# In g and h the workers must pause (not ready, hookrelay_store_ok 0, nothing acked as
# unmatched) and deliver every event published meanwhile once the store is back. The backup is
# `hookrelay webhooks export` / `webhooks import --init-store` when the binary has them; without
# them (a build before the export/import commands) it is Redis' own: the prefix's keys copied to
# database 1 and back (g), an RDB snapshot (`redis-cli --rdb`) loaded by a restart (h).
#
# The receivers are hookrelay's own `hookrelay listen`, one per webhook with that webhook's
# secret, printing a JSON line per delivery; what one answered 2xx it has printed, also when it is
# stopped (src/listen.rs). Only the counting is Python (scripts/faults/analyze.py says why).
#
# Per scenario it prints one line (published, delivered, lost, duplicates, dead-lettered, time to
# recover), then a final table recounted at the end, and exits non-zero if any scenario lost or
# dead-lettered anything, had duplicates where none are allowed (only a, b and c may have them),
# or saw a worker misbehave (exit unexpectedly, not become ready, not stop cleanly on SIGTERM).
#
# Usage: scripts/faults.sh     (root, or a user with sudo: Debian runs RabbitMQ as user rabbitmq)
# Environment:
#   FAULTS_KEEP=1        keep the temporary directory (logs, receipts, broker data) at the end
#   FAULTS_SCENARIOS=ab  run only these scenarios (default: abcdefghi)
#   HOOKRELAY_BIN=path   use that binary instead of building a release one
#   CARGO_TARGET_DIR     respected when locating the built binary
set -euo pipefail

SCRIPT=faults
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/nodes.sh
source "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"
# $EPOCHREALTIME with a "." whatever the caller's locale.
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly ANALYZE="$ROOT/scripts/faults/analyze.py"

readonly NODE=hookrelay-faults@localhost
readonly PREFIX=hrfaults
readonly WORKERS=2
readonly LOCK_FILE=/tmp/hookrelay-faults.lock
# The retry schedule outlasts the longest outage (20 s): 7 attempts over ~63 s.
readonly RETRY_SCHEDULE=1s,2s,4s,8s,16s,32s
readonly SHUTDOWN_GRACE_S=10
# Each of the publisher loops aims at this many publishes per second.
readonly PUBLISH_LOOPS=2
readonly PUBLISH_RATE=12
# Steady stream before the fault and after it (the "after" events measure the recovery).
readonly BEFORE_S=4
readonly AFTER_S=6
readonly SCENARIOS=${FAULTS_SCENARIOS:-abcdefghi}
readonly ACCOUNTS=(acct-1 acct-2 acct-3)
readonly EVENT_TYPES=(payment.card.success subscribe.success customer.registered asset.access.granted)

T_START=$SECONDS
log() { printf 'faults: [%3ds] %s\n' "$((SECONDS - T_START))" "$*"; }
now() { printf '%s' "$EPOCHREALTIME"; }

can_rabbit ||
  die "run as root or with sudo: Debian's RabbitMQ commands only run as root or rabbitmq"

# --- the run's own places ----------------------------------------------------------------------

WORK=""
LOGS=""
REDIS_PORT=""
declare -A RECEIVER_PORT=() # webhook number -> the port of its `hookrelay listen`
declare -A RECEIVER_PID=()  # webhook number -> pid, while it runs
declare -A RECEIVER_SECRET=()
declare -A WPID=()   # worker number -> pid, for the workers that should be running
NEXT_WORKER=1
PUBLISHER_PIDS=()
STOP_FILE=""

gone() { ! alive "$1"; }

# A RabbitMQ command with this run's node environment.
on_node() { on_rabbit "$NODE" "$@"; }
# The lowest-numbered running worker.
oldest_worker() { printf '%s\n' "${!WPID[@]}" | sort -n | head -n 1; }

# --- cleanup ------------------------------------------------------------------------------------

stop_publishers() {
  [[ -n $STOP_FILE ]] && : >"$STOP_FILE"
  local pid deadline=$((SECONDS + 25))
  for pid in "${PUBLISHER_PIDS[@]}"; do
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then kill "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
  done
  PUBLISHER_PIDS=()
}

cleanup() {
  local rc=$? n
  trap - EXIT INT TERM
  set +e
  log "cleaning up"
  stop_publishers
  for n in "${!WPID[@]}"; do
    stop_process "${WPID[$n]}" 15
    wait "${WPID[$n]}" 2>/dev/null
  done
  receivers_stop
  if [[ -n $REDIS_PORT ]]; then
    timeout 10 redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1
    [[ -s $WORK/redis/redis.pid ]] && stop_process "$(cat "$WORK/redis/redis.pid")" 5
  fi
  rabbit_nodes_stop
  if [[ -n $WORK ]]; then
    if [[ ${FAULTS_KEEP:-0} == 1 ]]; then
      log "kept $WORK (logs in $LOGS)"
    else
      cd / && { rm -rf "$WORK" 2>/dev/null || "${SUDO[@]}" rm -rf "$WORK"; }
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- RabbitMQ: a node of our own ----------------------------------------------------------------

rabbit_ping() { rabbit_node_ping "$NODE"; }

rabbit_start() { rabbit_node_start "$NODE" && rabbit_node_wait "$NODE" 120; }
rabbit_stop() { rabbit_node_stop "$NODE"; }

setup_rabbit() {
  free_port AMQP_PORT
  rabbit_node_setup "$NODE" "$WORK/rabbit" "$AMQP_PORT" "listeners.tcp.default = 127.0.0.1:$AMQP_PORT
log.console = false
log.file.level = info"
  log "starting RabbitMQ node $NODE (amqp 127.0.0.1:$AMQP_PORT)"
  rabbit_start
  log "RabbitMQ ready (pid $(rabbit_node_pid "$NODE"))"
}

# Messages in the two dead-letter queues, read with rabbitmqctl on our node.
dlq_count() {
  local queues
  queues=$(on_node timeout 30 rabbitmqctl -n "$NODE" -q list_queues --no-table-headers name messages) ||
    return 1
  awk -v d="$PREFIX.dlq.deliveries" -v e="$PREFIX.dlq.events" \
    '$1 == d || $1 == e { n += $2; seen++ } END { if (seen != 2) exit 1; print n + 0 }' <<<"$queues"
}

# The run's queues holding messages, "name=ready+unacked ...", from rabbitmqctl (exact, unlike
# the management API's statistics, which lag by up to a collection interval).
rabbit_depths() {
  local queues
  queues=$(on_node timeout 30 rabbitmqctl -n "$NODE" -q list_queues --no-table-headers \
    name messages_ready messages_unacknowledged) || return 1
  awk -v p="$PREFIX." 'index($1, p) == 1 && ($2 + $3) > 0 { printf "%s%s=%d+%d", sep, substr($1, length(p) + 1), $2, $3; sep = " " }
    END { if (!sep) printf "all empty"; print "" }' <<<"$queues"
}

# True when no work or delay queue holds a message (dead-letter queues do not count).
rabbit_idle() {
  local depths entry
  depths=$(rabbit_depths) || return 1
  [[ $depths != "all empty" ]] || return 0
  for entry in $depths; do
    [[ $entry == dlq.* ]] || return 1
  done
}

# --- Redis: one of our own ----------------------------------------------------------------------

redis_pong() { [[ $(timeout 3 redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
redis_down() { ! tcp_open 127.0.0.1 "$REDIS_PORT"; }

# The same server each time, on the same port and directory: a restart loads $WORK/redis/dump.rdb
# when a scenario saved it (SHUTDOWN SAVE), as a real one would.
redis_start() {
  redis_server_start "$WORK/redis" "$REDIS_PORT" --dbfilename dump.rdb ||
    die "redis-server failed to start; see $WORK/redis/redis.log"
  wait_until 30 redis_pong || die "Redis on port $REDIS_PORT not answering after 30 s"
}

setup_redis() {
  free_port REDIS_PORT
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis_start
}

# --- hookrelay ----------------------------------------------------------------------------------

hookrelay_env() {
  # Only what is set here: nothing from the caller's environment changes the run.
  clear_hookrelay_env
  export HOOKRELAY__AMQP__URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
  export HOOKRELAY__AMQP__PREFIX=$PREFIX
  export HOOKRELAY__AMQP__RECONNECT_TIMEOUT=120s
  export HOOKRELAY__REDIS__URL="redis://127.0.0.1:$REDIS_PORT/0"
  export HOOKRELAY__REDIS__PREFIX=$PREFIX
  export HOOKRELAY__DELIVERY__ALLOW_HTTP=true
  export HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS=true
  export HOOKRELAY__DELIVERY__RETRY_SCHEDULE=$RETRY_SCHEDULE
  export HOOKRELAY__WORKER__SHUTDOWN_GRACE="${SHUTDOWN_GRACE_S}s"
  export HOOKRELAY__OPS__LISTEN=127.0.0.1:0
  export HOOKRELAY__LOG__FORMAT=text
}

# json_field NAME FILE: the string value of "NAME" in hookrelay's pretty-printed JSON.
json_field() { sed -n "s/^  \"$1\": \"\(.*\)\",\?$/\1/p" "$2" | head -n 1; }

# Registers the webhooks: one each for acct-1 and acct-2, two for acct-3 (fan-out), all events,
# each on the port of its own receiver. webhooks.txt: "<n> <path> <account> <id> <port>".
register_webhooks() {
  local account n=0 i url id
  : >"$WORK/webhooks.txt"
  # Writes and workers refuse a store without its marker; init is idempotent.
  timeout 30 "$BIN" store init >>"$LOGS/cli.log" 2>&1 || die "store init failed; see $LOGS/cli.log"
  for account in "${ACCOUNTS[@]}"; do
    for i in 1 $([[ $account == acct-3 ]] && echo 2); do
      n=$((n + 1))
      free_port "RECEIVER_PORT[$n]"
      url="http://127.0.0.1:${RECEIVER_PORT[$n]}/$account/hook-$i"
      timeout 30 "$BIN" webhooks add --account "$account" --url "$url" --events '*' --json \
        >"$WORK/webhook.json" 2>>"$LOGS/cli.log" || die "webhooks add failed; see $LOGS/cli.log"
      id=$(json_field id "$WORK/webhook.json")
      RECEIVER_SECRET[$n]=$(json_field secret "$WORK/webhook.json")
      [[ $id == wh_* && ${RECEIVER_SECRET[$n]} == whsec_* ]] ||
        die "webhooks add printed no id or secret: $(cat "$WORK/webhook.json")"
      printf '%s /%s/hook-%s %s %s %s\n' "$n" "$account" "$i" "$account" "$id" "${RECEIVER_PORT[$n]}" \
        >>"$WORK/webhooks.txt"
    done
  done
  log "registered $n webhooks on ${#ACCOUNTS[@]} accounts -> 127.0.0.1 ports ${RECEIVER_PORT[*]}"
}

# One `hookrelay listen` per webhook, verifying with that webhook's secret only, so a delivery
# signed for another webhook fails verification. Each appends its JSON lines to its own file.
receivers_start() {
  local n
  for n in "${!RECEIVER_PORT[@]}"; do
    "$BIN" listen --listen "127.0.0.1:${RECEIVER_PORT[$n]}" --secret "${RECEIVER_SECRET[$n]}" --json \
      >>"$WORK/receipts-$n.jsonl" 2>>"$LOGS/receiver-$n.log" 8<&- &
    RECEIVER_PID[$n]=$!
  done
  for n in "${!RECEIVER_PORT[@]}"; do
    wait_until 15 tcp_open 127.0.0.1 "${RECEIVER_PORT[$n]}" ||
      die "receiver $n did not start; see $LOGS/receiver-$n.log"
  done
}

# SIGTERM: each stops accepting, answers what it has read and prints it, then exits.
receivers_stop() {
  local n
  for n in "${!RECEIVER_PID[@]}"; do kill -TERM "${RECEIVER_PID[$n]}" 2>/dev/null || true; done
  for n in "${!RECEIVER_PID[@]}"; do
    stop_process "${RECEIVER_PID[$n]}" 15
    wait "${RECEIVER_PID[$n]}" 2>/dev/null || true
    unset "RECEIVER_PID[$n]"
  done
}

start_worker() {
  local n=$NEXT_WORKER
  NEXT_WORKER=$((n + 1))
  "$BIN" worker >"$LOGS/worker-$n.log" 2>&1 8<&- &
  WPID[$n]=$!
  log "worker $n started (pid ${WPID[$n]})"
}

worker_ops_addr() {
  grep -aoE 'ops_addr=[0-9.]+:[0-9]+' "$LOGS/worker-$1.log" 2>/dev/null | tail -n 1 | cut -d= -f2
}

worker_ready() {
  local addr
  alive "${WPID[$1]}" || return 2
  addr=$(worker_ops_addr "$1")
  [[ -n $addr ]] && curl -fsS -m 2 "http://$addr/readyz" >/dev/null 2>&1
}

# ensure_workers_ready SECONDS WHEN: waits until every worker answers /readyz. One that does not
# (or exited) is a problem, "WHEN" saying when; its log is shown and it is replaced (SIGTERM, then
# SIGKILL), so that the next scenarios still run with healthy workers.
ensure_workers_ready() {
  local limit=$1 when=$2 n rc pid deadline=$((SECONDS + $1)) bad=()
  for n in $(printf '%s\n' "${!WPID[@]}" | sort -n); do
    while true; do
      rc=0
      worker_ready "$n" || rc=$?
      ((rc == 0)) && break
      if ((rc == 2 || SECONDS >= deadline)); then
        bad+=("$n")
        break
      fi
      sleep 0.3
    done
  done
  for n in "${bad[@]}"; do
    pid=${WPID[$n]}
    unset "WPID[$n]"
    if alive "$pid"; then
      problem "worker $n not ready $when (waited $limit s); replacing it"
      show_worker_log "$n"
      printf -- '--- worker %s: its TCP connections now (broker :%s, Redis :%s, receivers :%s) ---\n' \
        "$n" "$AMQP_PORT" "$REDIS_PORT" "${RECEIVER_PORT[*]}"
      ss -tanp 2>/dev/null | grep -F "pid=$pid," || echo "(none)"
      kill -TERM "$pid" 2>/dev/null || true
      wait_until 15 gone "$pid" ||
        problem "worker $n (not ready) ignored SIGTERM for 15 s; SIGKILLed"
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    else
      rc=0
      wait "$pid" 2>/dev/null || rc=$?
      problem "worker $n exited on its own (exit code $rc) $when; replacing it"
      show_worker_log "$n"
    fi
    start_worker
  done
  if ((${#bad[@]} > 0)); then
    for n in "${!WPID[@]}"; do
      wait_until 30 worker_ready "$n" || problem "replacement worker $n not ready within 30 s either"
    done
  fi
}

# probe_not_ready WHAT: during an outage, every worker's /readyz must say not ready (issue 5).
probe_not_ready() {
  local n ready=()
  for n in $(printf '%s\n' "${!WPID[@]}" | sort -n); do
    if worker_ready "$n"; then ready+=("$n"); fi
  done
  if ((${#ready[@]} > 0)); then
    problem "worker(s) ${ready[*]} said ready on /readyz while $1"
  else
    log "all workers report not ready while $1 (as they should)"
  fi
  log "queues (ready+unacked) while $1: $(rabbit_depths 2>/dev/null || echo "unknown (no broker)")"
}

# Tail of a worker's log: its last warnings and errors, then its last lines.
declare -A SHOWN=() # workers whose log this scenario already showed
show_worker_log() {
  local f="$LOGS/worker-$1.log"
  [[ -z ${SHOWN[$1]:-} ]] || return 0
  SHOWN[$1]=1
  printf -- '--- worker %s (%s): last warnings/errors ---\n' "$1" "$f"
  grep -aE ' (WARN|ERROR) ' "$f" | tail -n 12 | cut -c1-400 || true
  printf -- '--- worker %s: last lines ---\n' "$1"
  tail -n 6 "$f" | cut -c1-400
}

# --- publishing ---------------------------------------------------------------------------------

# publisher_loop ID_PREFIX OUT_FILE: publishes until $STOP_FILE exists, one line per attempt:
# "<id> <account> <t start> <t end> <exit code>" (exit code 0 = confirmed by the broker).
publisher_loop() {
  local prefix=$1 out=$2 seq=0 id account type t0 t1 rc left
  local interval_us=$((1000000 / PUBLISH_RATE))
  while [[ ! -e $STOP_FILE ]]; do
    seq=$((seq + 1))
    printf -v id '%s%05d' "$prefix" "$seq"
    account=${ACCOUNTS[seq % ${#ACCOUNTS[@]}]}
    type=${EVENT_TYPES[seq % ${#EVENT_TYPES[@]}]}
    t0=$(now)
    rc=0
    timeout 20 "$BIN" publish --type "$type" --account "$account" --id "$id" \
      --data "{\"seq\":$seq,\"amount\":\"10.00\"}" >/dev/null 2>>"$LOGS/publish.log" || rc=$?
    t1=$(now)
    printf '%s %s %s %s %s\n' "$id" "$account" "$t0" "$t1" "$rc" >>"$out"
    # Pace: sleep what is left of this publish's slot.
    left=$((interval_us - (${t1/./} - ${t0/./})))
    ((left <= 0)) || sleep "$(printf '0.%06d' "$left")"
  done
}

start_publishers() {
  local scenario=$1 i
  STOP_FILE="$WORK/stop-$scenario"
  rm -f "$STOP_FILE"
  for ((i = 1; i <= PUBLISH_LOOPS; i++)); do
    publisher_loop "$scenario-$i-" "$WORK/published-$scenario-$i.txt" 8<&- &
    PUBLISHER_PIDS+=($!)
  done
}

# --- scenarios ----------------------------------------------------------------------------------

PROBLEMS=()
problem() {
  PROBLEMS+=("$1")
  log "PROBLEM: $1"
}

# analyze COMMAND ARGS...: scripts/faults/analyze.py on this run's files.
analyze() {
  local cmd=$1
  shift
  python3 "$ANALYZE" "$cmd" --webhooks "$WORK/webhooks.txt" --receipts "$WORK" "$@"
}

# counts ID_PREFIX PUBLISHED_FILE: sets expected, missing (deliveries) and quiet (whole seconds
# since the last receipt) in the caller's variables of those names.
counts() {
  local out
  out=$(analyze missing --prefix "$1" --published "$2") || die "analyze.py failed"
  read -r expected missing quiet <<<"$out"
}

# settle SCENARIO MAX_SECONDS: waits until every expected delivery arrived, nothing arrived for
# 2 s (so late duplicates are counted too) and the work and delay queues are empty.
settle() {
  local scenario=$1 deadline=$((SECONDS + $2)) expected missing quiet
  while true; do
    counts "$scenario-" "$WORK/published-$scenario.txt"
    if ((missing == 0 && quiet >= 2)) && rabbit_idle; then
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "settle: gave up after $2 s with $missing of $expected deliveries missing; queues (ready+unacked): $(
        rabbit_depths 2>&1 || echo unknown)"
      return 0
    fi
    sleep 1
  done
}

DLQ_BEFORE=0
FAILED_SCENARIOS=()

# run_scenario NAME TITLE DUPS_ALLOWED SETTLE_MAX_S FAULT_FUNCTION
# The fault function injects the fault, clears it, and sets FAULT_END (epoch seconds) to when
# the system should be whole again.
run_scenario() {
  local name=$1 title=$2 dups_allowed=$3 settle_max=$4 fault=$5 n rc=0 involved
  PROBLEMS=()
  SHOWN=()
  log "=== scenario $name: $title"
  ensure_workers_ready 30 "before the scenario started"
  involved=("${!WPID[@]}")
  local first_new=$NEXT_WORKER
  start_publishers "$name"
  sleep "$BEFORE_S"
  FAULT_END=""
  "$fault"
  [[ -n $FAULT_END ]] || FAULT_END=$(now)
  sleep "$AFTER_S"
  stop_publishers
  cat "$WORK/published-$name"-*.txt >"$WORK/published-$name.txt" 2>/dev/null || : >"$WORK/published-$name.txt"
  log "publishing stopped ($(wc -l <"$WORK/published-$name.txt") attempts); settling (up to $settle_max s)"
  settle "$name" "$settle_max"
  ensure_workers_ready 15 "after the fault and the settle period"
  local dlq_now p
  dlq_now=$(dlq_count) || {
    problem "harness: could not count the dead letters with rabbitmqctl"
    dlq_now=$DLQ_BEFORE
  }
  local args=(--name "$name" --title "$title" --prefix "$name-"
    --published "$WORK/published-$name.txt" --fault-end "$FAULT_END"
    --dlq-delta "$((dlq_now - DLQ_BEFORE))" --dups-allowed "$dups_allowed"
    --record "$WORK/scenarios.jsonl")
  DLQ_BEFORE=$dlq_now
  for p in "${PROBLEMS[@]}"; do args+=(--problem "$p"); done
  # With pipefail, rc is analyze.py's: 1 when the scenario failed.
  analyze scenario "${args[@]}" | sed 's/^/faults: /' || rc=$?
  if ((rc != 0)); then
    FAILED_SCENARIOS+=("$name")
    for ((n = first_new; n < NEXT_WORKER; n++)); do involved+=("$n"); done
    for n in "${involved[@]}"; do show_worker_log "$n"; done
  fi
}

fault_kill() {
  local n
  n=$(oldest_worker)
  log "SIGKILL worker $n (pid ${WPID[$n]}) and start another"
  kill -KILL "${WPID[$n]}"
  wait "${WPID[$n]}" 2>/dev/null || true
  unset "WPID[$n]"
  FAULT_END=$(now)
  start_worker
}

# The workers' connections on our node: "<pid>" lines (each worker names its connections
# "hookrelay worker <prefix> (...)" in its client properties).
worker_connections() {
  on_node timeout 30 rabbitmqctl -n "$NODE" -q list_connections --no-table-headers pid client_properties |
    { grep -F "hookrelay worker $PREFIX (" || true; } | cut -f1
}
# none_open PID...: true when none of these connections is open any more (the workers reconnect
# at once, under the same names, so only the connections' pids tell old from new).
none_open() {
  local open pid
  open=$(worker_connections) || return 1
  for pid in "$@"; do
    [[ $'\n'$open$'\n' != *$'\n'$pid$'\n'* ]] || return 1
  done
}

fault_close_connections() {
  local pids pid closed=0
  pids=$(worker_connections) || problem "harness: could not list the connections with rabbitmqctl"
  for pid in $pids; do
    # A worker may close its other connection itself once one dies: that one is gone already.
    on_node timeout 30 rabbitmqctl -n "$NODE" -q close_connection "$pid" \
      "scripts/faults.sh: force-closed on purpose" >/dev/null 2>&1 || true
    closed=$((closed + 1))
  done
  FAULT_END=$(now)
  # shellcheck disable=SC2086 # one pid per word, on purpose
  wait_until 10 none_open $pids ||
    problem "harness: worker connections still open 10 s after closing them"
  log "force-closed $closed worker connections"
  ((closed >= 2 * ${#WPID[@]})) ||
    problem "expected to close $((2 * ${#WPID[@]})) worker connections, closed $closed"
}

fault_restart_rabbit() {
  log "stopping RabbitMQ"
  rabbit_stop
  log "RabbitMQ stopped"
  probe_not_ready "RabbitMQ is down"
  log "starting RabbitMQ again"
  rabbit_start
  FAULT_END=$(now)
  log "RabbitMQ back (pid $(rabbit_node_pid "$NODE"))"
}

# Every registered webhook can be read back (the Redis scenario checks its data survived).
webhooks_intact() {
  local _n _path _account id _port
  while read -r _n _path _account id _port; do
    timeout 20 "$BIN" webhooks show "$id" >/dev/null 2>>"$LOGS/cli.log" || return 1
  done <"$WORK/webhooks.txt"
}

fault_redis_down() {
  local down_at
  log "Redis: SHUTDOWN SAVE, down for 10 s (its data is saved and loaded back on start)"
  timeout 10 redis-cli -p "$REDIS_PORT" shutdown save >/dev/null 2>&1 || true
  down_at=$SECONDS
  wait_until 10 redis_down || problem "harness: Redis still answering after SHUTDOWN"
  sleep 5
  probe_not_ready "Redis is down"
  sleep "$((10 - (SECONDS - down_at) > 0 ? 10 - (SECONDS - down_at) : 0))"
  redis_start
  FAULT_END=$(now)
  if webhooks_intact; then
    log "Redis back, with all $(wc -l <"$WORK/webhooks.txt") webhooks"
  else
    problem "harness: Redis came back without the webhooks (see $LOGS/cli.log)"
  fi
}

# --- the store (g, h, i) -------------------------------------------------------------------------

rcli() { timeout 20 redis-cli -p "$REDIS_PORT" "$@"; }

# has_import: the binary has `webhooks export` and `webhooks import`.
has_import() { "$BIN" webhooks import --help >/dev/null 2>&1; }

# store_backup NAME: a backup of the store as it is now (see the header for which kind).
store_backup() {
  if has_import; then
    timeout 60 "$BIN" webhooks export --output "$WORK/backup-$1.jsonl" 2>>"$LOGS/cli.log" ||
      die "webhooks export failed; see $LOGS/cli.log"
    log "backup: webhooks export -> $(wc -l <"$WORK/backup-$1.jsonl") webhooks"
  elif [[ $1 == keys ]]; then
    rcli -n 1 flushdb >/dev/null
    rcli --scan --pattern "$PREFIX:*" | while read -r key; do
      rcli copy "$key" "$key" db 1 replace >/dev/null
    done
    log "backup: $(rcli -n 1 dbsize) keys of $PREFIX copied to database 1 (no webhooks export in this build)"
  else
    rcli --rdb "$WORK/backup-$1.rdb" >/dev/null 2>&1 || die "redis-cli --rdb failed"
    log "backup: RDB snapshot of Redis, $(stat -c %s "$WORK/backup-$1.rdb") bytes (no webhooks export in this build)"
  fi
}

# store_restore NAME: puts the backup NAME back.
store_restore() {
  if has_import; then
    timeout 120 "$BIN" webhooks import --init-store "$WORK/backup-$1.jsonl" >>"$LOGS/cli.log" 2>&1 ||
      die "webhooks import failed; see $LOGS/cli.log"
    log "restored: webhooks import --init-store"
  elif [[ $1 == keys ]]; then
    # The marker last: workers resume as soon as they see it, and an account not yet restored
    # would then read as one without webhooks.
    rcli -n 1 --scan --pattern "$PREFIX:*" | { grep -vx "$PREFIX:store" || true; } | while read -r key; do
      rcli -n 1 copy "$key" "$key" db 0 replace >/dev/null
    done
    rcli -n 1 copy "$PREFIX:store" "$PREFIX:store" db 0 replace >/dev/null
    log "restored: the keys copied back from database 1, the marker last"
  else
    rcli shutdown nosave >/dev/null 2>&1 || true
    wait_until 10 redis_down || die "Redis still answering after SHUTDOWN NOSAVE"
    cp "$WORK/backup-$1.rdb" "$WORK/redis/dump.rdb"
    redis_start
    log "restored: Redis restarted on the RDB snapshot"
  fi
}

# store_ok_everywhere VALUE: every worker's hookrelay_store_ok is VALUE.
store_ok_everywhere() {
  local n addr
  for n in "${!WPID[@]}"; do
    addr=$(worker_ops_addr "$n")
    curl -fsS -m 2 "http://$addr/metrics" 2>/dev/null | grep -qx "hookrelay_store_ok $1" || return 1
  done
}

# paused WHAT: every worker paused (not ready, store_ok 0) while WHAT.
check_paused() {
  if wait_until 20 store_ok_everywhere 0; then
    log "every worker reports hookrelay_store_ok 0 while $1"
  else
    problem "not every worker reported hookrelay_store_ok 0 within 20 s while $1"
  fi
  probe_not_ready "$1"
  if grep -aq "marker is missing" "$LOGS"/worker-*.log; then
    log "workers logged the missing store: $(grep -ah "no hookrelay store at" "$LOGS"/worker-*.log | tail -n 1 | grep -o 'no hookrelay store at [^,]*' || true)"
  else
    problem "no worker logged the missing store"
  fi
}

fault_store_deleted() {
  store_backup keys
  log "deleting every key of $PREFIX (the webhooks, the index, the marker)"
  rcli --scan --pattern "$PREFIX:*" | xargs -r -n 100 redis-cli -p "$REDIS_PORT" del >/dev/null
  sleep 8
  check_paused "the store's keys are deleted"
  store_restore keys
  FAULT_END=$(now)
  wait_until 20 store_ok_everywhere 1 || problem "workers did not report hookrelay_store_ok 1 within 20 s of the restore"
}

fault_redis_empty() {
  store_backup rdb
  log "Redis: SHUTDOWN NOSAVE and start again with no data (a restart without persistence)"
  rcli shutdown nosave >/dev/null 2>&1 || true
  wait_until 10 redis_down || problem "harness: Redis still answering after SHUTDOWN"
  rm -f "$WORK/redis/dump.rdb"
  redis_start
  [[ $(rcli dbsize) == 0 ]] || problem "harness: Redis restarted with data"
  sleep 8
  check_paused "Redis came back empty"
  store_restore rdb
  FAULT_END=$(now)
  wait_until 30 store_ok_everywhere 1 || problem "workers did not report hookrelay_store_ok 1 within 30 s of the restore"
  webhooks_intact || problem "the webhooks are not all there after the restore"
}

fault_wrong_database() {
  local rc=0 err
  log "starting a worker with redis.url on database 7 (nothing of hookrelay's there)"
  err=$(HOOKRELAY__REDIS__URL="redis://127.0.0.1:$REDIS_PORT/7" timeout 60 "$BIN" worker 2>&1 >/dev/null) || rc=$?
  FAULT_END=$(now)
  if ((rc == 78)) && [[ $err == *"database 7"* && $err == *""$PREFIX""* ]]; then
    log "the worker refused to start (exit 78): $(grep -o 'no hookrelay store at [^(]*' <<<"$err" | head -n 1)"
  else
    problem "the worker on the wrong database exited $rc, not 78 with the address, database and prefix: $err"
  fi
}

fault_receiver_down() {
  log "receivers down for 20 s"
  receivers_stop
  sleep 20
  receivers_start
  FAULT_END=$(now)
  log "receivers back"
}

fault_sigterm() {
  local n pid rc=0 deadline
  n=$(oldest_worker)
  pid=${WPID[$n]}
  log "SIGTERM worker $n (pid $pid) and start another"
  kill -TERM "$pid"
  unset "WPID[$n]"
  start_worker
  FAULT_END=$(now)
  deadline=$((SECONDS + SHUTDOWN_GRACE_S + 15))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if alive "$pid"; then
    problem "worker $n still running $((SHUTDOWN_GRACE_S + 15)) s after SIGTERM (shutdown_grace ${SHUTDOWN_GRACE_S}s); killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  if ((rc != 0)); then
    problem "worker $n exited with code $rc after SIGTERM, not 0"
  else
    log "worker $n exited 0 after SIGTERM"
  fi
}

# --- main ---------------------------------------------------------------------------------------

ensure_tools() {
  if ! have_all rabbitmq-server rabbitmqctl rabbitmq-diagnostics redis-server redis-cli; then
    log "RabbitMQ or Redis is not installed: installing them with scripts/services.sh"
    "$ROOT/scripts/services.sh" 8<&- || die "scripts/services.sh failed"
  fi
  if ! have_all python3 curl flock; then
    log "installing python3, curl and util-linux from Debian's packages"
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update >&2 8<&-
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
      --no-install-recommends python3 curl util-linux >&2 8<&-
  fi
  have_all python3 curl flock || die "python3, curl or flock is still missing"
  id rabbitmq >/dev/null 2>&1 || die "no rabbitmq user: is Debian's rabbitmq-server installed?"
}

# A few events through the whole path before any fault: a harness or set-up problem shows up
# here, not as a failed scenario.
warm_up() {
  local i
  : >"$WORK/published-w.txt"
  for i in 1 2 3 4 5 6; do
    local t0 rc=0
    t0=$(now)
    timeout 20 "$BIN" publish --type payment.card.success --account "${ACCOUNTS[i % 3]}" \
      --id "w-$i" >/dev/null 2>>"$LOGS/publish.log" || rc=$?
    ((rc == 0)) || die "warm-up publish failed (exit $rc); see $LOGS/publish.log"
    printf 'w-%s %s %s %s 0\n' "$i" "${ACCOUNTS[i % 3]}" "$t0" "$(now)" >>"$WORK/published-w.txt"
  done
  local deadline=$((SECONDS + 30)) expected missing quiet
  while true; do
    counts w- "$WORK/published-w.txt"
    ((missing == 0)) && break
    if ((SECONDS >= deadline)); then
      for i in "${!WPID[@]}"; do show_worker_log "$i"; done
      die "warm-up: $missing of $expected deliveries did not arrive within 30 s"
    fi
    sleep 0.5
  done
  log "warm-up: $expected deliveries arrived (quiet ${quiet}s)"
}

# open_run NAME: the run lock, the tools, the binary, a work directory, the private RabbitMQ node
# and Redis, and hookrelay's environment pointing at them.
open_run() {
  take_run_lock "$LOCK_FILE"
  ensure_tools
  hookrelay_bin release
  WORK=$(mktemp -d "/tmp/hookrelay-$1.XXXXXX")
  # The rabbitmq user must reach its directory inside.
  chmod 755 "$WORK"
  LOGS="$WORK/logs"
  mkdir -p "$LOGS"
  : >"$WORK/scenarios.jsonl"
  log "working in $WORK"
  cd "$WORK"
  setup_rabbit
  setup_redis
  hookrelay_env
}

# start_run [SETUP...]: the topology, the webhooks and their receivers, SETUP (what a script adds
# before the workers start), the workers ready, the warm-up, and the dead letters counted.
start_run() {
  timeout 60 "$BIN" topology declare >>"$LOGS/cli.log" 2>&1 || die "topology declare failed; see $LOGS/cli.log"
  register_webhooks
  receivers_start
  "$@"
  local i
  for ((i = 0; i < WORKERS; i++)); do start_worker; done
  for i in "${!WPID[@]}"; do
    wait_until 60 worker_ready "$i" || {
      show_worker_log "$i"
      die "worker $i did not become ready within 60 s"
    }
  done
  warm_up
  DLQ_BEFORE=$(dlq_count) || die "cannot count the dead letters with rabbitmqctl"
}

# list_dead_letters: both dead-letter queues as JSON in $WORK/dlq-*.json, read with `dlq list`,
# which neither loses nor reorders a letter.
list_dead_letters() {
  local queue
  for queue in deliveries events; do
    timeout 60 "$BIN" dlq list --queue "$queue" --json >"$WORK/dlq-$queue.json" 2>>"$LOGS/cli.log" ||
      warn "could not list the $queue dead letters; counting them with rabbitmqctl only"
  done
}

main() {
  open_run faults
  start_run

  [[ $SCENARIOS != *a* ]] || run_scenario a "SIGKILL a worker, start another" 1 30 fault_kill
  [[ $SCENARIOS != *b* ]] || run_scenario b "force-close the workers' broker connections" 1 30 fault_close_connections
  [[ $SCENARIOS != *c* ]] || run_scenario c "restart RabbitMQ (stop + start)" 1 45 fault_restart_rabbit
  [[ $SCENARIOS != *d* ]] || run_scenario d "Redis down 10 s (shutdown + start)" 0 45 fault_redis_down
  [[ $SCENARIOS != *e* ]] || run_scenario e "receiver down 20 s" 0 50 fault_receiver_down
  [[ $SCENARIOS != *f* ]] || run_scenario f "SIGTERM a worker, start another" 0 30 fault_sigterm
  if [[ $SCENARIOS == *[gh]* ]]; then
    start_worker
    log "a third worker for the store scenarios"
  fi
  [[ $SCENARIOS != *g* ]] || run_scenario g "store keys deleted, then restored (3 workers)" 0 60 fault_store_deleted
  [[ $SCENARIOS != *h* ]] || run_scenario h "Redis restarted empty, then restored" 0 60 fault_redis_empty
  [[ $SCENARIOS != *i* ]] || run_scenario i "a worker on the wrong redis.url database" 0 30 fault_wrong_database

  log "=== results (recounted now; dead letters attributed by event id)"
  list_dead_letters
  local rc=0
  analyze table --scenarios "$WORK/scenarios.jsonl" --dlq "$WORK/dlq-deliveries.json" \
    --dlq "$WORK/dlq-events.json" || rc=$?
  ((rc == 0)) || FAILURES+=("scenario(s) ${FAILED_SCENARIOS[*]}")
  finish_run "all scenarios passed"
}

# Sourced (scripts/backpressure.sh), this file only defines what it has; run, it runs.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
