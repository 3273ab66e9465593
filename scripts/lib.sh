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
#   wait_until SECONDS CMD...  retries CMD every 0.2 s until it succeeds or time runs out
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
    sleep 0.2
  done
}
