# shellcheck shell=bash
# A private, throw-away PostgreSQL server for the tests. Sourced by scripts/test.sh
# (bash, `set -euo pipefail`); docs/testing.md says how tests use it.
#
#   pg_start  starts a server in a new temp dir and exports HOMEHUB_TEST_POSTGRES_URL,
#             _BIN (its binaries), _DATA (its data dir), _LOG (its log file) and _USER (who
#             runs it: an unprivileged user when we are root, else empty). When
#             HOMEHUB_TEST_POSTGRES_URL is already set it uses that server and starts nothing.
#   pg_stop   stops the server pg_start started and removes its temp dir; safe to call twice.
#
# The settings (port, socket dir, fsync=on) are written into the data dir's
# postgresql.conf, so a test can stop and start the server with plain `pg_ctl`.

_homehub_pg_dir=''  # the temp dir of the server pg_start made; empty when there is none
_homehub_pg_bin=''
_homehub_pg_user=''

# Runs a PostgreSQL command as the user the server runs as (from its temp dir, so that an
# unreadable current directory is not a problem).
_homehub_pg_as() {
    if [ -z "$_homehub_pg_user" ]; then
        "$@"
    elif command -v runuser >/dev/null; then
        (cd "$_homehub_pg_dir" && runuser -u "$_homehub_pg_user" -- "$@")
    else
        # shellcheck disable=SC2016 # "$@" is expanded by that sh, not here
        (cd "$_homehub_pg_dir" && su -s /bin/sh -c 'exec "$@"' -- "$_homehub_pg_user" sh "$@")
    fi
}

# Prints the directory of the PostgreSQL server binaries (the one holding initdb), if any.
_homehub_pg_find_bin() {
    local dir
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
    dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    if [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
    if command -v initdb >/dev/null; then dirname "$(readlink -f "$(command -v initdb)")"; fi
    return 0
}

pg_start() {
    [ -z "$_homehub_pg_dir" ] || { echo "postgres: already started in $_homehub_pg_dir"; return 0; }
    if [ -n "${HOMEHUB_TEST_POSTGRES_URL:-}" ]; then
        echo "postgres: using the existing server at HOMEHUB_TEST_POSTGRES_URL=$HOMEHUB_TEST_POSTGRES_URL"
        return 0
    fi

    local bin base dir port
    bin=$(_homehub_pg_find_bin)
    if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "postgres: not found, installing it with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends postgresql </dev/null >/dev/null ||
            { apt-get update -q </dev/null >/dev/null &&
                apt-get install -y -q --no-install-recommends postgresql </dev/null >/dev/null; } ||
            true
        bin=$(_homehub_pg_find_bin)
    fi
    if [ -z "$bin" ]; then
        echo "postgres: no PostgreSQL server binaries (initdb) found; the tests need PostgreSQL:" \
            "install it (Debian: apt-get install postgresql) or set HOMEHUB_TEST_POSTGRES_URL" >&2
        return 1
    fi

    # PostgreSQL refuses to run as root: then it runs as a system user of its own.
    _homehub_pg_user=''
    if [ "$(id -u)" = 0 ]; then
        _homehub_pg_user=homehub-test
        if ! id -u homehub-test >/dev/null 2>&1 &&
            ! useradd --system --no-create-home --shell /usr/sbin/nologin homehub-test 2>/dev/null &&
            ! id -u homehub-test >/dev/null 2>&1; then
            _homehub_pg_user=nobody
        fi
    fi
    # Under /tmp when root, so that the unprivileged user can reach it.
    base=${TMPDIR:-/tmp}
    [ -z "$_homehub_pg_user" ] || base=/tmp
    dir=$(mktemp -d "$base/homehub-pg.XXXXXXXX")
    _homehub_pg_dir=$dir  # from here on pg_stop cleans up, even if a step below fails
    _homehub_pg_bin=$bin
    chmod 755 "$dir"
    [ -z "$_homehub_pg_user" ] || chown "$_homehub_pg_user:" "$dir"

    # A free port: the kernel picks one for a socket bound to port 0.
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000)))

    _homehub_pg_as "$bin/initdb" -D "$dir/data" --auth=trust --username=homehub \
        --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; echo "postgres: initdb failed" >&2; return 1; }
    # fsync stays on: the kill -9 durability test depends on it.
    cat >>"$dir/data/postgresql.conf" <<EOF
# homehub test server (scripts/postgres.sh)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = on
max_connections = 200
shared_buffers = 64MB
EOF
    _homehub_pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 start >/dev/null ||
        { tail -n 30 "$dir/log" >&2 || true; echo "postgres: the server did not start" >&2; return 1; }
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U homehub homehub_test </dev/null ||
        { echo "postgres: createdb failed" >&2; return 1; }

    export HOMEHUB_TEST_POSTGRES_URL="postgres://homehub@127.0.0.1:$port/homehub_test"
    export HOMEHUB_TEST_POSTGRES_BIN="$bin"
    export HOMEHUB_TEST_POSTGRES_DATA="$dir/data"
    export HOMEHUB_TEST_POSTGRES_LOG="$dir/log"
    export HOMEHUB_TEST_POSTGRES_USER="$_homehub_pg_user"
    echo "postgres: private server $("$bin/pg_ctl" --version | awk '{print $3}') at $HOMEHUB_TEST_POSTGRES_URL" \
        "(data $dir/data, run as ${_homehub_pg_user:-$(id -un)})"
}

pg_stop() {
    [ -n "$_homehub_pg_dir" ] || return 0
    # The server may be stopped already (a test stopped it, or pg_start failed early).
    if [ -f "$_homehub_pg_dir/data/postmaster.pid" ]; then
        _homehub_pg_as "$_homehub_pg_bin/pg_ctl" -D "$_homehub_pg_dir/data" -m fast -w stop >/dev/null 2>&1 ||
            _homehub_pg_as "$_homehub_pg_bin/pg_ctl" -D "$_homehub_pg_dir/data" -m immediate -w stop >/dev/null 2>&1 ||
            true
    fi
    rm -rf "$_homehub_pg_dir"
    _homehub_pg_dir=''
    unset HOMEHUB_TEST_POSTGRES_URL HOMEHUB_TEST_POSTGRES_BIN HOMEHUB_TEST_POSTGRES_DATA \
        HOMEHUB_TEST_POSTGRES_LOG HOMEHUB_TEST_POSTGRES_USER
}
