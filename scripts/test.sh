#!/usr/bin/env bash
# Runs every test of homehub: formatting, lints, the Rust unit and integration tests, and
# the interop suites with real Phoenix client libraries (which this script installs:
# `npm ci` and a Python venv under tests/interop). Non-interactive; safe on a fresh clone.
# The tests get a private PostgreSQL server (scripts/postgres.sh, docs/testing.md), stopped
# and removed when this script exits (also on a failure, ^C or SIGTERM), and a nats-server
# binary (scripts/nats.sh) from which the cluster tests start NATS servers of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
# shellcheck source=scripts/nats.sh
source scripts/nats.sh
trap pg_stop EXIT
trap 'exit 130' INT   # so that the EXIT trap also runs on ^C and SIGTERM
trap 'exit 143' TERM

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== sqlite3 (a test holds the database with a real sqlite3, as an administrator would)"
if ! command -v sqlite3 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends sqlite3 >/dev/null 2>&1 ||
            { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends sqlite3 >/dev/null; }
    fi
    command -v sqlite3 >/dev/null 2>&1 || { echo "sqlite3 is needed by the tests" >&2; exit 1; }
fi
echo "== postgres"
pg_start
echo "== nats-server (the cluster tests start their own from it)"
nats_install
echo "== cargo test"
cargo test --locked
echo "== the integration suites again, on PostgreSQL (HOMEHUB_TEST_STORE=postgres)"
HOMEHUB_TEST_STORE=postgres cargo test --locked --test hub --test bester
echo "== interop (official phoenix JS client, Python client)"
bash tests/interop/run.sh
