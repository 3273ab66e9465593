#!/usr/bin/env bash
# The whole test suite, against the real RabbitMQ and Redis on loopback (installed from Debian's
# packages and started when they are missing or stopped). This is the command README.md gives and
# the one CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=test.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

have_all cargo || die "cargo not found; install Rust with rustup (https://rustup.rs)"

cat <<'EOF'
== test.sh installs what is missing (apt-get as root or through sudo; each is named again when
   it is actually installed):
     rabbitmq-server redis-server          the services (scripts/services.sh)
     chromium chromium-driver fonts-dejavu-core
                                           the browser test of the Webhooks page
     kubernetes-client docker-compose binutils podman buildah, promtool (unpacked from the
     prometheus package, not installed), kubernetes-validate (PyPI, in target/deploy-tools/venv)
                                           deploy/ checks (scripts/deploy-check.sh)
     openssl python3 curl jq redis-tools util-linux
                                           fault, broker and Redis node scripts
   About 30 minutes on 2 cores once installed, 21 once built (build, deploy checks, bench smoke run, faults,
   brokers, Redis nodes, then the test suite).
EOF

scripts/services.sh

# The browser test of the Webhooks page drives Debian's Chromium through chromedriver. Once they
# are installed the test is required to run (HOOKRELAY_REQUIRE_BROWSER); only when they cannot be
# installed does it skip, and says so loudly here and in its own output.
ensure_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
  echo "== installing chromium and chromium-driver (browser test of the Webhooks page)"
  as_root apt-get -o DPkg::Lock::Timeout=300 update &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
      --no-install-recommends chromium chromium-driver fonts-dejavu-core &&
    command -v chromium >/dev/null && command -v chromedriver >/dev/null
}
if ensure_chromium; then
  export HOOKRELAY_REQUIRE_BROWSER=1
else
  echo "!!! test.sh: chromium and chromium-driver could not be installed: the browser test of the Webhooks page will be SKIPPED" >&2
fi
# Queues and keys left by killed test runs (prefix hrt-); running tests' are kept.
scripts/sweep.sh hrt- || echo "test.sh: sweeping leftovers failed; continuing" >&2

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

echo "== build"
cargo build --locked --all-targets

scripts/asyncapi-check.sh # docs/asyncapi.yaml in step with src/event.rs and valid (npm @asyncapi/cli)
scripts/examples.sh       # examples/python and examples/node publish 100 events each, all verified (pip pika, npm amqplib)

echo "== the OpenAPI document against the API: schemathesis --checks all (about 2 min)"
scripts/schemathesis.sh

scripts/deploy-check.sh   # deploy/ rendered and validated offline, image's runtime stage built (~15 s)

echo "== bench smoke run (small: checks the benchmark works, not a figure)"
cargo run --locked --quiet -- bench --events 2000 --accounts 50

echo "== fault injection: own RabbitMQ node and Redis; kill, cut, restart, outages (about 3 min)"
scripts/faults.sh

echo "== back-pressure: memory and disk alarms, a partition through a proxy; own node and Redis (about 4 min)"
scripts/backpressure.sh

echo "== production brokers: own RabbitMQ nodes; TLS (mutual), a 3-node cluster losing its leader (about 3 min)"
scripts/brokers.sh

echo "== Redis over TLS, Redis Cluster and Sentinel failovers: own servers on own ports (about 1 min)"
scripts/redis-nodes.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked -- --test-threads=4
fi
