#!/usr/bin/env bash
# Interop suite: real, independent Phoenix client libraries against homehub.
#
#   tests/interop/run.sh                 # builds the hub (cargo build), runs JS + Python
#   HOMEHUB_BIN=/path/to/homehub tests/interop/run.sh   # use that binary, no build
#   INTEROP_ONLY=js|python tests/interop/run.sh          # one half only
#
# Non-interactive and idempotent; exits non-zero if anything fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
only="${INTEROP_ONLY:-all}"

say() { printf '\n==> %s\n' "$*"; }

if [[ -z "${HOMEHUB_BIN:-}" ]]; then
  say "cargo build (set HOMEHUB_BIN to skip)"
  (cd "$repo" && cargo build --quiet --bin homehub)
  export HOMEHUB_BIN="$repo/target/debug/homehub"
fi
if [[ ! -x "$HOMEHUB_BIN" ]]; then
  echo "homehub binary not found or not executable: $HOMEHUB_BIN" >&2
  exit 1
fi
echo "hub binary: $HOMEHUB_BIN"

status=0

if [[ "$only" == all || "$only" == js ]]; then
  say "JS: npm ci (phoenix + ws)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  say "JS: node --test js/"
  (cd "$here" && node --test js/) || status=1
fi

if [[ "$only" == all || "$only" == python ]]; then
  venv="$here/.venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    say "Python: creating $venv"
    python3 -m venv "$venv"
  fi
  say "Python: pip install -r python/requirements.txt"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/python/requirements.txt"
  say "Python: pytest python/"
  (cd "$here/python" && "$venv/bin/python" -m pytest -p no:cacheprovider) || status=1
fi

if [[ $status -ne 0 ]]; then
  say "interop suite FAILED"
else
  say "interop suite passed"
fi
exit $status
