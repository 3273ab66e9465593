# shellcheck shell=bash
# Private servers for the scripts that stop, restart or reconfigure one (faults.sh, backpressure.sh,
# brokers.sh, redis-nodes.sh): RabbitMQ nodes and Redis servers of the run's own, on free loopback
# ports, with their data under the run's directory, so that the RabbitMQ on 5672 and the Redis on
# 6379 that other work uses are never touched. Source it after lib.sh:
#
#   rabbit_node_setup NODE DIR AMQP_PORT CONF   the node's directories, rabbitmq.conf (CONF, one
#                                               line a key), environment; stops a leftover node
#                                               of that name (the caller holds the run lock)
#   on_rabbit NODE CMD...        a RabbitMQ command with the node's environment
#   rabbit_node_ping NODE        true while the node answers
#   rabbit_node_start NODE       rabbitmq-server -detached; no wait (may run in the background)
#   rabbit_node_wait NODE SECS   until it has booted and takes AMQP connections; notes its OS pid
#   rabbit_node_pid NODE         that pid
#   rabbit_node_stop NODE        stops it and waits until its process is gone (SIGKILL after 30 s)
#   rabbit_nodes_stop            stops every node set up by this run, one after the other
#   redis_server_start DIR PORT ARGS...   a daemonized redis-server of ours in DIR (pid, log there)
#   redis_servers_kill           SIGKILLs every redis-server started with redis_server_start
#
# The broker runs as the rabbitmq user, not as our child: its OS pid (ps, not kill -0) tells
# whether it is gone. Debian's wrappers switch to that user with su, keeping the RABBITMQ_*
# variables and setting HOME=/var/lib/rabbitmq, so every node of a run and the CLI share that
# home's Erlang cookie (a cluster needs exactly that).

declare -A RABBIT_NODE_DIR=() # node -> its directory; set where the caller's shell keeps it
RABBIT_NODES=()               # the nodes set up by this run, for rabbit_nodes_stop
REDIS_DIRS=()                 # each holds redis.pid of a redis-server of ours

rabbit_node_setup() {
  local node=$1 dir=$2 port=$3 conf=$4 dist_port
  free_port dist_port
  mkdir -p "$dir/mnesia" "$dir/log" "$dir/conf.d"
  # Everything this node reads is here: neither /etc/rabbitmq/rabbitmq-env.conf (it names the
  # system node) nor /etc/rabbitmq/conf.d (it may pin listeners to the system node's ports).
  cat >"$dir/rabbitmq-env.conf" <<EOF
NODENAME=$node
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  printf '%s\n' "$conf" >"$dir/rabbitmq.conf"
  # No plugins: the scripts read the broker with rabbitmqctl and hookrelay's own commands.
  echo '[].' >"$dir/enabled_plugins"
  cat >"$dir/env" <<EOF
RABBITMQ_NODENAME=$node
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$port
RABBITMQ_DIST_PORT=$dist_port
RABBITMQ_MNESIA_BASE=$dir/mnesia
RABBITMQ_LOG_BASE=$dir/log
RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
RABBITMQ_CONFIG_FILES=$dir/conf.d
RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
RABBITMQ_PID_FILE=$dir/node.pid
EOF
  printf '%s\n' "$port" >"$dir/amqp-port"
  chown -R rabbitmq:rabbitmq "$dir" 2>/dev/null || as_root chown -R rabbitmq:rabbitmq "$dir"
  RABBIT_NODE_DIR[$node]=$dir
  RABBIT_NODES+=("$node")
  if rabbit_node_ping "$node"; then
    warn "a RabbitMQ node $node is still running (left by a killed run); stopping it"
    on_rabbit "$node" timeout 60 rabbitmqctl -n "$node" -q stop >/dev/null 2>&1 || true
    wait_until 30 rabbit_node_gone "$node" || die "could not stop the leftover node $node"
  fi
}

on_rabbit() {
  local node=$1 env=()
  shift
  mapfile -t env <"${RABBIT_NODE_DIR[$node]}/env"
  as_rabbit env "${env[@]}" "$@"
}

rabbit_node_ping() { on_rabbit "$1" timeout 20 rabbitmq-diagnostics -n "$1" -q ping >/dev/null 2>&1; }
rabbit_node_gone() { ! rabbit_node_ping "$1"; }

rabbit_node_start() {
  local dir=${RABBIT_NODE_DIR[$1]}
  on_rabbit "$1" timeout 60 rabbitmq-server -detached >>"$dir/start.log" 2>&1 ||
    die "rabbitmq-server -detached failed for $1; see $dir/start.log"
}

rabbit_node_ready() {
  on_rabbit "$1" timeout 30 rabbitmqctl -n "$1" -q await_startup --timeout 25 >/dev/null 2>&1 &&
    tcp_open 127.0.0.1 "$(cat "${RABBIT_NODE_DIR[$1]}/amqp-port")"
}

rabbit_node_wait() {
  local node=$1 dir=${RABBIT_NODE_DIR[$1]} pid
  wait_until "$2" rabbit_node_ready "$node" || {
    tail -n 30 "$dir/log/$node.log" >&2 2>/dev/null || true
    die "RabbitMQ node $node not ready after $2 s"
  }
  pid=$(on_rabbit "$node" timeout 60 rabbitmqctl -n "$node" -q eval 'os:getpid().' | tr -dc '0-9')
  [[ -n $pid ]] || die "could not read the OS pid of $node"
  printf '%s\n' "$pid" >"$dir/os-pid"
}

rabbit_node_pid() { cat "${RABBIT_NODE_DIR[$1]}/os-pid" 2>/dev/null || true; }

pid_gone() { ! ps -p "$1" >/dev/null 2>&1; }

# Clients get connection.close 320 (a clean broker shutdown), as in a rolling restart.
rabbit_node_stop() {
  local node=$1 pid
  [[ -n ${RABBIT_NODE_DIR[$node]:-} ]] || return 0
  pid=$(rabbit_node_pid "$node")
  on_rabbit "$node" timeout 90 rabbitmqctl -n "$node" -q stop >/dev/null 2>&1 || true
  if [[ -n $pid ]] && ! wait_until 30 pid_gone "$pid"; then
    warn "RabbitMQ node $node (pid $pid) did not stop; killing it"
    kill -KILL "$pid" 2>/dev/null || as_root kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "${RABBIT_NODE_DIR[$node]}/os-pid"
}

# One after the other: the CLI needs each node's environment file, still in the run's directory.
rabbit_nodes_stop() {
  local node
  for node in "${RABBIT_NODES[@]}"; do rabbit_node_stop "$node"; done
}

# No snapshots and no append-only file unless ARGS ask for them: a scenario that needs the data
# back after a restart saves it explicitly (SHUTDOWN SAVE, dump.rdb in DIR).
redis_server_start() {
  local dir=$1 port=$2
  shift 2
  mkdir -p "$dir"
  REDIS_DIRS+=("$dir")
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' --appendonly no "$@" 8<&- 9<&-
}

redis_servers_kill() {
  local dir
  for dir in "${REDIS_DIRS[@]}"; do
    [[ -s $dir/redis.pid ]] && kill -KILL "$(cat "$dir/redis.pid")" 2>/dev/null
  done
  return 0
}
