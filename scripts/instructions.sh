#!/usr/bin/env bash
# Instructions per delivery: the worker's cost measured in a unit that does not move with the
# machine (wall-clock rates on a shared 2-core box halve from one day to the next; instruction
# counts do not).
#
# A release worker runs under `valgrind --tool=callgrind` with a small prefetch, on a prefix of
# its own; `hookrelay bench --attach` feeds it (100 accounts x 1 webhook, 100-byte data):
#   1. a warm-up bench run (WARM_EVENTS events: 100 + WARM_EVENTS + WARM_EVENTS/2 deliveries,
#      which fills the cache and opens the connections), then `callgrind_control -d` (a dump
#      resets the counters);
#   2. a measured bench run of exactly MEASURED deliveries (2,000: its warm-up of one event per
#      account, EVENTS at full speed, EVENTS/2 in its latency run), then a second dump.
# It prints the second dump's instructions divided by MEASURED and the top 15 functions by
# inclusive cost (callgrind_annotate). The measured window also holds what a bench --attach run
# always does around its deliveries: creating its 100 webhooks (the worker reloads those
# accounts once) and deleting them at the end.
#
# Usage: cargo build --release && scripts/instructions.sh
#   HOOKRELAY_BIN   the binary whose worker is measured (default target/release/hookrelay)
#   BENCH_BIN       the binary that runs the bench (default: HOOKRELAY_BIN)
#   PREFETCH        amqp.prefetch of the worker under valgrind (default 64)
#   OUT             directory for the two callgrind dumps and the logs (default: a temporary
#                   one, printed and kept)
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=instructions.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
have_all valgrind callgrind_control callgrind_annotate redis-cli rabbitmqctl ||
  die "valgrind (callgrind_control, callgrind_annotate), redis-cli and rabbitmqctl are needed"

BIN=${HOOKRELAY_BIN:-target/release/hookrelay}
BENCH_BIN=${BENCH_BIN:-$BIN}
PREFETCH=${PREFETCH:-64}
ACCOUNTS=100
MEASURED=2000
WARM_EVENTS=300
[[ -x $BIN && -x $BENCH_BIN ]] || die "no binary at $BIN (cargo build --release)"
OUT=${OUT:-$(mktemp -d /tmp/hookrelay-instructions.XXXXXX)}
mkdir -p "$OUT"
PREFIX="hri-$$-$RANDOM"
export HOOKRELAY__AMQP__PREFIX=$PREFIX HOOKRELAY__REDIS__PREFIX=$PREFIX
export HOOKRELAY__OPS__LISTEN=127.0.0.1:0 HOOKRELAY__DELIVERY__ALLOW_HTTP=true
export HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS=true HOOKRELAY__LOG__FORMAT=text
WORKER=

cleanup() {
  if [[ -n $WORKER ]]; then
    kill -TERM "$WORKER" 2>/dev/null || true
    wait "$WORKER" 2>/dev/null || true
  fi
  if [[ -s $OUT/topology.json ]]; then
    local queue
    for queue in $(grep -o '"name": *"[^"]*"' "$OUT/topology.json" | sed 's/.*"\([^"]*\)"$/\1/'); do
      [[ $queue == "$PREFIX".* ]] || continue
      as_rabbit rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 ||
        as_rabbit rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$queue\">>), false, <<\"instructions.sh\">>)." >/dev/null 2>&1 || true
    done
  fi
  redis-cli --scan --pattern "$PREFIX*" | xargs -r redis-cli del >/dev/null
}
trap cleanup EXIT

# deliveries_of EVENTS: what one `bench --attach` run delivers (steady scenario: a warm-up of
# one event per account, EVENTS at full speed, then EVENTS/2 in the latency run).
deliveries_of() { echo $((ACCOUNTS + $1 + $1 / 2)); }

# events_for DELIVERIES: the EVENTS that make exactly DELIVERIES.
events_for() {
  local events=$(((($1 - ACCOUNTS) * 2 + 2) / 3))
  while (($(deliveries_of "$events") < $1)); do events=$((events + 1)); done
  (($(deliveries_of "$events") == $1)) || die "no event count gives exactly $1 deliveries"
  echo "$events"
}

bench() {
  # The latency run is paced at a rate far above what a worker under valgrind delivers, so it
  # runs at full speed too: the window holds deliveries, not idle waiting.
  "$BENCH_BIN" bench --attach --skip-ceiling --accounts "$ACCOUNTS" --payload-bytes 100 \
    --events "$1" --rate 100000 >>"$OUT/bench.log" 2>&1 || die "bench failed (see $OUT/bench.log)"
}

# top_inclusive DUMP: the 15 dearest functions by inclusive cost, as "percent  function", leaving
# out the frames every task runs under (process start, main, the tokio scheduler and its task
# harness: 90 % and more of any profile, saying nothing about the hot path).
top_inclusive() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk '/file:function/ {table = 1; getline; next} table && NF' |
    grep -Ev 'libc-start|libc_start_call_main|\(below main\)|ld-linux|lang_start|rust_begin_short_backtrace|hookrelay::main|cli::main|run_main|\?\?\?:main |block_on|enter_runtime|LocalKey<T>::with|run_task|task::raw::poll|Harness<T,S>::poll|Core<T,S>::poll' |
    sed -E 's#^ *[0-9,]+ \( *([0-9.]+%)\) +#\1  #; s#/root/\.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##; s# \[[^]]*\]$##' |
    awk 'NR <= 15' # not head: head's early exit would fail the pipeline (SIGPIPE, status 141)
}

"$BIN" topology declare --json >"$OUT/topology.json"
"$BIN" store init >/dev/null

HOOKRELAY__AMQP__PREFETCH=$PREFETCH RUST_LOG=warn,hookrelay::worker=info \
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.%p" \
  "$BIN" worker >"$OUT/worker.log" 2>&1 &
WORKER=$!
wait_until 120 grep -q "worker consuming" "$OUT/worker.log" ||
  die "the worker under valgrind did not start (see $OUT/worker.log)"

log "warm-up: $(deliveries_of $WARM_EVENTS) deliveries"
bench "$WARM_EVENTS"
callgrind_control -d "$WORKER" >/dev/null
measured_events=$(events_for $MEASURED)
log "measured: $MEASURED deliveries (bench --events $measured_events)"
bench "$measured_events"
callgrind_control -d "$WORKER" >/dev/null

# Dumps are numbered in order: .1 after the warm-up, .2 after the measured run.
wait_until 30 test -s "$OUT/callgrind.$WORKER.2" || die "no second dump in $OUT"
second="$OUT/callgrind.$WORKER.2"
total=$(grep -m1 '^summary:' "$second" | awk '{print $2}')
[[ -n $total ]] || total=$(grep -m1 '^totals:' "$second" | awk '{print $2}')
log "instructions in the measured window: $total"
log "instructions per delivery: $((total / MEASURED))"
log "top 15 functions by inclusive cost, below the runtime's own frames ($second):"
top_inclusive "$second"
log "dumps and logs kept in $OUT"
