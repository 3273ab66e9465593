#!/usr/bin/env bash
# The whole test suite, against the real RabbitMQ and Redis on loopback (installed from Debian's
# packages and started when they are missing or stopped). This is the command README.md gives and
# the one CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

scripts/services.sh
# Queues and keys left by killed test runs (prefix hrt-); running tests' are kept.
scripts/sweep.sh hrt- || echo "test.sh: sweeping leftovers failed; continuing" >&2

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

echo "== build"
cargo build --locked --all-targets

echo "== bench smoke run (small: checks the benchmark works, not a figure)"
target/debug/hookrelay bench --events 2000 --accounts 50

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked -- --test-threads=4
fi
