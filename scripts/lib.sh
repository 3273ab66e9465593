# shellcheck shell=bash
# The prologue hookrelay's scripts share. Source it right after `set -euo pipefail`:
#
#   SCRIPT=faults.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It gives:
#   log / warn / die MESSAGE   on stdout / stderr, prefixed with "$SCRIPT: "; die exits with
#                              $DIE_STATUS (default 1)
#   SUDO                       (sudo) for a user who is not root and has sudo, else ()
#   as_root CMD...             CMD as root (through sudo when needed)
#   as_rabbit CMD...           CMD as root or the rabbitmq user: Debian's rabbitmqctl & co.
#                              refuse to run for anyone else
#   can_rabbit                 true when as_rabbit can work at all
#   have_all CMD...            true when every CMD is on PATH
#   tcp_open HOST PORT         true when something accepts TCP connections there
#   wait_until SECONDS CMD...  retries CMD every $WAIT_STEP s (default 0.2) until it succeeds or
#                              time runs out
#   free_port VAR              sets VAR to a loopback port nobody listens on, not yet handed out
#   alive PID / stop_process PID SECONDS
#                              a child still running (not a zombie) / SIGTERM, SIGKILL after SECONDS
#   take_run_lock FILE         one run at a time: waits up to 15 min for FILE's lock, on fd 8
#   hookrelay_bin debug|release
#                              sets BIN: $HOOKRELAY_BIN when set, else that cargo build's binary
#   clear_hookrelay_env        unsets every HOOKRELAY_* variable: only what the script sets counts
#   api_start PREFIX PORT LOG [WRAPPER...]
#                              `$BIN api` on 127.0.0.1:PORT under PREFIX (RabbitMQ and Redis),
#                              with the caller's HOOKRELAY__* environment; sets API_PID; waits
#                              until it listens. api_stop ends it and deletes PREFIX's Redis keys.
#   fail MESSAGE / finish_run [PASSED_LINE]
#                              note a failed check / print the total time and the failures, then
#                              exit 1 if there were any
#
# Scripts that take a run lock hold it on fd 8 or 9; as_root and as_rabbit close both for what
# they run, so that a daemon started through them (redis, the broker, epmd) never holds a lock
# for its whole life.

# Debian installs rabbitmqctl & co. in /usr/sbin, which is not on an ordinary user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

: "${SCRIPT:=${0##*/}}"
: "${DIE_STATUS:=1}"

log() { printf '%s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$SCRIPT" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$SCRIPT" "$*" >&2
  exit "$DIE_STATUS"
}

SUDO=()
if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
fi

as_root() { "${SUDO[@]}" "$@" 8<&- 9<&-; }

can_rabbit() { [[ $EUID -eq 0 || $(id -un) == rabbitmq || ${#SUDO[@]} -gt 0 ]]; }

as_rabbit() {
  if [[ $EUID -eq 0 || $(id -un) == rabbitmq ]]; then
    "$@" 8<&- 9<&-
  else
    "${SUDO[@]}" "$@" 8<&- 9<&-
  fi
}

have_all() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || return 1
  done
}

tcp_open() {
  # shellcheck disable=SC2016 # $0 and $1 are expanded by the inner bash, on purpose.
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep "${WAIT_STEP:-0.2}"
  done
}

free_port_taken=" "
free_port() {
  # Names no caller uses: printf -v would set a local of this function, not the caller's VAR.
  local free_port_try free_port_candidate
  for free_port_try in {1..100}; do
    # Below 32768, where Linux picks the ports of outgoing connections.
    free_port_candidate=$((20000 + RANDOM % 12000))
    [[ $free_port_taken != *" $free_port_candidate "* ]] &&
      ! tcp_open 127.0.0.1 "$free_port_candidate" || continue
    free_port_taken+="$free_port_candidate "
    printf -v "$1" '%s' "$free_port_candidate"
    return 0
  done
  die "found no free port"
}

alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $stat && $stat != Z* ]]
}

stop_process() {
  local pid=$1 deadline=$((SECONDS + $2))
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
}

take_run_lock() {
  # Anyone may create it: a run as root and one through sudo share the lock.
  [[ -e $1 ]] || (umask 0 && : >>"$1")
  exec 8<"$1"
  flock -w 900 8 || die "another run has held $1 for 15 minutes"
}

hookrelay_bin() {
  if [[ -n ${HOOKRELAY_BIN:-} ]]; then
    BIN=$(realpath "$HOOKRELAY_BIN")
    [[ -x $BIN ]] || die "HOOKRELAY_BIN=$HOOKRELAY_BIN is not an executable"
    return 0
  fi
  local root flags=(--locked --quiet --bin hookrelay) target
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  [[ $1 == release ]] && flags+=(--release)
  log "building hookrelay (cargo build ${flags[*]}; waits for other builds' lock)"
  (cd "$root" && cargo build "${flags[@]}" 8<&- 9<&-) || die "cargo build failed"
  target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target="$root/$target"
  BIN="$target/$1/hookrelay"
  [[ -x $BIN ]] || die "$BIN not found after the build"
}

clear_hookrelay_env() {
  local var
  for var in $(compgen -e | grep -E '^HOOKRELAY_' || true); do unset "$var"; done
}

API_PID=""
API_PREFIX=""
api_start() {
  local prefix=$1 port=$2 logfile=$3
  shift 3
  API_PREFIX=$prefix
  HOOKRELAY__API__LISTEN="127.0.0.1:$port" HOOKRELAY__REDIS__PREFIX="$prefix" \
    HOOKRELAY__AMQP__PREFIX="$prefix" RUST_LOG=warn \
    "$@" "$BIN" api >"$logfile" 2>&1 8<&- 9<&- &
  API_PID=$!
  wait_until 60 tcp_open 127.0.0.1 "$port" || {
    cat "$logfile"
    die "the API did not start"
  }
}

api_stop() {
  [[ -n $API_PID ]] || return 0
  kill "$API_PID" 2>/dev/null || true
  wait "$API_PID" 2>/dev/null || true
  redis-cli --scan --pattern "$API_PREFIX*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}

FAILURES=()
fail() {
  FAILURES+=("$1")
  log "FAILED: $1"
}

finish_run() {
  log "total time $((SECONDS - ${T_START:-0})) s"
  if ((${#FAILURES[@]} > 0)); then
    log "FAILED: ${FAILURES[*]}"
    exit 1
  fi
  log "${1:-all passed}"
}
