#!/usr/bin/env bash
# A private PostgreSQL cluster from the machine's own PostgreSQL binaries.
#
# Sourced by the other scripts for its functions (pg_start, pg_stop, pg_url),
# or run directly against the repository's own cluster in .data/pg:
#   scripts/pg.sh start|stop|status|url
#
# As root, PostgreSQL runs as the `postgres` user. That user cannot enter a
# root-only directory (root's home is mode 700), so the data directory then
# lives under /var/tmp/ticket-ingest/ and the requested path is a symlink to it.

PG_USER_AS_ROOT=postgres

# Puts the PostgreSQL binaries on PATH, installing Debian's package when
# they are missing and we are root.
pg_find_binaries() {
    local bindir=""
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        bindir="$(pg_config --bindir)"
    else
        bindir="$(printf "%s\n" /usr/lib/postgresql/*/bin | grep -v "\*" | sort -V | tail -n 1 || true)"
    fi
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "PostgreSQL server binaries not found. Install them (Debian: sudo apt-get install postgresql) or set TICKET_INGEST_DATABASE_URL." >&2
            return 1
        fi
        echo "==> installing PostgreSQL (Debian package postgresql)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bindir="$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    fi
    PG_BINDIR="$bindir"
}

# Runs a PostgreSQL binary as the cluster's owner.
pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        # From /: the owner may not be allowed into the current directory.
        (cd / && runuser -u "$PG_USER_AS_ROOT" -- "$@")
    else
        "$@"
    fi
}

# True when `postgres` can reach (traverse) every parent of $1.
pg_reachable_by_owner() {
    local dir
    dir="$(dirname "$1")"
    while [ ! -d "$dir" ]; do dir="$(dirname "$dir")"; done
    (cd / && runuser -u "$PG_USER_AS_ROOT" -- test -x "$dir")
}

# Makes sure $1 is a data directory the cluster's owner can use; prints the
# real path.
pg_prepare_dir() {
    local requested="$1"
    if [ "$(id -u)" -ne 0 ]; then
        mkdir -p "$requested"
        chmod 700 "$requested"
        echo "$requested"
        return
    fi
    id -u "$PG_USER_AS_ROOT" >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$PG_USER_AS_ROOT"
    local real="$requested"
    if [ -L "$requested" ]; then
        real="$(readlink -f "$requested")"
    elif ! pg_reachable_by_owner "$requested"; then
        local hash
        hash="$(printf '%s' "$(readlink -m "$requested")" | sha1sum | cut -c1-12)"
        real="/var/tmp/ticket-ingest/$hash/pg"
        mkdir -p "$(dirname "$requested")"
        ln -sfn "$real" "$requested"
    fi
    mkdir -p "$real"
    chmod 755 /var/tmp/ticket-ingest 2>/dev/null || true
    chown "$PG_USER_AS_ROOT" "$real"
    chmod 700 "$real"
    echo "$real"
}

# pg_start DATA_DIR PORT: initialises (once) and starts a cluster on
# 127.0.0.1:PORT. Does nothing when it already runs.
pg_start() {
    local requested="$1" port="$2" data
    pg_find_binaries || return 1
    data="$(pg_prepare_dir "$requested")"
    if [ ! -f "$data/PG_VERSION" ]; then
        pg_as_owner "$PG_BINDIR/initdb" -D "$data" -U postgres -A trust --encoding=UTF8 --locale=C >"$data.initdb.log" 2>&1 \
            || { cat "$data.initdb.log" >&2; return 1; }
    fi
    if pg_as_owner "$PG_BINDIR/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        return 0
    fi
    # fsync and synchronous_commit stay on: acknowledged tickets depend on them.
    pg_as_owner "$PG_BINDIR/pg_ctl" -D "$data" -w -t 60 -l "$data/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=200 -c shared_buffers=256MB" \
        start >/dev/null || { tail -n 20 "$data/server.log" >&2; return 1; }
}

pg_stop() {
    local requested="$1" data
    pg_find_binaries || return 1
    data="$(readlink -f "$requested" 2>/dev/null || echo "$requested")"
    [ -f "$data/PG_VERSION" ] || return 0
    pg_as_owner "$PG_BINDIR/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
}

# pg_url PORT DBNAME: creates the database when missing, prints its URL.
pg_url() {
    local port="$1" db="$2"
    if ! "$PG_BINDIR/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres | grep -q 1; then
        "$PG_BINDIR/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
    fi
    echo "postgres://postgres@127.0.0.1:$port/$db"
}

# pg_server_for_load_tests REPO: the server URL (no database) load tests
# create their databases in: TICKET_INGEST_DATABASE_URL's server when set,
# else the private cluster in REPO/.data/pg, started if needed.
pg_server_for_load_tests() {
    if [ -n "${TICKET_INGEST_DATABASE_URL:-}" ]; then
        echo "${TICKET_INGEST_DATABASE_URL%/*}"
        return
    fi
    local port="${TICKET_INGEST_PG_PORT:-5499}"
    pg_start "$1/.data/pg" "$port" >&2
    echo "postgres://postgres@127.0.0.1:$port"
}

# pg_free_port START: the first port from START on where nothing listens.
pg_free_port() {
    local port="$1"
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
    done
    echo "$port"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    data="$repo/.data/pg"
    port="${TICKET_INGEST_PG_PORT:-5499}"
    case "${1:-status}" in
        start) pg_start "$data" "$port" && pg_url "$port" ticket_ingest ;;
        stop) pg_stop "$data" && echo "stopped" ;;
        url) pg_find_binaries && echo "postgres://postgres@127.0.0.1:$port/ticket_ingest" ;;
        status)
            pg_find_binaries
            real="$(readlink -f "$data" 2>/dev/null || echo "$data")"
            pg_as_owner "$PG_BINDIR/pg_ctl" -D "$real" status || true
            ;;
        *) echo "usage: scripts/pg.sh start|stop|status|url" >&2; exit 2 ;;
    esac
fi
