#!/usr/bin/env bash
# Runs the service (release build) on http://127.0.0.1:9098.
#
# Uses TICKET_INGEST_DATABASE_URL (or DATABASE_URL) when set; otherwise starts
# a private PostgreSQL in .data/pg on port 5499 (TICKET_INGEST_PG_PORT) and
# uses its database ticket_ingest. Stop that cluster with `scripts/pg.sh stop`.
# Extra arguments go to `ticket-ingest serve`, e.g. `scripts/run.sh --ack memory`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

if [ -z "${TICKET_INGEST_DATABASE_URL:-}" ] && [ -z "${DATABASE_URL:-}" ]; then
    port="${TICKET_INGEST_PG_PORT:-5499}"
    echo "==> starting the private PostgreSQL in .data/pg (port $port; stop it with scripts/pg.sh stop)"
    pg_start "$repo/.data/pg" "$port"
    TICKET_INGEST_DATABASE_URL="$(pg_url "$port" ticket_ingest)"
    export TICKET_INGEST_DATABASE_URL
fi
echo "==> database: ${TICKET_INGEST_DATABASE_URL:-$DATABASE_URL}"
echo "==> building and starting ticket-ingest (listens on ${TICKET_INGEST_LISTEN:-127.0.0.1:9098}; Ctrl-C stops it)"
exec cargo run --release --quiet -- serve "$@"
