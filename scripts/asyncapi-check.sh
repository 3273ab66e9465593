#!/usr/bin/env bash
# docs/asyncapi.yaml is what scripts/asyncapi.py makes from src/event.rs, and the AsyncAPI CLI
# (npm package @asyncapi/cli, installed into ~/.cache/hookrelay/asyncapi-cli when missing: about
# 3 minutes the first time) finds it valid.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=asyncapi-check.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

have_all python3 npm || die "python3 and npm are needed (Debian: apt-get install python3 npm)"

fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
cp docs/asyncapi.yaml "$fresh"
python3 scripts/asyncapi.py >/dev/null
if ! cmp -s "$fresh" docs/asyncapi.yaml; then
  cp "$fresh" docs/asyncapi.yaml
  die "docs/asyncapi.yaml is not what scripts/asyncapi.py makes of src/event.rs and src/event/envelope.schema.json: run it and commit"
fi

CLI_DIR=${HOOKRELAY_ASYNCAPI_DIR:-$HOME/.cache/hookrelay/asyncapi-cli}
CLI=$CLI_DIR/node_modules/.bin/asyncapi
if [[ ! -x $CLI ]]; then
  log "installing @asyncapi/cli into $CLI_DIR (npm)"
  mkdir -p "$CLI_DIR"
  (cd "$CLI_DIR" && npm install --no-audit --no-fund --loglevel=error @asyncapi/cli@4 >/dev/null)
fi
# The CLI tries to send anonymous usage metrics; there is no network for them here.
export ASYNCAPI_METRICS_DISABLED=true
out=$("$CLI" validate docs/asyncapi.yaml 2>&1) || {
  printf '%s\n' "$out" >&2
  die "docs/asyncapi.yaml is not a valid AsyncAPI document"
}
printf '%s\n' "$out" | grep -v -i 'metrics' | grep -E 'valid|error' | head -5
log "docs/asyncapi.yaml: valid AsyncAPI 3.0, in step with src/event.rs"
