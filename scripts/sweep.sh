#!/usr/bin/env bash
# Delete what killed test runs left behind on the local RabbitMQ and Redis (see services.sh):
# queues and exchanges in vhost "/" and keys in Redis db 0 whose names start with PREFIX.
# Nothing without that prefix is touched.
#
# Queues that still have consumers belong to a test run that is alive, and are kept.
# Exchanges are deleted through the management API (rabbitmqctl cannot delete them); without it,
# they are counted and left alone.
#
# Usage: scripts/sweep.sh [PREFIX]      (default PREFIX: hrt-)
set -euo pipefail

# Debian installs rabbitmqctl in /usr/sbin, which is not on an ordinary user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
# Nothing here depends on the caller's directory, and the rabbitmq user that Debian's wrappers
# switch to may not be allowed into it.
cd /

readonly REDIS_PORT=6379
readonly MGMT_API=http://127.0.0.1:15672/api
readonly MGMT_USER=guest:guest
readonly VHOST=/
readonly REDIS_BATCH=500

warn() { printf 'sweep.sh: warning: %s\n' "$*" >&2; }
die() {
  printf 'sweep.sh: error: %s\n' "$*" >&2
  exit 2
}

SUDO=()
if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
fi
# Debian's rabbitmq wrappers refuse to run for anyone but root and the rabbitmq user.
as_rabbit() {
  if [[ $EUID -eq 0 || $(id -un) == rabbitmq ]]; then "$@"; else "${SUDO[@]}" "$@"; fi
}
ctl() { as_rabbit rabbitmqctl -q -p "$VHOST" "$@"; }
redis_cli() { timeout 60 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# Percent-encode $1 byte by byte for a URL path segment.
urlencode() {
  local LC_ALL=C s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}

mgmt_up() {
  command -v curl >/dev/null 2>&1 &&
    curl -fsS -o /dev/null --max-time 5 -u "$MGMT_USER" "$MGMT_API/overview" 2>/dev/null
}

# DELETE $1 (a path under the API); true when this call deleted it.
mgmt_delete() {
  local status
  status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 -u "$MGMT_USER" -X DELETE \
    "$MGMT_API/$1") || return 1
  [[ $status == 204 ]]
}

# Lines of stdin whose first tab-separated field starts with the prefix.
with_prefix() { awk -F'\t' -v p="$prefix" 'index($1, p) == 1'; }

sweep_queues() {
  local listing name consumers removed=0 busy=0 failed=0
  listing=$(ctl list_queues --no-table-headers name consumers) || {
    warn "rabbitmq: cannot list queues; is it running? (scripts/services.sh)"
    return 1
  }
  # Read on fd 3: rabbitmqctl reads stdin and would swallow the rest of the listing.
  while IFS=$'\t' read -r -u 3 name consumers; do
    if [[ ${consumers:-0} != 0 ]]; then
      busy=$((busy + 1))
      continue
    fi
    # The management API is much faster than one rabbitmqctl start per queue.
    if ((use_api)); then
      mgmt_delete "queues/$(urlencode "$VHOST")/$(urlencode "$name")" || {
        failed=$((failed + 1))
        continue
      }
    else
      ctl delete_queue "$name" </dev/null >/dev/null || {
        failed=$((failed + 1))
        continue
      }
    fi
    removed=$((removed + 1))
  done 3< <(with_prefix <<<"$listing")
  printf 'rabbitmq queues removed: %d' "$removed"
  ((busy == 0)) || printf ' (%d with consumers kept)' "$busy"
  ((failed == 0)) || printf ' (%d failed or already gone)' "$failed"
  printf '\n'
}

sweep_exchanges() {
  local listing name removed=0 failed=0 names=()
  listing=$(ctl list_exchanges --no-table-headers name) || {
    warn "rabbitmq: cannot list exchanges; is it running? (scripts/services.sh)"
    return 1
  }
  mapfile -t names < <(with_prefix <<<"$listing")
  if ((${#names[@]} > 0 && !use_api)); then
    printf 'rabbitmq exchanges removed: 0 (%d left: management API not reachable at %s;' \
      "${#names[@]}" "$MGMT_API"
    printf ' scripts/services.sh enables it)\n'
    return 0
  fi
  for name in "${names[@]}"; do
    if mgmt_delete "exchanges/$(urlencode "$VHOST")/$(urlencode "$name")"; then
      removed=$((removed + 1))
    else
      failed=$((failed + 1))
    fi
  done
  printf 'rabbitmq exchanges removed: %d' "$removed"
  ((failed == 0)) || printf ' (%d failed or already gone)' "$failed"
  printf '\n'
}

sweep_redis() {
  local removed
  [[ $(redis_cli ping 2>/dev/null) == PONG ]] || {
    warn "redis: no PONG on 127.0.0.1:$REDIS_PORT; is it running? (scripts/services.sh)"
    return 1
  }
  # SCAN, not KEYS, so a big keyspace is never blocked; UNLINK frees memory in the background.
  # SCAN may return a key twice: summing UNLINK's replies counts each key once.
  if removed=$(redis_cli --scan --pattern "${prefix}*" |
    xargs -r -d '\n' -n "$REDIS_BATCH" timeout 60 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" unlink |
    awk '{ n += $1 } END { print n + 0 }'); then
    printf 'redis keys removed: %d\n' "$removed"
  else
    printf 'redis keys removed: %d (scan or unlink failed part way)\n' "$removed"
    return 1
  fi
}

prefix=${1-hrt-}
# The prefix becomes a Redis glob and part of URLs: plain name characters only, so it can match
# nothing but names that really start with it. amq.* names belong to RabbitMQ itself.
[[ $prefix =~ ^[A-Za-z0-9][A-Za-z0-9_.:-]*$ ]] ||
  die "prefix must start with a letter or digit and contain only letters, digits and _ . : - (got '$prefix')"
[[ $prefix != amq.* ]] || die "amq.* names belong to RabbitMQ"

use_api=0
if mgmt_up; then use_api=1; fi

status=0
# A broker that cannot list queues cannot list exchanges either: say so once.
if sweep_queues; then
  sweep_exchanges || status=1
else
  status=1
fi
sweep_redis || status=1
exit "$status"
