#!/usr/bin/env bash
# A private PostgreSQL cluster from the machine's own PostgreSQL binaries.
#
# Sourced by the other scripts for its functions:
#   pg_start DATA_DIR PORT   initialise (once) and start on 127.0.0.1:PORT
#   pg_stop DATA_DIR         stop it (fast shutdown)
#   pg_url PORT DBNAME       create the database when missing, print its URL
#   pg_free_port START       first port from START on where nothing listens
# or run directly against the repository's own cluster in .data/pg
# (port 5499, or TICKET_INGEST_PG_PORT):
#   scripts/pg.sh start|stop|status|url
# The service refuses TICKET_INGEST_* variables that are not config keys,
# save those listed in SCRIPT_VARIABLES (src/config.rs): a new variable of
# the scripts with that prefix goes there too.
#
# As root, PostgreSQL runs as the `postgres` user (created when missing).
# That user cannot enter a root-only directory (root's home is mode 700), so
# the data directory then lives under /var/tmp/ticket-ingest/<hash>/ and the
# requested path is a symlink to it. fsync and synchronous_commit stay on:
# the service acknowledges tickets on the strength of them.

PG_USER_AS_ROOT=postgres
PG_FALLBACK_ROOT=/var/tmp/ticket-ingest

# Sets PG_BINDIR to the PostgreSQL server binaries: `pg_config --bindir`, else
# the newest /usr/lib/postgresql/*/bin. Installs Debian's package when there
# are none and we are root; otherwise says what to install and fails.
pg_find_binaries() {
    [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ] && return 0
    local bindir=""
    if command -v pg_config >/dev/null 2>&1; then
        bindir="$(pg_config --bindir 2>/dev/null || true)"
    fi
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        bindir="$(pg_newest_bindir)"
    fi
    if [ -z "$bindir" ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "PostgreSQL server binaries (initdb, pg_ctl) not found." >&2
            echo "Install them: sudo apt-get install postgresql   (Debian/Ubuntu)" >&2
            echo "or point the service at a database with TICKET_INGEST_DATABASE_URL." >&2
            return 1
        fi
        echo "==> installing PostgreSQL (Debian package postgresql)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bindir="$(pg_newest_bindir)"
        if [ -z "$bindir" ]; then
            echo "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb appeared" >&2
            return 1
        fi
    fi
    PG_BINDIR="$bindir"
}

pg_newest_bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && echo "$dir"
    done | sort -V | tail -n 1
}

pg_is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs a command as the cluster's owner: `postgres` when we are root (from /,
# since that user may not be allowed into the current directory), else us.
pg_as_owner() {
    if pg_is_root; then
        (cd / && runuser -u "$PG_USER_AS_ROOT" -- "$@")
    else
        "$@"
    fi
}

pg_ensure_owner_user() {
    pg_is_root || return 0
    id -u "$PG_USER_AS_ROOT" >/dev/null 2>&1 && return 0
    echo "==> creating the system user $PG_USER_AS_ROOT" >&2
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash "$PG_USER_AS_ROOT"
}

# True when the cluster's owner can reach (traverse) the deepest existing
# directory on the way to $1.
pg_reachable_by_owner() {
    local dir
    dir="$(dirname "$1")"
    while [ ! -d "$dir" ]; do dir="$(dirname "$dir")"; done
    pg_as_owner test -x "$dir"
}

# Makes DATA_DIR usable as a data directory by the cluster's owner and prints
# the real path (the symlink's target when DATA_DIR is or becomes a symlink).
pg_prepare_dir() {
    local requested="$1" real hash
    if ! pg_is_root; then
        mkdir -p "$requested"
        chmod 700 "$requested"
        echo "$requested"
        return
    fi
    pg_ensure_owner_user
    # Absolute and canonical, without following DATA_DIR itself.
    requested="$(readlink -m "$(dirname "$requested")")/$(basename "$requested")"
    if [ -L "$requested" ]; then
        real="$(readlink -m "$requested")"
    elif (umask 022 && mkdir -p "$(dirname "$requested")") && pg_reachable_by_owner "$requested"; then
        real="$requested"
    else
        hash="$(printf '%s' "$requested" | sha1sum | cut -c1-12)"
        real="$PG_FALLBACK_ROOT/$hash/pg"
        if [ -e "$requested" ] && [ ! -L "$requested" ]; then
            rmdir "$requested" 2>/dev/null || {
                echo "$requested exists and $PG_USER_AS_ROOT cannot reach it; move it away" >&2
                return 1
            }
        fi
        ln -sfn "$real" "$requested"
        echo "==> $PG_USER_AS_ROOT cannot reach $(dirname "$requested"): data in $real, $requested links to it" >&2
    fi
    (umask 022 && mkdir -p "$real")
    if [[ "$real" == "$PG_FALLBACK_ROOT"/* ]]; then
        chmod 755 "$PG_FALLBACK_ROOT" "$(dirname "$real")"
    fi
    if [ "$(stat -c %U "$real")" != "$PG_USER_AS_ROOT" ]; then
        chown -R "$PG_USER_AS_ROOT:" "$real"
    fi
    chmod 700 "$real"
    echo "$real"
}

# The real data directory behind DATA_DIR (which may be a symlink).
pg_real_dir() { readlink -m "$1"; }

# pg_start DATA_DIR PORT: initialises the cluster when needed and starts it
# on 127.0.0.1:PORT, socket and server.log in the data directory. Does
# nothing when a server already runs on that data directory.
pg_start() {
    local requested="$1" port="$2" data running_port
    pg_find_binaries || return 1
    data="$(pg_prepare_dir "$requested")" || return 1
    if [ ! -f "$data/PG_VERSION" ]; then
        echo "==> initdb $data" >&2
        if ! pg_as_owner "$PG_BINDIR/initdb" -D "$data" -U postgres -A trust \
            --encoding=UTF8 --locale=C >"$data.initdb.log" 2>&1; then
            cat "$data.initdb.log" >&2
            return 1
        fi
    fi
    if pg_as_owner "$PG_BINDIR/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        running_port="$(sed -n 4p "$data/postmaster.pid" 2>/dev/null || true)"
        if [ -n "$running_port" ] && [ "$running_port" != "$port" ]; then
            echo "warning: the cluster in $data already runs, on port $running_port (not $port)" >&2
        fi
        return 0
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port on 127.0.0.1 is already taken (another PostgreSQL, perhaps the cluster of another clone)." >&2
        echo "Pick a free one, e.g.: TICKET_INGEST_PG_PORT=$(pg_free_port "$port") $0" >&2
        return 1
    fi
    # Throwaway/dev tuning, durability untouched: fsync and synchronous_commit
    # are set on explicitly so no stray configuration can turn them off.
    if ! pg_as_owner "$PG_BINDIR/pg_ctl" -D "$data" -w -t 60 -l "$data/server.log" \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$data' \
-c max_connections=200 -c shared_buffers=256MB \
-c fsync=on -c synchronous_commit=on -c full_page_writes=on \
-c max_wal_size=2GB -c checkpoint_timeout=15min -c log_line_prefix='%m [%p] '" \
        start >/dev/null; then
        echo "PostgreSQL failed to start; the end of $data/server.log:" >&2
        tail -n 20 "$data/server.log" >&2
        return 1
    fi
}

# pg_stop DATA_DIR: stops the cluster when it runs.
pg_stop() {
    local data
    pg_find_binaries || return 1
    data="$(pg_real_dir "$1")"
    [ -f "$data/PG_VERSION" ] || return 0
    pg_as_owner "$PG_BINDIR/pg_ctl" -D "$data" status >/dev/null 2>&1 || return 0
    pg_as_owner "$PG_BINDIR/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
}

# pg_url PORT DBNAME: creates database DBNAME when missing (on the server at
# 127.0.0.1:PORT) and prints its URL.
pg_url() {
    local port="$1" db="$2" exists
    pg_find_binaries || return 1
    exists="$(printf '%s\n' "SELECT 1 FROM pg_database WHERE datname = :'db'" |
        "$PG_BINDIR/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -tA -v ON_ERROR_STOP=1 -v db="$db")" || return 1
    if [ "$exists" != 1 ]; then
        "$PG_BINDIR/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" || return 1
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
    pg_start "$1/.data/pg" "$port" >&2 || return 1
    echo "postgres://postgres@127.0.0.1:$port"
}

# pg_free_port START: the first port from START on where nothing listens on
# 127.0.0.1.
pg_free_port() {
    local port="$1"
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
        if [ "$port" -gt 65535 ]; then
            echo "no free port from $1 on" >&2
            return 1
        fi
    done
    echo "$port"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    data="$repo/.data/pg"
    port="${TICKET_INGEST_PG_PORT:-5499}"
    pg_find_binaries || exit 1
    running() { pg_as_owner "$PG_BINDIR/pg_ctl" -D "$(pg_real_dir "$data")" status >/dev/null 2>&1; }
    case "${1:-status}" in
        start)
            pg_start "$data" "$port"
            pg_url "$port" ticket_ingest
            ;;
        stop)
            pg_stop "$data"
            echo "stopped ($data)"
            ;;
        url)
            if running; then
                pg_url "$port" ticket_ingest
            else
                echo "postgres://postgres@127.0.0.1:$port/ticket_ingest"
                echo "(not running: scripts/pg.sh start)" >&2
            fi
            ;;
        status)
            if running; then
                echo "running: $data -> $(pg_real_dir "$data"), postgres://postgres@127.0.0.1:$(sed -n 4p "$(pg_real_dir "$data")/postmaster.pid")/ticket_ingest"
            else
                echo "not running ($data)"
                exit 3
            fi
            ;;
        -h | --help | help) sed -n '2,17p' "$0" ;;
        *)
            echo "usage: scripts/pg.sh start|stop|status|url" >&2
            exit 2
            ;;
    esac
fi
