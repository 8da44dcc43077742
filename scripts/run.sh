#!/usr/bin/env bash
# Runs the service (release build), from any directory:
#   scripts/run.sh [SERVE ARGS...]        e.g. scripts/run.sh --ack memory
# Uses TICKET_INGEST_DATABASE_URL (or DATABASE_URL) when set; otherwise starts
# the private PostgreSQL cluster in .data/pg on port 5499
# (TICKET_INGEST_PG_PORT), database ticket_ingest, and points the service at
# it. That cluster keeps running after the service stops: `scripts/pg.sh stop`.
# The service applies the migrations when it starts. Without admin_tokens
# configured it generates a review desk token for the run and prints the
# link that opens the desk (admin_listen, 127.0.0.1:9099).
# PARTITIONED=1 scripts/run.sh first runs `ticket-ingest migrate
# --partitioned`: tickets and ticket_lines partitioned by received_at with
# pg_partman (Debian's postgresql-15-partman must be installed; an existing
# database's tables are converted, see docs/scaling.md).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

if [ -z "${TICKET_INGEST_DATABASE_URL:-}" ] && [ -z "${DATABASE_URL:-}" ]; then
    port="${TICKET_INGEST_PG_PORT:-5499}"
    echo "==> private PostgreSQL in .data/pg on 127.0.0.1:$port (stop it with scripts/pg.sh stop)"
    pg_start "$repo/.data/pg" "$port"
    TICKET_INGEST_DATABASE_URL="$(pg_url "$port" ticket_ingest)"
    export TICKET_INGEST_DATABASE_URL
fi
echo "==> database: ${TICKET_INGEST_DATABASE_URL:-$DATABASE_URL}"
listen="${TICKET_INGEST_LISTEN:-127.0.0.1:9098}"
previous=""
for arg in "$@"; do
    case "$arg" in --listen=*) listen="${arg#--listen=}" ;; esac
    [ "$previous" = "--listen" ] && listen="$arg"
    previous="$arg"
done
# The review desk needs a token: generate one unless the environment or the
# config file gives some, and print the link that logs in with it.
admin_listen="${TICKET_INGEST_ADMIN_LISTEN:-127.0.0.1:9099}"
if [ -z "${TICKET_INGEST_ADMIN_TOKENS:-}" ] && ! grep -Eq '^admin_tokens = \[ *"' config/ticket-ingest.toml 2>/dev/null; then
    TICKET_INGEST_ADMIN_TOKENS="admin:$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    export TICKET_INGEST_ADMIN_TOKENS
    echo "==> review desk token generated for this run (set admin_tokens to keep one)"
fi
if [ -n "$admin_listen" ] && [ -n "${TICKET_INGEST_ADMIN_TOKENS:-}" ]; then
    secret="${TICKET_INGEST_ADMIN_TOKENS%%,*}"
    secret="${secret#*:}"
    echo "==> review desk: http://$admin_listen/login?token=$secret&next=/tickets"
fi
echo "==> ticket-ingest will listen on http://$listen (POST /ticket, GET /healthz); Ctrl-C stops it"
if [ -n "${PARTITIONED:-}" ]; then
    echo "==> partitioned tables (pg_partman): ticket-ingest migrate --partitioned"
    cargo run --release --quiet -- migrate --partitioned
fi
exec cargo run --release -- serve "$@"
