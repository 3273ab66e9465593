#!/usr/bin/env bash
# Make sure the RabbitMQ and Redis that hookrelay's tests and local runs use are installed, running
# on loopback (127.0.0.1:5672 with guest/guest, 127.0.0.1:6379) and answering.
#
# Idempotent: services that are already up are only checked. Safe to run concurrently with itself:
# runs take turns on a lock, so a second run just finds everything up.
#
# Usage: scripts/services.sh        (from any directory; root, or a user with sudo)
set -euo pipefail

SCRIPT=services.sh
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Nothing here depends on the caller's directory, and the rabbitmq user that Debian's wrappers
# switch to may not be allowed into it.
cd /

readonly REDIS_PORT=6379
readonly AMQP_PORT=5672
readonly MGMT_PORT=15672
readonly REDIS_WAIT_S=30
readonly RABBIT_WAIT_S=120
readonly RABBIT_CONF_DIR=/etc/rabbitmq
readonly RABBIT_SNIPPET="$RABBIT_CONF_DIR/conf.d/90-hookrelay-loopback.conf"
readonly LOCK_FILE=/tmp/hookrelay-services.lock

# wait_for SECONDS COMMAND...: retry COMMAND once a second until it succeeds or time runs out.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# Runs take turns: two concurrent runs must not both start a server or both run apt-get. The lock
# is opened read-only so that runs by root and by other users can share the same file.
take_lock() {
  command -v flock >/dev/null 2>&1 || {
    warn "flock not found; not serializing with other runs"
    return 0
  }
  [[ -e $LOCK_FILE ]] || (umask 0 && : >>"$LOCK_FILE") 2>/dev/null || true
  if [[ -r $LOCK_FILE ]]; then
    exec 9<"$LOCK_FILE"
    # Long enough for another run's apt-get install plus a RabbitMQ boot.
    flock -w 900 9 || die "another services.sh run has held $LOCK_FILE for 15 minutes"
  else
    warn "cannot open $LOCK_FILE; not serializing with other runs"
  fi
}

ensure_installed() {
  have_all rabbitmq-server rabbitmqctl rabbitmq-plugins rabbitmq-diagnostics redis-server redis-cli &&
    return 0
  [[ $EUID -eq 0 || ${#SUDO[@]} -gt 0 ]] ||
    die "RabbitMQ or Redis is not installed, and installing needs root or sudo"
  # Before the install: the package's postinst may start the broker right away, and it should come
  # up on loopback.
  ensure_rabbit_loopback_conf with-amqp
  log "installing rabbitmq-server and redis-server..." >&2
  as_root apt-get -o DPkg::Lock::Timeout=300 update >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
    --no-install-recommends rabbitmq-server redis-server >&2
  have_all rabbitmq-server rabbitmqctl rabbitmq-plugins rabbitmq-diagnostics redis-server redis-cli ||
    die "apt-get install finished but the RabbitMQ or Redis commands are still missing"
}

# --- Redis -----------------------------------------------------------------------------------

redis_cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_pong() { [[ $(redis_cli ping 2>/dev/null) == PONG ]]; }

start_redis() {
  local bind=(127.0.0.1 -::1)
  # No IPv6 loopback (IPv6 disabled in this container or kernel): bind 127.0.0.1 alone.
  grep -qs '^0\{31\}1 ' /proc/net/if_inet6 || bind=(127.0.0.1)
  as_root mkdir -p /var/lib/redis /var/log/redis
  # No persistence: tests create what they need, and a dump of test data is only clutter.
  if ! as_root redis-server --daemonize yes --bind "${bind[@]}" --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log; then
    ((${#bind[@]} > 1)) || die "redis-server failed to start; see /var/log/redis/ci.log"
    warn "redis-server refused to start with ::1; starting it on 127.0.0.1 only"
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
}

ensure_redis() {
  local started="" version
  # Only start Redis when nothing listens on the port: a Redis that answers LOADING or NOAUTH is
  # up already, and a second one could not bind anyway.
  if ! redis_pong && ! tcp_open 127.0.0.1 "$REDIS_PORT"; then
    start_redis
    started=", started"
  fi
  wait_for "$REDIS_WAIT_S" redis_pong ||
    die "redis: no PONG on 127.0.0.1:$REDIS_PORT after ${REDIS_WAIT_S}s (it said: $(redis_cli ping 2>&1 | head -n 1)); see /var/log/redis/ci.log"
  version=$(redis_cli info server | tr -d '\r' | sed -n 's/^redis_version://p')
  log "redis: ready (${version:-unknown version}$started)"
}

# --- RabbitMQ --------------------------------------------------------------------------------

# True when a setting matching the extended regex $1 is in RabbitMQ's configuration files.
rabbit_conf_sets() {
  grep -qsE "^[[:space:]]*($1)" "$RABBIT_CONF_DIR/rabbitmq.conf" "$RABBIT_CONF_DIR"/conf.d/*.conf
}

# Pin the broker's listeners to loopback in a conf.d file of our own, never touching the admin's
# files, and only for listeners that nothing else configures. With "with-amqp" the AMQP listener
# too: only done before this script installs or starts the broker, so that a running broker's
# AMQP listener is never changed behind its admin's back. The management keys are safe to write
# while the plugin is disabled (RabbitMQ 3.10 knows every bundled plugin's settings).
ensure_rabbit_loopback_conf() {
  local lines=()
  if [[ ${1:-} == with-amqp ]] && ! rabbit_conf_sets 'listeners\.tcp\.' &&
    ! grep -qsE '^[[:space:]]*(export[[:space:]]+)?(RABBITMQ_)?NODE_(IP_ADDRESS|PORT)=' \
      "$RABBIT_CONF_DIR/rabbitmq-env.conf" &&
    ! grep -qs 'tcp_listeners' "$RABBIT_CONF_DIR/advanced.config"; then
    lines+=("listeners.tcp.default = 127.0.0.1:$AMQP_PORT")
  fi
  if ! rabbit_conf_sets 'management\.(tcp|ssl|listener)\.'; then
    lines+=("management.tcp.ip = 127.0.0.1" "management.tcp.port = $MGMT_PORT")
  fi
  ((${#lines[@]} > 0)) || return 0
  as_root mkdir -p "${RABBIT_SNIPPET%/*}"
  if [[ ! -e $RABBIT_SNIPPET ]]; then
    lines=("# Written by hookrelay's scripts/services.sh: keep this development broker on loopback."
      "${lines[@]}")
  fi
  printf '%s\n' "${lines[@]}" | as_root tee -a "$RABBIT_SNIPPET" >/dev/null
  as_root chmod 0644 "$RABBIT_SNIPPET"
}

# The Erlang node is up (perhaps still booting) or something already holds the AMQP port.
rabbit_running() {
  as_rabbit rabbitmq-diagnostics -q ping >/dev/null 2>&1 || tcp_open 127.0.0.1 "$AMQP_PORT"
}

rabbit_ready() {
  can_rabbit || {
    tcp_open 127.0.0.1 "$AMQP_PORT"
    return
  }
  as_rabbit rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1 &&
    as_rabbit rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 &&
    tcp_open 127.0.0.1 "$AMQP_PORT"
}

start_rabbit() {
  ensure_rabbit_loopback_conf with-amqp
  # Under systemd, start the packaged unit so that systemd keeps owning the broker; elsewhere
  # (containers) the node detaches by itself. A failure here is reported by the wait that follows.
  if [[ -d /run/systemd/system ]] && systemctl cat rabbitmq-server.service >/dev/null 2>&1; then
    as_root systemctl start --no-block rabbitmq-server.service ||
      warn "systemctl start rabbitmq-server failed"
  else
    as_rabbit rabbitmq-server -detached || warn "rabbitmq-server -detached failed"
  fi
}

# guest/guest is what the tests and the default config use; RabbitMQ only lets guest in from
# loopback, so resetting it cannot open the broker to the network.
ensure_guest() {
  local ctl=(as_rabbit rabbitmqctl -q) users perms
  if ! "${ctl[@]}" authenticate_user guest guest >/dev/null 2>&1; then
    users=$("${ctl[@]}" list_users --no-table-headers | cut -f1)
    if grep -qx guest <<<"$users"; then
      warn "rabbitmq: user guest had another password; setting it back to guest"
      "${ctl[@]}" change_password guest guest >/dev/null
    else
      warn "rabbitmq: user guest was missing; creating it"
      "${ctl[@]}" add_user guest guest >/dev/null
      "${ctl[@]}" set_user_tags guest administrator >/dev/null
    fi
  fi
  perms=$("${ctl[@]}" list_user_permissions --no-table-headers guest | cut -f1)
  if ! grep -qx / <<<"$perms"; then
    "${ctl[@]}" set_permissions -p / guest '.*' '.*' '.*' >/dev/null
  fi
}

# On-call uses the management UI, and sweep.sh uses its API to delete exchanges. Optional: a
# failure is a warning.
ensure_management() {
  as_rabbit rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1 && return 0
  ensure_rabbit_loopback_conf
  # The running node read its configuration at boot, before the file above existed: unless the
  # configuration chose a listener, give this boot's listener the same loopback address.
  if [[ $(as_rabbit rabbitmqctl -q eval \
    'application:get_env(rabbitmq_management, tcp_config).' 2>/dev/null) == undefined ]]; then
    as_rabbit rabbitmqctl -q eval "application:set_env(rabbitmq_management, tcp_config,
      [{ip, \"127.0.0.1\"}, {port, $MGMT_PORT}], [{persistent, true}])." >/dev/null ||
      warn "rabbitmq: could not pin the management listener to 127.0.0.1 for this boot"
  fi
  as_rabbit rabbitmq-plugins -q enable rabbitmq_management >/dev/null ||
    warn "rabbitmq: could not enable rabbitmq_management (no UI; sweep.sh cannot delete exchanges)"
}

# amqp.partitions > 1 routes through the consistent-hash exchange type; a worker refuses to start
# without it. Enabling a plugin is additive and needs no restart. Optional here: only partitioned
# set-ups (and their tests) need it, so a failure is a warning.
ensure_consistent_hash() {
  as_rabbit rabbitmq-plugins -q is_enabled rabbitmq_consistent_hash_exchange >/dev/null 2>&1 &&
    return 0
  as_rabbit rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null ||
    warn "rabbitmq: could not enable rabbitmq_consistent_hash_exchange (amqp.partitions > 1 will refuse to start)"
}

ensure_rabbit() {
  local started="" version
  if ! rabbit_running; then
    can_rabbit || die "rabbitmq is not running, and starting it needs root or sudo"
    start_rabbit
    started=", started"
  fi
  wait_for "$RABBIT_WAIT_S" rabbit_ready ||
    die "rabbitmq: not ready on 127.0.0.1:$AMQP_PORT after ${RABBIT_WAIT_S}s; see /var/log/rabbitmq/"
  if ! can_rabbit; then
    warn "rabbitmq: without root or sudo, only checked that 127.0.0.1:$AMQP_PORT answers"
    log "rabbitmq: ready (version unknown)"
    return 0
  fi
  ensure_guest
  ensure_management
  ensure_consistent_hash
  version=$(as_rabbit rabbitmq-diagnostics -q server_version 2>/dev/null) || version=""
  log "rabbitmq: ready (${version:-unknown version}$started)"
}

main() {
  take_lock
  ensure_installed
  ensure_rabbit
  ensure_redis
}

main "$@"
