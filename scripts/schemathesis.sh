#!/usr/bin/env bash
# The OpenAPI document against the API it describes: starts `hookrelay api` on its own prefix and
# free ports with an admin token, and runs schemathesis with every check (`--checks all`) on
# every operation, stateful phase included; fails on any finding. Bounded: a few examples per
# operation and --max-time (SCHEMATHESIS_MAX_TIME, default 100 s). Installs schemathesis with pip
# when it is missing. Needs Redis (scripts/services.sh); the broker only for status and resend.
#
#   scripts/schemathesis.sh            (HOOKRELAY_BIN: the binary to run; default target/debug)
set -euo pipefail
SCRIPT=schemathesis.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${HOOKRELAY_BIN:-target/debug/hookrelay}
[[ -x $BIN ]] || die "no $BIN: cargo build first (or set HOOKRELAY_BIN)"
if ! have_all st; then
  log "installing schemathesis (pip)"
  python3 -m pip install --quiet 'schemathesis>=4,<5' || die "pip could not install schemathesis"
fi

free_port port
prefix="hrt-st$RANDOM$RANDOM"
token="schemathesis-admin-$RANDOM$RANDOM$RANDOM"
work=$(mktemp -d)
trap 'api_stop; rm -rf "$work"' EXIT

HOOKRELAY__REDIS__PREFIX="$prefix" "$BIN" store init >/dev/null
# Private targets allowed: CI has no DNS, and example.com (the schema's example) must register.
# Failed sign-ins unlimited: schemathesis sends many invalid tokens on purpose.
HOOKRELAY__OPS__LISTEN="127.0.0.1:0" HOOKRELAY__API__ADMIN_TOKEN="$token" \
  HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS=true HOOKRELAY__API__FAILED_SIGNIN_LIMIT=1000000 \
  api_start "$prefix" "$port" "$work/api.log"

log "schemathesis --checks all against 127.0.0.1:$port (prefix $prefix)"
config=$PWD/scripts/schemathesis.toml
cd "$work" # schemathesis writes its cache (.hypothesis) where it runs
st --config-file "$config" run "http://127.0.0.1:$port/v1/openapi.json" --checks all \
  -H "Authorization: Bearer $token" --max-examples 10 \
  --max-time "${SCHEMATHESIS_MAX_TIME:-100}" --request-timeout 30 --no-color
