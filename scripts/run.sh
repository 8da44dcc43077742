#!/usr/bin/env bash
# Runs the service (release build), from any directory:
#   scripts/run.sh [SERVE ARGS...]        e.g. scripts/run.sh --ack memory
# Uses TICKET_INGEST_DATABASE_URL (or DATABASE_URL) when set; otherwise starts
# the private PostgreSQL cluster in .data/pg on port 5499
# (TICKET_INGEST_PG_PORT), database ticket_ingest, and points the service at
# it. That cluster keeps running after the service stops: `scripts/pg.sh stop`.
# The service applies the migrations when it starts.
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
echo "==> ticket-ingest will listen on http://$listen (POST /ticket, GET /healthz); Ctrl-C stops it"
exec cargo run --release -- serve "$@"
