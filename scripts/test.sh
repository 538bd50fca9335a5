#!/usr/bin/env bash
# Runs every test of homehub: formatting, lints, the Rust unit and integration tests, and
# the interop suites with real Phoenix client libraries (which this script installs:
# `npm ci` and a Python venv under tests/interop). Non-interactive; safe on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked
echo "== interop (official phoenix JS client, Python client)"
bash tests/interop/run.sh
