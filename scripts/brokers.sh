#!/usr/bin/env bash
# Production brokers, proven on this machine (issue 10, RabbitMQ half): hookrelay against
# RabbitMQ nodes of its own (own node names, ports and data directories under a temporary
# directory; the RabbitMQ on 5672 is never touched), with Redis on 6379 under a prefix of its own.
#
#   tls      one node with a plain and a TLS listener (mutual TLS: the broker requires a client
#            certificate), a CA and certificates made with openssl for the run. Checks: a worker
#            over amqps delivers; the broker lists its connections with ssl = true; a wrong CA,
#            a missing client certificate and amqps:// to the plain port are refused with a clear
#            error; a broker older than 3.10 would be refused (unit tests: broker::version).
#            Then `hookrelay bench` over plain and over TLS on the same node.
#   cluster  three nodes joined into a cluster; two workers with amqp.urls listing all three; a
#            steady stream of `hookrelay publish` (also through amqp.urls); the node leading the
#            events queue is stopped mid-stream and started again. Prints published, delivered,
#            lost (must be 0), duplicates and the recovery time.
#   partitions  after cluster, on its nodes: amqp.partitions = 3 refused without the
#            consistent-hash plugin (exit 78), then with it the three events leaders on three
#            nodes, two workers, a stream of publishes, the leader of events.0 stopped 8 s.
#            Prints confirmed, delivered, lost (must be 0) and duplicates (about 30 s).
#
# Usage: scripts/brokers.sh [tls] [cluster] [partitions]   (default: all; run as root, like faults.sh)
# Environment: BROKERS_KEEP=1 keeps the temporary directory (logs, certificates, receipts);
#              BROKERS_BENCH_PAIRS=N runs the plain/TLS bench pair N times (default 1), with
#              BROKERS_BENCH_EVENTS events each (default 3000);
#              BROKERS_BIN=path uses that hookrelay binary (e.g. a release build) instead of
#              building the debug one.
set -euo pipefail

SCRIPT=brokers
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/nodes.sh
source "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly LOCK_FILE=/tmp/hookrelay-brokers.lock
HOOKRELAY_BIN=${HOOKRELAY_BIN:-${BROKERS_BIN:-}}
PARTS=("$@")
[[ ${#PARTS[@]} -gt 0 ]] || PARTS=(tls cluster partitions)

T_START=$SECONDS
log() { printf 'brokers: [%3ds] %s\n' "$((SECONDS - T_START))" "$*"; }
now() { printf '%s' "$EPOCHREALTIME"; }

[[ $EUID -eq 0 ]] || die "run as root: Debian's RabbitMQ commands run as root or rabbitmq"

WORK=""
CHILDREN=()       # pids of our hookrelay processes
PREFIX=""

# node_setup NODE AMQP_PORT CONF: a node of the run's own in $WORK/NODE.
node_setup() { rabbit_node_setup "$1" "$WORK/$1" "$2" "$3"; }
node_up() { rabbit_node_start "$1" && rabbit_node_wait "$1" 150; }

# --- hookrelay ---------------------------------------------------------------------------------

# Only what is set here configures hookrelay: nothing from the caller's environment.
hookrelay_env() {
  clear_hookrelay_env
  PREFIX="hrt-brokers-$(openssl rand -hex 4)"
  export HOOKRELAY__AMQP__PREFIX=$PREFIX HOOKRELAY__REDIS__PREFIX=$PREFIX
  export HOOKRELAY__AMQP__RECONNECT_TIMEOUT=120s
  export HOOKRELAY__REDIS__URL=redis://127.0.0.1:6379/0
  export HOOKRELAY__DELIVERY__ALLOW_HTTP=true HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS=true
  export HOOKRELAY__DELIVERY__RETRY_SCHEDULE=1s,2s,4s,8s
  export HOOKRELAY__WORKER__SHUTDOWN_GRACE=5s
  export HOOKRELAY__OPS__LISTEN=127.0.0.1:0
}

# receiver_start NAME: a webhook for account acct-1 and `hookrelay listen` verifying it; each
# receipt is a line "<epoch seconds> <JSON>" in $WORK/NAME.receipts.
receiver_start() {
  local name=$1 port secret
  free_port port
  # Writes and workers refuse a store without its marker; init is idempotent.
  "$BIN" store init >>"$WORK/cli.log" 2>&1 || die "store init failed; see $WORK/cli.log"
  secret=$("$BIN" webhooks add --account acct-1 --url "http://127.0.0.1:$port/$name" \
    --events '*' --json 2>>"$WORK/cli.log" | python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])') ||
    die "webhooks add failed; see $WORK/cli.log"
  "$BIN" listen --listen "127.0.0.1:$port" --secret "$secret" --json 2>>"$WORK/listen.log" \
    > >(while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done \
      >"$WORK/$name.receipts") 8<&- &
  RECEIVER_PID=$!
  CHILDREN+=("$RECEIVER_PID")
  wait_until 15 tcp_open 127.0.0.1 "$port" || die "listen did not start"
}

# worker_start LOG [ENV=VALUE...]: starts a worker; returns once it consumes (or fails).
worker_start() {
  local logf=$1
  shift
  env "$@" "$BIN" store init >>"$WORK/cli.log" 2>&1 || return 1
  env "$@" "$BIN" worker >"$logf" 2>&1 8<&- &
  WORKER_PID=$!
  CHILDREN+=("$WORKER_PID")
  wait_until 60 grep -q "worker consuming" "$logf" || {
    tail -n 5 "$logf" >&2
    return 1
  }
}

# delivered_ids NAME: unique webhook-ids received so far, sorted.
delivered_ids() { grep -o '"webhook_id":"[^"]*"' "$WORK/$1.receipts" | cut -d'"' -f4 | sort -u; }

# all_delivered NAME IDS_FILE: every id of the sorted IDS_FILE was received.
all_delivered() { [[ -z $(comm -23 "$2" <(delivered_ids "$1")) ]]; }

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  log "cleaning up"
  [[ -n ${STOP_FILE:-} ]] && : >"$STOP_FILE"
  for pid in "${CHILDREN[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  sleep 1
  for pid in "${CHILDREN[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  rabbit_nodes_stop
  if [[ -n $PREFIX ]]; then
    redis-cli -p 6379 --scan --pattern "$PREFIX*" | xargs -r redis-cli -p 6379 del >/dev/null
  fi
  if [[ -n $WORK ]]; then
    if [[ ${BROKERS_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}

# --- part a: TLS -------------------------------------------------------------------------------

make_certificates() {
  local d=$1
  mkdir -p "$d"
  (
    cd "$d"
    ca() {
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout "$1.key" -out "$1.pem" \
        -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign
    }
    # leaf NAME CN EXTENSIONS: a key and a certificate signed by the run's CA.
    leaf() {
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -out "$1.pem" -extfile "$1.ext"
    }
    ca ca "hookrelay test CA"
    ca other-ca "some other CA"
    leaf server localhost $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'
    leaf client hookrelay 'extendedKeyUsage=clientAuth'
  ) >"$d/openssl.log" 2>&1 || die "openssl failed; see $d/openssl.log"
  chmod 644 "$d"/*.pem "$d"/*.key
}

# expect_refused CASE PATTERN COMMAND...: COMMAND must fail, its error matching PATTERN.
expect_refused() {
  local case=$1 pattern=$2 out rc=0
  shift 2
  out=$(timeout 60 "$@" 2>&1 >/dev/null) || rc=$?
  if ((rc == 0)); then
    fail "$case: accepted, should have been refused"
  elif grep -qE "$pattern" <<<"$out"; then
    log "TLS check | $case | refused: $(grep -E "$pattern" <<<"$out" | tail -n 1 | cut -c1-300)"
  else
    fail "$case: refused, but without a clear reason (wanted /$pattern/): $out"
  fi
}

# retry_waiting NODE: a message waits in one of the run's delay queues.
retry_waiting() {
  on_rabbit "$1" rabbitmqctl -n "$1" -q list_queues --no-table-headers name messages |
    awk -v p="$PREFIX.retry." 'index($1, p) == 1 { n += $2 } END { exit !(n > 0) }'
}

# bench_rate LABEL [VAR=VALUE...]: end-to-end events/s of `hookrelay bench` with that config.
bench_rate() {
  local label=$1 out
  shift
  out=$(env "$@" timeout 300 "$BIN" bench --events "${BROKERS_BENCH_EVENTS:-3000}" --accounts 30 \
    --skip-ceiling --json 2>>"$WORK/bench.log") || {
    fail "bench over $label failed; see $WORK/bench.log"
    return 0
  }
  python3 -c 'import json, sys
r = json.load(sys.stdin)
t = r.get("throughput") or r
print("%.0f events/s, %.0f deliveries/s" % (t["events_per_sec"], t["deliveries_per_sec"]))' <<<"$out" 2>>"$WORK/bench.log" ||
    { printf '%s\n' "$out" >>"$WORK/bench.log"; echo "see $WORK/bench.log"; }
}

part_tls() {
  log "=== part tls: one node, plain and TLS listeners, mutual TLS"
  local certs="$WORK/certs" node=hookrelay-tls@localhost plain tls
  make_certificates "$certs"
  free_port plain
  free_port tls
  node_setup "$node" "$plain" "listeners.tcp.default = 127.0.0.1:$plain
listeners.ssl.default = 127.0.0.1:$tls
ssl_options.cacertfile = $certs/ca.pem
ssl_options.certfile = $certs/server.pem
ssl_options.keyfile = $certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
log.console = false"
  log "starting $node (amqp :$plain, amqps :$tls)"
  node_up "$node"
  log "$node ready: RabbitMQ $(on_rabbit "$node" rabbitmqctl -n "$node" -q version)"

  # The worker runs as a user limited to the run's names, with the permissions README.md gives
  # (there for the prefix "hookrelay"): configure and read its own names, write those and the
  # default exchange (retries and dead letters are published through it, by queue name).
  local password re="^${PREFIX}\\."
  password=$(openssl rand -hex 12)
  on_rabbit "$node" rabbitmqctl -n "$node" -q add_user hookrelay "$password" >/dev/null
  on_rabbit "$node" rabbitmqctl -n "$node" -q set_permissions -p / hookrelay \
    "$re" "^(${PREFIX}\\..*|amq\\.default)\$" "$re" >/dev/null
  log "user hookrelay: configure '$re', write '^(${PREFIX}\\..*|amq\\.default)\$', read '$re'"
  local amqps="amqps://hookrelay:$password@127.0.0.1:$tls/%2f"
  local good=(HOOKRELAY__AMQP__URL="$amqps" HOOKRELAY__AMQP__TLS__CA_FILE="$certs/ca.pem"
    HOOKRELAY__AMQP__TLS__CERT_FILE="$certs/client.pem" HOOKRELAY__AMQP__TLS__KEY_FILE="$certs/client.key")
  env "${good[@]}" "$BIN" topology declare >>"$WORK/cli.log" 2>&1 ||
    die "topology declare over amqps failed; see $WORK/cli.log"
  receiver_start tls
  worker_start "$WORK/worker-tls.log" "${good[@]}" || die "the worker over amqps did not start"
  local i
  for i in $(seq 1 20); do
    echo "tls-$i" >>"$WORK/tls.ids"
    env "${good[@]}" "$BIN" publish --type payment.card.success --account acct-1 --id "tls-$i" \
      >/dev/null 2>>"$WORK/cli.log" || fail "publish tls-$i over amqps failed"
  done
  sort -o "$WORK/tls.ids" "$WORK/tls.ids"
  if wait_until 30 all_delivered tls "$WORK/tls.ids" && ! grep -q '"verified":false' "$WORK/tls.receipts"; then
    log "TLS check | worker over amqps (mutual TLS) delivers | 20 of 20 events delivered, signatures verified"
  else
    fail "worker over amqps: $(delivered_ids tls | wc -l) of 20 delivered"
  fi
  # A failing webhook: its retry is published through the default exchange, which the limited
  # user may write to; a refusal would show as ACCESS_REFUSED in the worker's log.
  "$BIN" store init >>"$WORK/cli.log" 2>&1 || die "store init failed; see $WORK/cli.log"
  local down_port
  free_port down_port
  "$BIN" webhooks add --account acct-2 --url "http://127.0.0.1:$down_port/down" --events '*' \
    >/dev/null 2>>"$WORK/cli.log" || die "webhooks add failed; see $WORK/cli.log"
  env "${good[@]}" "$BIN" publish --type payment.card.failed --account acct-2 >/dev/null 2>>"$WORK/cli.log" ||
    fail "publish for the failing webhook failed"
  if wait_until 15 retry_waiting "$node" && ! grep -q ACCESS_REFUSED "$WORK/worker-tls.log"; then
    log "TLS check | the limited user's worker schedules a retry (default exchange) | a retry is waiting in a delay queue"
  else
    fail "the limited user's worker did not schedule a retry (see $WORK/worker-tls.log)"
  fi
  # The broker's view: every connection of the worker is TLS.
  local conns
  conns=$(on_rabbit "$node" rabbitmqctl -n "$node" -q list_connections --no-table-headers ssl ssl_protocol client_properties |
    grep 'hookrelay worker' | awk '{print $1, $2}' | sort | uniq -c)
  if [[ -n $conns && $conns != *false* ]]; then
    log "TLS check | rabbitmqctl list_connections ssl (worker connections) | $(tr -s ' \n' ' ' <<<"$conns")"
  else
    fail "worker connections not listed as ssl: ${conns:-none}"
  fi

  expect_refused "wrong CA (ca_file = another CA)" "127\.0\.0\.1.*(UnknownIssuer|certificate)" \
    env "${good[@]}" HOOKRELAY__AMQP__TLS__CA_FILE="$certs/other-ca.pem" "$BIN" topology declare
  expect_refused "worker with the wrong CA stops at start-up" "127\.0\.0\.1.*(UnknownIssuer|certificate)" \
    env "${good[@]}" HOOKRELAY__AMQP__TLS__CA_FILE="$certs/other-ca.pem" "$BIN" worker
  expect_refused "the limited user declaring outside its names" "ACCESS_REFUSED|access to" \
    env "${good[@]}" HOOKRELAY__AMQP__PREFIX=elsewhere "$BIN" topology declare
  expect_refused "no client certificate (broker requires one)" "127\.0\.0\.1.*(alert|Certificate|certificate)" \
    env HOOKRELAY__AMQP__URL="$amqps" HOOKRELAY__AMQP__TLS__CA_FILE="$certs/ca.pem" "$BIN" topology declare
  expect_refused "amqps:// to the plain listener (no plain-text fallback)" "TLS with 127\.0\.0\.1" \
    env "${good[@]}" HOOKRELAY__AMQP__URL="amqps://guest:guest@127.0.0.1:$plain/%2f" "$BIN" topology declare
  expect_refused "ca_file that is not PEM" "amqp\.tls\.ca_file" \
    env "${good[@]}" HOOKRELAY__AMQP__TLS__CA_FILE="$certs/openssl.log" "$BIN" topology declare
  expect_refused "ca_file missing" "amqp\.tls\.ca_file" \
    env "${good[@]}" HOOKRELAY__AMQP__TLS__CA_FILE="$certs/nonexistent.pem" "$BIN" topology declare
  expect_refused "TLS files with an amqp:// URL" "amqp\.url" \
    env "${good[@]}" HOOKRELAY__AMQP__URL="amqp://guest:guest@127.0.0.1:$plain/%2f" "$BIN" topology declare

  kill -TERM "$WORKER_PID" "$RECEIVER_PID" 2>/dev/null || true
  wait "$WORKER_PID" "$RECEIVER_PID" 2>/dev/null || true
  local pairs=${BROKERS_BENCH_PAIRS:-1} pair
  log "bench: plain, then TLS, against the same node, $pairs time(s) (${BROKERS_BENCH_EVENTS:-3000} events, 30 accounts, 1 worker)"
  for ((pair = 1; pair <= pairs; pair++)); do
    log "bench $pair | plain amqp:// | $(bench_rate plain HOOKRELAY__AMQP__URL="amqp://guest:guest@127.0.0.1:$plain/%2f")"
    # The bench uses names of its own (hrbench-…), so it runs as guest.
    log "bench $pair | TLS amqps:// (mutual TLS) | $(bench_rate tls "${good[@]}" HOOKRELAY__AMQP__URL="amqps://guest:guest@127.0.0.1:$tls/%2f")"
  done
  rabbit_node_stop "$node"
}

# --- part b: a 3-node cluster ------------------------------------------------------------------

readonly CLUSTER=(hookrelay-c1@localhost hookrelay-c2@localhost hookrelay-c3@localhost)
declare -A PORT=()

publisher_loop() {
  local tag=$1 out=$2 seq=0 id t0 rc
  while [[ ! -e $STOP_FILE ]]; do
    seq=$((seq + 1))
    printf -v id 'c%s-%05d' "$tag" "$seq"
    t0=$(now)
    rc=0
    timeout 30 "$BIN" publish --type subscribe.success --account acct-1 --id "$id" \
      >/dev/null 2>>"$WORK/publish.log" || rc=$?
    printf '%s %s %s %s\n' "$id" "$t0" "$(now)" "$rc" >>"$out"
    sleep 0.05
  done
}

leader_of() {
  on_rabbit "${CLUSTER[0]}" rabbitmqctl -n "$2" -q list_queues --no-table-headers name leader |
    awk -v q="$1" '$1 == q { print $2 }'
}

part_cluster() {
  log "=== part cluster: three nodes, two workers with amqp.urls, the leader stopped mid-stream"
  local node urls=() n
  for node in "${CLUSTER[@]}"; do
    free_port "PORT[$node]"
    node_setup "$node" "${PORT[$node]}" "listeners.tcp.default = 127.0.0.1:${PORT[$node]}
log.console = false"
    urls+=("amqp://guest:guest@127.0.0.1:${PORT[$node]}/%2f")
  done
  log "starting ${CLUSTER[*]} in parallel (amqp ports ${PORT[${CLUSTER[0]}]}, ${PORT[${CLUSTER[1]}]}, ${PORT[${CLUSTER[2]}]})"
  local starting=()
  for node in "${CLUSTER[@]}"; do
    rabbit_node_start "$node" &
    starting+=($!)
  done
  wait "${starting[@]}"
  for node in "${CLUSTER[@]}"; do rabbit_node_wait "$node" 150; done
  for node in "${CLUSTER[@]:1}"; do
    on_rabbit "$node" rabbitmqctl -n "$node" -q stop_app >/dev/null &&
      on_rabbit "$node" rabbitmqctl -n "$node" -q join_cluster "${CLUSTER[0]}" >/dev/null &&
      on_rabbit "$node" rabbitmqctl -n "$node" -q start_app >/dev/null ||
      die "$node could not join ${CLUSTER[0]}"
  done
  log "cluster: $(on_rabbit "${CLUSTER[0]}" rabbitmqctl -n "${CLUSTER[0]}" -q cluster_status --formatter json |
    python3 -c 'import json, sys; print(", ".join(json.load(sys.stdin)["running_nodes"]))') running"

  export HOOKRELAY__AMQP__URLS
  HOOKRELAY__AMQP__URLS=$(IFS=,; echo "${urls[*]}")
  "$BIN" topology declare >>"$WORK/cli.log" 2>&1 || die "topology declare failed; see $WORK/cli.log"
  local members
  members=$(on_rabbit "${CLUSTER[0]}" rabbitmq-queues -n "${CLUSTER[0]}" -q quorum_status "$PREFIX.events" |
    grep -c hookrelay-c || true)
  log "quorum_status $PREFIX.events: $members members"
  ((members == 3)) || fail "the events queue has $members quorum members, not 3"
  receiver_start cluster
  for n in 1 2; do
    worker_start "$WORK/worker-c$n.log" || die "cluster worker $n did not start"
  done
  log "two workers consuming"

  STOP_FILE="$WORK/stop"
  local publishers=()
  for n in 1 2; do
    publisher_loop "$n" "$WORK/published-$n.txt" 8<&- &
    publishers+=($!)
  done
  CHILDREN+=("${publishers[@]}")
  sleep 5
  local leader stop_at down_at back_at
  leader=$(leader_of "$PREFIX.events" "${CLUSTER[0]}")
  [[ -n $leader ]] || die "could not find the leader of $PREFIX.events"
  log "leader of $PREFIX.events: $leader, of $PREFIX.deliveries: $(leader_of "$PREFIX.deliveries" "${CLUSTER[0]}"); stopping $leader"
  stop_at=$(now)
  rabbit_node_stop "$leader"
  down_at=$(now)
  log "$leader stopped ($(python3 -c "print(round($down_at - $stop_at, 1))") s to stop); publishing on for 10 s"
  sleep 10
  log "starting $leader again"
  node_up "$leader"
  back_at=$(now)
  log "$leader back"
  sleep 5
  : >"$STOP_FILE"
  wait "${publishers[@]}" 2>/dev/null || true
  cat "$WORK"/published-*.txt >"$WORK/published.txt"

  # Settle: every confirmed event delivered, or 60 s.
  awk '$4 == 0 { print $1 }' "$WORK/published.txt" | sort -u >"$WORK/confirmed.ids"
  wait_until 60 all_delivered cluster "$WORK/confirmed.ids" || true
  sleep 2
  local attempts confirmed failed delivered lost dups recovery pause
  attempts=$(wc -l <"$WORK/published.txt")
  confirmed=$(wc -l <"$WORK/confirmed.ids")
  failed=$((attempts - confirmed))
  delivered_ids cluster >"$WORK/delivered.ids"
  delivered=$(grep -c '"webhook_id"' "$WORK/cluster.receipts" || true)
  lost=$(comm -23 "$WORK/confirmed.ids" "$WORK/delivered.ids" | wc -l)
  dups=$((delivered - $(wc -l <"$WORK/delivered.ids")))
  # Recovery: from the node being down to the first receipt of an event whose publish started
  # after that (so it went through the publisher's and the workers' failover).
  recovery=$(awk -v s="$down_at" 'FNR == NR { if ($4 == 0 && $2 > s) after[$1] = 1; next }
    { if (match($0, /"webhook_id":"[^"]*"/)) { id = substr($0, RSTART + 14, RLENGTH - 15);
        if (id in after && (first == "" || $1 < first)) first = $1 } }
    END { if (first == "") print "never"; else printf "%.1f s", first - s }' \
    "$WORK/published.txt" "$WORK/cluster.receipts")
  # The longest time without a delivery, from the stop until the node was back.
  pause=$(awk -v a="$stop_at" -v b="$back_at" '$1 >= a && $1 <= b { if (prev != "" && $1 - prev > gap) gap = $1 - prev; prev = $1 }
    END { printf "%.1f s", gap }' "$WORK/cluster.receipts")
  log "publish attempts $attempts: confirmed $confirmed, failed (reported to the caller) $failed"
  for n in 1 2; do
    log "worker $n: $(grep -aE 'session lost|session restored|connected to RabbitMQ' "$WORK/worker-c$n.log" |
      sed -E 's/^([0-9T:.-]+)Z .*(session lost|session restored|connected to RabbitMQ)( node=[^ ]+)?.*/\1 \2\3/' | tr '\n' ';')"
  done
  log "longest pause between deliveries while $leader was stopped or starting: $pause"
  printf '\n| scenario | published (confirmed) | failed publishes | delivered | lost | duplicates | recovery | longest pause |\n|---|---|---|---|---|---|---|---|\n'
  printf '| 3-node cluster, leader %s stopped, restarted %.0f s later | %s | %s | %s | %s | %s | %s | %s |\n\n' \
    "${leader%@*}" "$(python3 -c "print($back_at - $stop_at)")" "$confirmed" "$failed" "$delivered" "$lost" "$dups" "$recovery" "$pause"
  ((lost == 0)) || fail "cluster: $lost confirmed events were not delivered"
  [[ $recovery != never ]] || fail "cluster: nothing published after the stop was delivered"
  members=$(on_rabbit "${CLUSTER[0]}" rabbitmq-queues -n "${CLUSTER[0]}" -q quorum_status "$PREFIX.events" |
    grep -c hookrelay-c || true)
  log "quorum_status $PREFIX.events after the restart: $members members"
}

# After part_cluster, on the same three nodes: amqp.partitions = 3 is refused without the
# consistent-hash plugin (exit 78), then, with it, the partitions' leaders are on three nodes and a
# node stopped mid-stream loses no confirmed event.
part_partitions() {
  ((${#PORT[@]} == 3)) || die "part partitions runs after part cluster (brokers.sh cluster partitions)"
  log "=== part partitions: amqp.partitions = 3 on the cluster, a node stopped mid-stream"
  local keep=$PREFIX out rc=0 node p leaders=() spread
  export HOOKRELAY__AMQP__PREFIX=$PREFIX-p HOOKRELAY__REDIS__PREFIX=$PREFIX-p HOOKRELAY__AMQP__PARTITIONS=3
  out=$("$BIN" topology declare 2>&1) || rc=$?
  log "without the plugin: exit $rc: $(tail -n 1 <<<"$out" | cut -c1-200)"
  ((rc == 78)) && grep -q 'rabbitmq-plugins enable rabbitmq_consistent_hash_exchange' <<<"$out" ||
    fail "partitions: without the plugin, exit $rc (wanted 78 naming the plugin)"
  for node in "${CLUSTER[@]}"; do
    on_rabbit "$node" rabbitmq-plugins -n "$node" -q enable rabbitmq_consistent_hash_exchange >/dev/null ||
      die "could not enable the plugin on $node"
  done
  "$BIN" topology declare >>"$WORK/cli.log" 2>&1 || die "topology declare failed; see $WORK/cli.log"
  # RabbitMQ before 3.12 places a quorum queue's leader on the declaring connection's node,
  # whatever x-queue-leader-locator says (3.12 and 4.x act on `balanced`): the procedure of
  # docs/partitions.md for those versions is a rebalance of the partitions' leaders, run once
  # after declaring them.
  on_rabbit "${CLUSTER[0]}" rabbitmq-queues -n "${CLUSTER[0]}" -q rebalance quorum \
    --queue-pattern "^$PREFIX-p\\.(events|deliveries)\\.[0-9]+\$" >>"$WORK/cli.log" 2>&1 ||
    die "rabbitmq-queues rebalance failed; see $WORK/cli.log"
  # Six work queues (events and deliveries, three partitions each) over three nodes: every node
  # leads some.
  for p in 0 1 2; do leaders+=("$(leader_of "$PREFIX-p.events.$p" "${CLUSTER[0]}")"); done
  for p in 0 1 2; do leaders+=("$(leader_of "$PREFIX-p.deliveries.$p" "${CLUSTER[0]}")"); done
  spread=$(printf '%s\n' "${leaders[@]}" | sort -u | grep -c . || true)
  log "leaders of events.0..2, deliveries.0..2: ${leaders[*]} ($spread nodes)"
  ((spread == 3)) || fail "partitions: the six partitions' leaders are on $spread node(s), not 3"
  receiver_start partitions
  for p in 1 2; do
    worker_start "$WORK/worker-p$p.log" || die "partitioned worker $p did not start"
  done
  STOP_FILE="$WORK/stop-p"
  local publishers=()
  for p in 1 2; do
    publisher_loop "p$p" "$WORK/published-p$p.txt" 8<&- &
    publishers+=($!)
  done
  CHILDREN+=("${publishers[@]}")
  sleep 4
  log "stopping ${leaders[0]} (leader of events.0) mid-stream; publishing on for 8 s"
  rabbit_node_stop "${leaders[0]}"
  sleep 8
  node_up "${leaders[0]}"
  sleep 3
  : >"$STOP_FILE"
  wait "${publishers[@]}" 2>/dev/null || true
  cat "$WORK"/published-p*.txt >"$WORK/published-p.txt"
  awk '$4 == 0 { print $1 }' "$WORK/published-p.txt" | sort -u >"$WORK/confirmed-p.ids"
  wait_until 60 all_delivered partitions "$WORK/confirmed-p.ids" || true
  sleep 2
  local confirmed delivered unique lost
  confirmed=$(wc -l <"$WORK/confirmed-p.ids")
  delivered=$(grep -c '"webhook_id"' "$WORK/partitions.receipts" || true)
  unique=$(delivered_ids partitions | wc -l)
  lost=$(comm -23 "$WORK/confirmed-p.ids" <(delivered_ids partitions) | wc -l)
  printf '\n| scenario | confirmed | delivered | lost | duplicates |\n|---|---|---|---|---|\n'
  printf '| 3 partitions on 3 nodes, %s stopped 8 s | %s | %s | %s | %s |\n\n' \
    "${leaders[0]%@*}" "$confirmed" "$delivered" "$lost" "$((delivered - unique))"
  ((lost == 0)) || fail "partitions: $lost confirmed events were not delivered"
  export HOOKRELAY__AMQP__PREFIX=$keep HOOKRELAY__REDIS__PREFIX=$keep
  unset HOOKRELAY__AMQP__PARTITIONS
}

main() {
  take_run_lock "$LOCK_FILE"
  command -v rabbitmq-server >/dev/null && command -v redis-cli >/dev/null ||
    "$ROOT/scripts/services.sh" 8<&- || die "scripts/services.sh failed"
  command -v openssl >/dev/null && command -v python3 >/dev/null || {
    apt-get -o DPkg::Lock::Timeout=300 update >&2 8<&-
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
      --no-install-recommends openssl python3 >&2 8<&-
  }
  hookrelay_bin debug
  WORK=$(mktemp -d /tmp/hookrelay-brokers.XXXXXX)
  chmod 755 "$WORK"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  hookrelay_env
  log "working in $WORK, prefix $PREFIX"
  local part
  for part in "${PARTS[@]}"; do
    case $part in
      tls) part_tls ;;
      cluster) part_cluster ;;
      partitions) part_partitions ;;
      *) die "unknown part $part (tls, cluster, partitions)" ;;
    esac
  done
  finish_run "all checks passed"
}

main
