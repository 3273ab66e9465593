#!/usr/bin/env bash
# examples/python/publish.py and examples/node/publish.mjs against the real broker and a worker:
# each publishes 100 events that must arrive signed and verified at `hookrelay listen --json`.
# pika and amqplib are installed into ~/.cache/hookrelay/examples when missing (pip, npm).
# Everything is on a prefix of its own, deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=examples.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
have_all python3 node npm redis-cli || die "python3, node, npm and redis-cli are needed"

BIN=${HOOKRELAY_BIN:-target/debug/hookrelay}
AMQP=${HOOKRELAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
DEPS=${HOOKRELAY_EXAMPLES_DIR:-$HOME/.cache/hookrelay/examples}
N=100
PREFIX="ex-$$-$RANDOM"
WORK=$(mktemp -d)
export HOOKRELAY__AMQP__URL=$AMQP HOOKRELAY__AMQP__PREFIX=$PREFIX HOOKRELAY__REDIS__PREFIX=$PREFIX
export HOOKRELAY__OPS__LISTEN=127.0.0.1:0 HOOKRELAY__DELIVERY__ALLOW_HTTP=true
export HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS=true
export PYTHONPATH=$DEPS/python
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -s $WORK/topology.json ]] && python3 - "$AMQP" "$WORK/topology.json" <<'PY' || true
import json, sys, pika
url, listing = sys.argv[1], json.load(open(sys.argv[2]))
channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
for queue in listing["queues"]:
    channel.queue_delete(queue["name"])
channel.exchange_delete(listing["exchange"]["name"])
if "operational_exchange" in listing:
    channel.exchange_delete(listing["operational_exchange"]["name"])
PY
  redis-cli --scan --pattern "$PREFIX*" | xargs -r redis-cli del >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

python3 -c 'import pika' 2>/dev/null || pip3 install -q --target "$DEPS/python" pika
[[ -d $DEPS/node/node_modules/amqplib ]] ||
  (mkdir -p "$DEPS/node" && cd "$DEPS/node" && npm install -q --no-audit --no-fund amqplib >/dev/null)

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" store init >/dev/null
secret=$("$BIN" webhooks add --account acct-ex --url "http://127.0.0.1:$port/ex" --events '*' --json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')
"$BIN" listen --listen "127.0.0.1:$port" --secret "$secret" --json >"$WORK/receipts.jsonl" 2>"$WORK/listen.log" &
PIDS+=($!)
"$BIN" worker >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
wait_until 15 tcp_open 127.0.0.1 "$port" || die "the receiver did not start"
"$BIN" topology declare --json >"$WORK/topology.json"

python3 examples/python/publish.py "$AMQP" "$PREFIX" acct-ex "$N" >"$WORK/ids-python"
# ES modules resolve packages from the script's own directory (NODE_PATH does not apply).
cp examples/node/publish.mjs "$DEPS/node/publish.mjs"
node "$DEPS/node/publish.mjs" "$AMQP" "$PREFIX" acct-ex "$N" >"$WORK/ids-node"
for lang in python node; do
  [[ $(sort -u "$WORK/ids-$lang" | wc -l) -eq $N ]] || die "$lang: did not publish $N distinct ids"
done
verified() { python3 - "$WORK" <<'PY'
import json, sys, pathlib
work = pathlib.Path(sys.argv[1])
got = {json.loads(l)["webhook_id"] for l in (work / "receipts.jsonl").read_text().splitlines()
       if l.strip() and json.loads(l).get("verified")}
want = set((work / "ids-python").read_text().split()) | set((work / "ids-node").read_text().split())
print(len(want & got))
sys.exit(0 if want <= got else 1)
PY
}
wait_until 60 verified >/dev/null || die "only $(verified) of $((2 * N)) events arrived verified; see $WORK"
log "examples: python and node published $N events each; all $((2 * N)) arrived signed and verified"
