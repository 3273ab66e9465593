#!/usr/bin/env bash
# Brings everything up and shows hookrelay delivering real events: RabbitMQ and Redis (installed
# and started if needed), a worker, a verifying receiver (`hookrelay listen`), two webhooks of a
# demo account (Standard Webhooks JSON and the InPlayer form), and events of several types.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=demo.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

have_all cargo || die "cargo not found; install Rust with rustup (https://rustup.rs)"
scripts/services.sh
echo "== building hookrelay (release)"
cargo build --release --locked --quiet
hookrelay=target/release/hookrelay

# Its own names, so the demo never touches a deployment's queues or keys. The receiver is on
# loopback over http, which production refuses (SSRF guard, https only).
export HOOKRELAY__AMQP__PREFIX=hookrelay-demo HOOKRELAY__REDIS__PREFIX=hookrelay-demo
export HOOKRELAY__DELIVERY__ALLOW_HTTP=true HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS=true
export HOOKRELAY__OPS__LISTEN=127.0.0.1:0
account=demo
logs=$(mktemp -d)
pids=()
cleanup() {
  for id in $("$hookrelay" webhooks list --account "$account" --json 2>/dev/null | grep -o '"id": "wh_[A-Za-z0-9]*"' | cut -d'"' -f4); do
    "$hookrelay" webhooks remove "$id" >/dev/null || true
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
  # The demo's queues, exchange and Redis keys all start with its prefix; with the worker
  # stopped, the sweeper removes them. DEMO_KEEP=1 leaves them, to look around afterwards.
  if [[ -n ${DEMO_KEEP:-} ]]; then
    echo "== kept the demo's queues and keys (prefix hookrelay-demo); remove them with:"
    echo "   SWEEP_MIN_IDLE=0 scripts/sweep.sh hookrelay-demo"
  else
    echo "== removing the demo's queues, exchange and Redis keys (prefix hookrelay-demo; DEMO_KEEP=1 keeps them)"
    SWEEP_MIN_IDLE=0 scripts/sweep.sh hookrelay-demo | sed 's/^/   /' ||
      warn "cleaning up failed; run: SWEEP_MIN_IDLE=0 scripts/sweep.sh hookrelay-demo"
  fi
}
trap cleanup EXIT

echo "== creating the store (idempotent: the store's identity, which workers and writes require)"
"$hookrelay" store init

echo "== starting a worker"
"$hookrelay" worker 2>"$logs/worker.log" &
pids+=($!)
until grep -q "worker consuming" "$logs/worker.log"; do
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$logs/worker.log"; exit 1; }
  sleep 0.2
done
grep -o 'ops_addr=[0-9.:]*' "$logs/worker.log" | sed 's|^ops_addr=|   worker ready; /healthz, /readyz, /metrics on |'

echo "== starting a receiver that verifies signatures (hookrelay listen)"
expected=7
"$hookrelay" listen --listen 127.0.0.1:0 --account "$account" --count "$expected" >"$logs/received.txt" 2>"$logs/listen.log" &
listener=$!
pids+=("$listener")
until grep -q "listening on" "$logs/listen.log"; do sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$logs/listen.log")
echo "   $base"

echo "== registering two webhooks for account $account"
"$hookrelay" webhooks add --account "$account" --url "$base/standard" \
  --events payment.card.success,subscribe.success,customer.registered --description "Standard Webhooks receiver"
"$hookrelay" webhooks add --account "$account" --url "$base/inplayer" --events '*' --format inplayer \
  --description "InPlayer legacy receiver"

echo "== publishing events"
"$hookrelay" publish --type payment.card.success --account "$account" --data '{"amount":"10.00","currency_iso":"EUR","customer_id":"42"}'
"$hookrelay" publish --type subscribe.success --account "$account" --data '{"plan":"monthly","access":{"asset_id":7,"expires":"2026-12-27"}}'
"$hookrelay" publish --type customer.registered --account "$account" --data '{"email":"ada@example.com"}'
"$hookrelay" publish --type asset.access.granted --account "$account" --data '{"asset_id":7}'
"$hookrelay" publish --type payment.card.success --account "another-account" --data '{"amount":"1.00"}'

echo "== deliveries received and verified ($expected expected: 3 events x 2 webhooks, 1 event x the '*' webhook)"
for _ in $(seq 1 100); do
  kill -0 "$listener" 2>/dev/null || break
  sleep 0.1
done
cat "$logs/received.txt"
got=$(grep -c '^✔ verified' "$logs/received.txt" || true)
[[ "$got" -eq "$expected" ]] || die "expected $expected verified deliveries, got $got"
echo "== all $got deliveries arrived with valid signatures"
echo "== the binary is $PWD/$hookrelay; \`cargo install --path .\` puts hookrelay on your PATH"
