#!/usr/bin/env bash
# The proof of DESIGN §7's back-pressure and heartbeat (issue 27), on faults.sh's private RabbitMQ
# node and Redis (sourced: same node, ports, receivers, publishers, counting and run lock; the
# RabbitMQ on 5672 and the Redis on 6379 are never touched). The workers reach both through a
# TCP proxy this script controls (scripts/faults/netfaults.py), so that (l) can cut them off.
#
#   j) memory alarm (set_vm_memory_high_watermark on the private node) for MEMORY_ALARM_S
#   k) disk alarm (set_disk_free_limit far above the free space) for DISK_ALARM_S
#   l) a PARTITION_S partition: the proxy stops forwarding without closing anything, then heals
#
# During j and k a webhook of its own account answers 500 to everything, so each of its failed
# attempts must publish a retry while the broker blocks publishers; the healthy webhooks get the
# usual steady stream. Exact counts, on top of faults.sh's (lost 0, no duplicates in j and k):
#   - 0 dead letters with reason delivery_limit, and no dead letter other than the failing
#     webhook's `exhausted` ones (one per failing event);
#   - the failing webhook got exactly ATTEMPTS requests per event: no retry existed twice;
#   - hookrelay_broker_blocked went to 1 with a WARN line, and `hookrelay publish` said "the
#     broker is blocking publishers" (exit 75), never "retrying on the next node";
#   - l: /readyz 503 and hookrelay_broker_connected / hookrelay_redis_ok 0 within two heartbeats,
#     the first delivery of an event published after the heal within RESUME_MAX_S.
#
# Usage: scripts/backpressure.sh   (root, or a user with sudo, like faults.sh)
# Environment: FAULTS_KEEP=1 keeps the temporary directory; BACKPRESSURE_SCENARIOS=jl runs only
# those; BACKPRESSURE_ALARM_S sets both alarms' length; HOOKRELAY_BIN=path (or BACKPRESSURE_BIN)
# uses that binary instead of building a release one.
set -euo pipefail
# shellcheck source=scripts/faults.sh
source "$(dirname "${BASH_SOURCE[0]}")/faults.sh"
SCRIPT=backpressure
HOOKRELAY_BIN=${HOOKRELAY_BIN:-${BACKPRESSURE_BIN:-}}

readonly NETFAULTS="$ROOT/scripts/faults/netfaults.py"
readonly BP_SCENARIOS=${BACKPRESSURE_SCENARIOS:-jkl}
# Several publish timeouts long: before issue 27, each one handed a message back.
readonly PUBLISH_TIMEOUT_S=2
readonly MEMORY_ALARM_S=${BACKPRESSURE_ALARM_S:-60}
readonly DISK_ALARM_S=${BACKPRESSURE_ALARM_S:-45}
readonly HEARTBEAT_S=5
readonly PARTITION_S=30
readonly RESUME_MAX_S=5
# The failing webhook: its events, and its short schedule (4 attempts over ~7 s) so that they
# are all dead-lettered as exhausted soon after an alarm clears.
readonly FAIL_ACCOUNT=acct-fail
readonly FAIL_EVENTS=30
readonly FAIL_SCHEDULE=1s,2s,4s
readonly ATTEMPTS=4

PROXY_PID=""
FAULT_END_L=0
FAIL_PID=""
FAIL_ID=""
PROXY_AMQP_PORT=""
PROXY_REDIS_PORT=""

bp_cleanup() {
  local rc=$?
  set +e
  [[ -z $PROXY_PID ]] || kill "$PROXY_PID" 2>/dev/null || true
  [[ -z $FAIL_PID ]] || kill "$FAIL_PID" 2>/dev/null || true
  if [[ -n ${RABBIT_NODE_DIR[$NODE]:-} ]] && rabbit_ping; then
    # A run stopped mid-alarm: the node is stopped by cleanup anyway; clear it first all the same.
    on_node timeout 20 rabbitmqctl -n "$NODE" -q set_vm_memory_high_watermark 0.4 >/dev/null 2>&1 || true
    on_node timeout 20 rabbitmqctl -n "$NODE" -q set_disk_free_limit 50MB >/dev/null 2>&1 || true
  fi
  (exit "$rc")
  cleanup
}
trap bp_cleanup EXIT

# Workers go through the proxy; commands (publish, dlq list) reach the node directly.
start_worker() {
  local n=$NEXT_WORKER
  NEXT_WORKER=$((n + 1))
  HOOKRELAY__AMQP__URL="amqp://guest:guest@127.0.0.1:$PROXY_AMQP_PORT/%2f" \
    HOOKRELAY__REDIS__URL="redis://127.0.0.1:$PROXY_REDIS_PORT/0" \
    "$BIN" worker >"$LOGS/worker-$n.log" 2>&1 8<&- &
  WPID[$n]=$!
  log "worker $n started (pid ${WPID[$n]}), through the proxy"
}

start_helpers() {
  free_port PROXY_AMQP_PORT
  free_port PROXY_REDIS_PORT
  python3 "$NETFAULTS" proxy "$PROXY_AMQP_PORT:$AMQP_PORT" "$PROXY_REDIS_PORT:$REDIS_PORT" \
    2>>"$LOGS/proxy.log" 8<&- &
  PROXY_PID=$!
  wait_until 15 tcp_open 127.0.0.1 "$PROXY_AMQP_PORT" || die "the proxy did not start; see $LOGS/proxy.log"
  local fail_port url
  free_port fail_port
  python3 "$NETFAULTS" failing "$fail_port" "$WORK/failing.log" 2>>"$LOGS/failing.log" 8<&- &
  FAIL_PID=$!
  wait_until 15 tcp_open 127.0.0.1 "$fail_port" || die "the failing receiver did not start"
  url="http://127.0.0.1:$fail_port/$FAIL_ACCOUNT/hook"
  timeout 30 "$BIN" store init >>"$LOGS/cli.log" 2>&1 || die "store init failed; see $LOGS/cli.log"
  timeout 30 "$BIN" webhooks add --account "$FAIL_ACCOUNT" --url "$url" --events '*' --json \
    >"$WORK/webhook-fail.json" 2>>"$LOGS/cli.log" || die "webhooks add failed; see $LOGS/cli.log"
  FAIL_ID=$(json_field id "$WORK/webhook-fail.json")
  log "proxy: amqp :$PROXY_AMQP_PORT -> :$AMQP_PORT, redis :$PROXY_REDIS_PORT -> :$REDIS_PORT;" \
    "failing webhook $FAIL_ID -> :$fail_port (500)"
}

# worker_metric N NAME: the value of an unlabelled metric on worker N's /metrics.
worker_metric() {
  local addr
  addr=$(worker_ops_addr "$1")
  curl -fsS -m 2 "http://$addr/metrics" 2>/dev/null | awk -v m="$2" '$1 == m { print $2 }'
}

any_worker_blocked() {
  local n
  for n in "${!WPID[@]}"; do
    [[ $(worker_metric "$n" hookrelay_broker_blocked) == 1 ]] && return 0
  done
  return 1
}

# Dead letters that count against a scenario: all but the failing webhook's exhausted ones.
dlq_count() {
  local queue
  for queue in deliveries events; do
    timeout 60 "$BIN" dlq list --queue "$queue" --json >"$WORK/dlq-now-$queue.json" 2>>"$LOGS/cli.log" ||
      return 1
  done
  python3 - "$FAIL_ID" "$WORK"/dlq-now-{deliveries,events}.json <<'EOF'
import json, sys
letters = [l for path in sys.argv[2:] for l in json.load(open(path))]
print(sum(1 for l in letters if not (l.get("webhook_id") == sys.argv[1] and l.get("reason") == "exhausted")))
EOF
}

# Eight at a time, so that all of them are between attempts when the alarm starts.
publish_failing() {
  local i
  for ((i = 1; i <= FAIL_EVENTS; i++)); do printf '%s-fail-%03d\n' "$1" "$i"; done |
    xargs -P 8 -I ID timeout 20 "$BIN" publish --type payment.card.success --account "$FAIL_ACCOUNT" \
      --id ID >/dev/null 2>>"$LOGS/publish.log" ||
    die "publishing the failing webhook's events failed; see $LOGS/publish.log"
}

# During an alarm: the gauge, the WARN line, and what `hookrelay publish` says.
check_blocked_state() {
  wait_until 30 any_worker_blocked ||
    problem "no worker showed hookrelay_broker_blocked 1 within 30 s of the alarm"
  grep -aqs 'the broker is blocking publishers' "$LOGS"/worker-*.log ||
    problem "no worker logged the blocked state at WARN"
  local out rc=0
  out=$(timeout 60 "$BIN" publish --type payment.card.success --account acct-1 --id "probe-$1" 2>&1) || rc=$?
  if ((rc != 75)) || [[ $out != *"the broker is blocking publishers (memory or disk alarm)"* ]] ||
    [[ $out == *"next node"* ]]; then
    problem "hookrelay publish during the alarm: exit $rc, said: ${out//$'\n'/ | }"
  else
    log "hookrelay publish during the alarm: exit 75, \"${out##*: the broker}\"" | cut -c1-200
  fi
}

# alarm_fault NAME SECONDS RAISE... -- CLEAR...
alarm_fault() {
  local name=$1 seconds=$2 raise=() clear=() t0
  shift 2
  while [[ $1 != -- ]]; do raise+=("$1"); shift; done
  shift
  clear=("$@")
  publish_failing "$name"
  sleep 2 # their first attempts fail and retries flow
  log "raising the alarm for $seconds s: rabbitmqctl ${raise[*]}"
  t0=$SECONDS
  on_node timeout 30 rabbitmqctl -n "$NODE" -q "${raise[@]}" >/dev/null
  check_blocked_state "$name"
  log "queues (ready+unacked) during the alarm: $(rabbit_depths 2>/dev/null || echo unknown)"
  sleep "$((seconds - (SECONDS - t0) > 0 ? seconds - (SECONDS - t0) : 0))"
  on_node timeout 30 rabbitmqctl -n "$NODE" -q "${clear[@]}" >/dev/null
  FAULT_END=$(now)
  log "alarm cleared after $((SECONDS - t0)) s: rabbitmqctl ${clear[*]}"
}

fault_memory_alarm() {
  alarm_fault j "$MEMORY_ALARM_S" set_vm_memory_high_watermark 0.0001 -- set_vm_memory_high_watermark 0.4
}

fault_disk_alarm() {
  # The node checks free disk space every few seconds; 1 EB (in bytes) is more than any disk.
  alarm_fault k "$DISK_ALARM_S" set_disk_free_limit 1000000000000000000 -- set_disk_free_limit 50MB
}

# seconds_until_all T0 CMD...: prints how long after T0 (epoch seconds) CMD held for every
# worker, or "never" within 40 s.
seconds_until_all() {
  local t0=$1 n pending
  shift
  while true; do
    pending=0
    for n in "${!WPID[@]}"; do "$@" "$n" || pending=1; done
    if ((pending == 0)); then
      python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(now)"
      return 0
    fi
    if python3 -c "import sys; sys.exit(float(sys.argv[2]) - float(sys.argv[1]) < 40)" "$t0" "$(now)"; then
      echo never
      return 0
    fi
    sleep 0.2
  done
}
not_ready() { ! worker_ready "$1"; }
broker_down() { [[ $(worker_metric "$1" hookrelay_broker_connected) == 0 ]]; }
redis_down_seen() { [[ $(worker_metric "$1" hookrelay_redis_ok) == 0 ]]; }

within_two_heartbeats() {
  [[ $2 != never ]] && python3 -c "import sys; sys.exit(float(sys.argv[1]) > 2 * $HEARTBEAT_S)" "$2" ||
    problem "$1 after ${2} s, not within two heartbeats ($((2 * HEARTBEAT_S)) s)"
}

fault_partition() {
  local t0 cut ready broker redis
  log "partition: the proxy stops forwarding for $PARTITION_S s (sockets stay open)"
  t0=$SECONDS
  cut=$(now)
  kill -USR1 "$PROXY_PID"
  ready=$(seconds_until_all "$cut" not_ready)
  broker=$(seconds_until_all "$cut" broker_down)
  redis=$(seconds_until_all "$cut" redis_down_seen)
  log "partition: every worker's /readyz 503 after $ready s, hookrelay_broker_connected 0 by $broker s, hookrelay_redis_ok 0 by $redis s"
  within_two_heartbeats "/readyz 503" "$ready"
  within_two_heartbeats "hookrelay_broker_connected 0" "$broker"
  within_two_heartbeats "hookrelay_redis_ok 0" "$redis"
  sleep "$((PARTITION_S - (SECONDS - t0) > 0 ? PARTITION_S - (SECONDS - t0) : 0))"
  kill -USR2 "$PROXY_PID"
  FAULT_END=$(now)
  FAULT_END_L=$FAULT_END
  log "partition healed after $((SECONDS - t0)) s"
}

# The failing webhook: requests per event (exactly ATTEMPTS each) and its dead letters.
check_failing() {
  local out
  timeout 60 "$BIN" dlq list --queue deliveries --json >"$WORK/dlq-final-deliveries.json" 2>>"$LOGS/cli.log" ||
    problem "harness: dlq list failed"
  out=$(python3 - "$WORK/failing.log" "$WORK/dlq-final-deliveries.json" "$FAIL_ID" "$ATTEMPTS" "$BP_SCENARIOS" <<'EOF'
import collections, json, sys
log, dlq, fail_id, attempts, scenarios = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
requests = collections.Counter(line.split()[0] for line in open(log) if line.strip())
letters = json.load(open(dlq))
reasons = collections.Counter(l.get("reason") for l in letters)
mine = collections.Counter(l.get("event_id") for l in letters if l.get("webhook_id") == fail_id)
for s in "jk":
    if s not in scenarios:
        continue
    events = [e for e in requests if e.startswith(f"{s}-fail-")]
    per = collections.Counter(requests[e] for e in events)
    dead = collections.Counter(mine[e] for e in events)
    print(f"{s}: failing events {len(events)}; requests per event {dict(sorted(per.items()))} "
          f"(expected {{{attempts}: N}}); dead letters per event {dict(sorted(dead.items()))} (expected {{1: N}})")
    if len(events) != 30 or set(per) != {attempts} or set(dead) != {1}:
        print(f"PROBLEM {s}: a failing event was attempted or dead-lettered other than exactly once per attempt")
print("dead letters by reason: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none"))
if reasons.get("delivery_limit"):
    print(f"PROBLEM: {reasons['delivery_limit']} dead letters with reason delivery_limit")
EOF
  ) || problem "harness: counting the failing webhook failed"
  while IFS= read -r line; do
    case $line in
      PROBLEM*) FAILED_SCENARIOS+=("failing-webhook") && log "$line" ;;
      *) log "$line" ;;
    esac
  done <<<"$out"
}

bp_main() {
  open_run backpressure
  export HOOKRELAY__DELIVERY__RETRY_SCHEDULE=$FAIL_SCHEDULE
  export HOOKRELAY__AMQP__PUBLISH_TIMEOUT="${PUBLISH_TIMEOUT_S}s"
  export HOOKRELAY__AMQP__HEARTBEAT="${HEARTBEAT_S}s"
  start_run start_helpers

  [[ $BP_SCENARIOS != *j* ]] || run_scenario j "memory alarm ${MEMORY_ALARM_S} s, a webhook failing" 0 90 fault_memory_alarm
  [[ $BP_SCENARIOS != *k* ]] || run_scenario k "disk alarm ${DISK_ALARM_S} s, a webhook failing" 0 90 fault_disk_alarm
  [[ $BP_SCENARIOS != *l* ]] || run_scenario l "partition ${PARTITION_S} s (proxy black hole)" 1 60 fault_partition

  log "=== results"
  [[ $BP_SCENARIOS != *[jk]* ]] || check_failing
  if [[ $BP_SCENARIOS == *l* ]]; then
    local resume
    # analyze.py's own count: from the heal to the first receipt of an event published after it.
    resume=$(python3 - "$ROOT/scripts/faults" "$WORK" "$FAULT_END_L" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import analyze
work = sys.argv[2]
s = analyze.stats(f"{work}/published-l.txt", f"{work}/webhooks.txt", work, float(sys.argv[3]), "l-")
print(s["recover_s"])
EOF
    ) || resume=None
    log "l: first delivery of an event published after the heal: $resume s after it (at most $RESUME_MAX_S)"
    python3 -c "import sys; sys.exit(not (sys.argv[1] != 'None' and float(sys.argv[1]) <= $RESUME_MAX_S))" "$resume" ||
      FAILED_SCENARIOS+=("l-resume")
  fi
  local rc=0
  list_dead_letters
  analyze table --scenarios "$WORK/scenarios.jsonl" --dlq "$WORK/dlq-events.json" || rc=$?
  ((rc == 0)) || FAILURES+=("the table")
  FAILURES+=("${FAILED_SCENARIOS[@]}")
  finish_run "all scenarios passed"
}

bp_main "$@"
