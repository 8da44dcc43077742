#!/usr/bin/env bash
# The old service's load command, plus a zero-loss check:
#   loadtest/hey.sh [-n REQUESTS] [-c CLIENTS] [URL]    (or HEY_N=, HEY_C=)
# runs `hey -n N -c C -m POST -D loadtest/ticket.txt URL` (N 2000, C 50, URL
# http://localhost:9098/ticket) against a running ticket-ingest, then waits
# up to 30 s until the tickets table grew by at least as many rows as there
# were 202 answers, and prints `sent N, 202: A, landed: L, lost: X`.
# Exits non-zero if any acknowledged ticket is missing or nothing got a 202.
# Database: TICKET_INGEST_DATABASE_URL, DATABASE_URL, or the private cluster
# of scripts/run.sh (scripts/pg.sh url). Installs hey (apt) when root.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

requests="${HEY_N:-2000}"
clients="${HEY_C:-50}"
while getopts "n:c:h" option; do
    case "$option" in
        n) requests="$OPTARG" ;;
        c) clients="$OPTARG" ;;
        *) sed -n '2,10p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
url="${1:-http://localhost:9098/ticket}"

if ! command -v hey >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "hey is not installed: sudo apt-get install hey" >&2
        exit 1
    fi
    echo "==> installing hey (Debian package hey)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null
fi

database="${TICKET_INGEST_DATABASE_URL:-${DATABASE_URL:-}}"
if [ -z "$database" ]; then
    pg_find_binaries
    database="$(pg_url "${TICKET_INGEST_PG_PORT:-5499}" ticket_ingest)" || {
        echo "no database: set TICKET_INGEST_DATABASE_URL or start the service with scripts/run.sh" >&2
        exit 1
    }
fi
psql_bin="$(command -v psql || echo "${PG_BINDIR:-}/psql")"
rows() { "$psql_bin" -X -q -tA -v ON_ERROR_STOP=1 -d "$database" -c "SELECT count(*) FROM tickets"; }
before="$(rows)" || {
    echo "cannot count the tickets in $database (is the service running there, migrations applied?)" >&2
    exit 1
}

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
echo "==> hey -n $requests -c $clients -m POST -D loadtest/ticket.txt $url"
hey -n "$requests" -c "$clients" -m POST -D loadtest/ticket.txt "$url" | tee "$report"
# Status code distribution lines look like "  [202]	1998 responses".
accepted="$(awk '$1 == "[202]" { n += $2 } END { print n + 0 }' "$report")"

landed=0
deadline=$((SECONDS + 30))
while :; do
    landed=$(($(rows) - before))
    [ "$landed" -ge "$accepted" ] && break
    [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.2
done
lost=$((accepted > landed ? accepted - landed : 0))
echo "sent $requests, 202: $accepted, landed: $landed, lost: $lost"
if [ "$accepted" -eq 0 ]; then
    echo "no request was answered 202: is ticket-ingest running at $url?" >&2
    exit 1
fi
[ "$lost" -eq 0 ]
