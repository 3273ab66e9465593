#!/usr/bin/env bash
# Delete what killed test runs left behind on the local RabbitMQ and Redis (see services.sh):
# queues and exchanges in vhost "/" and keys in Redis db 0 whose names start with PREFIX.
# Nothing without that prefix is touched.
#
# Tests name everything after their own prefix: hrt-abc.events, hrt-abc:{68}:webhooks, ... Such a
# test's objects are kept, all of them, while the test looks alive: one of its queues has a
# consumer, or one of its keys was used in the last SWEEP_MIN_IDLE seconds (default 300). So a
# sweep next to a running test suite only removes what dead runs left. SWEEP_MIN_IDLE=0 removes
# everything with the prefix that no consumer holds.
#
# Exchanges are deleted through the management API (rabbitmqctl cannot delete them); without it,
# they are counted and left alone.
#
# Usage: scripts/sweep.sh [PREFIX]      (default PREFIX: hrt-)
set -euo pipefail

SCRIPT=sweep.sh
DIE_STATUS=2
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Nothing here depends on the caller's directory, and the rabbitmq user that Debian's wrappers
# switch to may not be allowed into it.
cd /

readonly REDIS_PORT=6379
readonly MGMT_API=http://127.0.0.1:15672/api
readonly MGMT_USER=guest:guest
readonly VHOST=/
readonly REDIS_BATCH=500
readonly MIN_IDLE=${SWEEP_MIN_IDLE:-300}

# stdin from /dev/null: rabbitmqctl reads stdin and would swallow a loop's input.
ctl() { as_rabbit rabbitmqctl -q -p "$VHOST" "$@" </dev/null; }
redis_cli() { timeout 60 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# Sets $test to the test that name $1 belongs to: the prefix plus what follows it up to the
# first "." or ":". (A variable, not output: this runs once per key, and forks add up.)
test_of() {
  local rest=${1#"$prefix"}
  test=$prefix${rest%%[.:]*}
}

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

# Print one redis-cli command per key, each key double-quoted as redis-cli's stdin expects.
idle_commands() {
  local key
  for key in "$@"; do
    key=${key//\\/\\\\}
    printf 'OBJECT IDLETIME "%s"\n' "${key//\"/\\\"}"
  done
}

mgmt_up() {
  command -v curl >/dev/null 2>&1 &&
    curl -fsS -o /dev/null --max-time 5 -u "$MGMT_USER" "$MGMT_API/overview" 2>/dev/null
}

# DELETE $1 (a path under the API); true when this call deleted it.
mgmt_delete() {
  local status
  status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 -u "$MGMT_USER" -X DELETE \
    "$MGMT_API/$1" </dev/null) || return 1
  [[ $status == 204 ]]
}

# Fields of stdin's lines whose first tab-separated field starts with the prefix.
with_prefix() { awk -F'\t' -v p="$prefix" 'index($1, p) == 1'; }

# --- Looking: fills the arrays below and marks live tests ------------------------------------

declare -A live=() # test -> 1 while it looks alive
queues=() exchanges=() keys=() test=""
rabbit_ok=1 redis_ok=1

list_rabbit() {
  local listing xlisting name consumers
  if ! can_rabbit; then
    warn "rabbitmq: skipped: rabbitmqctl needs root, the rabbitmq user or sudo"
    rabbit_ok=0
    return 0
  fi
  if ! listing=$(ctl list_queues --no-table-headers name consumers) ||
    ! xlisting=$(ctl list_exchanges --no-table-headers name); then
    warn "rabbitmq: cannot list queues and exchanges; is it running? (scripts/services.sh)"
    rabbit_ok=0
    return 0
  fi
  mapfile -t exchanges < <(with_prefix <<<"$xlisting")
  while IFS=$'\t' read -r name consumers; do
    queues+=("$name")
    test_of "$name"
    [[ ${consumers:-0} == 0 ]] || live[$test]=1
  done < <(with_prefix <<<"$listing")
}

list_redis() {
  local idle i v
  [[ $(redis_cli ping 2>/dev/null) == PONG ]] || {
    warn "redis: no PONG on 127.0.0.1:$REDIS_PORT; is it running? (scripts/services.sh)"
    redis_ok=0
    return 0
  }
  # SCAN, not KEYS, so a big keyspace is never blocked. SCAN may return a key twice: harmless.
  mapfile -t keys < <(redis_cli --scan --pattern "${prefix}*")
  ((${#keys[@]} > 0 && MIN_IDLE > 0)) || return 0
  # One pipelined OBJECT IDLETIME per key; replies come back one per line, in order.
  mapfile -t idle < <(idle_commands "${keys[@]}" | redis_cli)
  # Anything but one number (or nil) per key, e.g. the error of an LFU maxmemory-policy, under
  # which Redis does not track idle time: fall back to the queues' consumers alone.
  for v in "${idle[@]}"; do
    [[ $v =~ ^[0-9]*$ ]] || idle=()
  done
  if ((${#idle[@]} != ${#keys[@]})); then
    warn "redis: key idle times unavailable; only queue consumers show which tests are alive"
    return 0
  fi
  for i in "${!keys[@]}"; do
    # Empty: the key expired meanwhile.
    test_of "${keys[i]}"
    [[ -z ${idle[i]} || ${idle[i]} -ge $MIN_IDLE ]] || live[$test]=1
  done
}

# --- Removing ---------------------------------------------------------------------------------

# report WHAT REMOVED KEPT FAILED [NOTE]
report() {
  printf '%s removed: %d' "$1" "$2"
  (($3 == 0)) || printf ' (%d kept: test still running)' "$3"
  (($4 == 0)) || printf ' (%d failed or already gone)' "$4"
  [[ -z ${5:-} ]] || printf ' (%s)' "$5"
  printf '\n'
}

sweep_queues() {
  local name removed=0 kept=0 failed=0
  for name in "${queues[@]}"; do
    test_of "$name"
    if [[ -n ${live[$test]:-} ]]; then
      kept=$((kept + 1))
    # The management API is much faster than one rabbitmqctl start per queue.
    elif ((use_api)) && mgmt_delete "queues/$(urlencode "$VHOST")/$(urlencode "$name")"; then
      removed=$((removed + 1))
    elif ((!use_api)) && ctl delete_queue "$name" >/dev/null; then
      removed=$((removed + 1))
    else
      failed=$((failed + 1))
    fi
  done
  report "rabbitmq queues" "$removed" "$kept" "$failed"
}

sweep_exchanges() {
  local name removed=0 kept=0 failed=0 left=0
  for name in "${exchanges[@]}"; do
    test_of "$name"
    if [[ -n ${live[$test]:-} ]]; then
      kept=$((kept + 1))
    elif ((!use_api)); then
      left=$((left + 1))
    elif mgmt_delete "exchanges/$(urlencode "$VHOST")/$(urlencode "$name")"; then
      removed=$((removed + 1))
    else
      failed=$((failed + 1))
    fi
  done
  local note=""
  ((left == 0)) ||
    note="$left left: no management API at $MGMT_API; scripts/services.sh enables it"
  report "rabbitmq exchanges" "$removed" "$kept" "$failed" "$note"
}

sweep_redis() {
  local key removed kept=0 dead=()
  for key in "${keys[@]}"; do
    test_of "$key"
    if [[ -n ${live[$test]:-} ]]; then
      kept=$((kept + 1))
    else
      dead+=("$key")
    fi
  done
  ((${#dead[@]} > 0)) || {
    report "redis keys" 0 "$kept" 0
    return 0
  }
  # UNLINK frees memory in the background; summing its replies counts each key once even when
  # SCAN returned it twice.
  if removed=$(printf '%s\n' "${dead[@]}" |
    xargs -r -d '\n' -n "$REDIS_BATCH" timeout 60 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" unlink |
    awk '{ n += $1 } END { print n + 0 }'); then
    report "redis keys" "$removed" "$kept" 0
  else
    report "redis keys" "${removed:-0}" "$kept" 0 "unlink failed part way"
    return 1
  fi
}

prefix=${1-hrt-}
# The prefix becomes a Redis glob and part of URLs: plain name characters only, so it can match
# nothing but names that really start with it. amq.* names belong to RabbitMQ itself.
[[ $prefix =~ ^[A-Za-z0-9][A-Za-z0-9_.:-]*$ ]] ||
  die "prefix must start with a letter or digit and contain only letters, digits and _ . : - (got '$prefix')"
[[ $prefix != amq.* ]] || die "amq.* names belong to RabbitMQ"
[[ $MIN_IDLE =~ ^[0-9]+$ ]] || die "SWEEP_MIN_IDLE must be a number of seconds (got '$MIN_IDLE')"

use_api=0
if mgmt_up; then use_api=1; fi

# Look at everything before removing anything: a test is alive if any of its parts is.
list_rabbit
list_redis

status=0
if ((rabbit_ok)); then
  sweep_queues
  sweep_exchanges
else
  status=1
fi
if ((redis_ok)); then
  sweep_redis || status=1
else
  status=1
fi
exit "$status"
