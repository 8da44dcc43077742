#!/usr/bin/env bash
# The old service's load command, plus a zero-loss check:
#   loadtest/hey.sh [-n REQUESTS] [-c CLIENTS] [URL]
# runs `hey -n N -c C -m POST -D loadtest/ticket.txt URL` against a running
# ticket-ingest, then waits until the tickets table grew by as many rows as
# there were 202 answers. Exits non-zero if any acknowledged ticket is missing.
# Database: TICKET_INGEST_DATABASE_URL, DATABASE_URL, or the private cluster
# of scripts/run.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requests=2000
clients=50
while getopts "n:c:" option; do
    case "$option" in
        n) requests="$OPTARG" ;;
        c) clients="$OPTARG" ;;
        *) sed -n '2,8p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
url="${1:-http://localhost:9098/ticket}"
database="${TICKET_INGEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:${TICKET_INGEST_PG_PORT:-5499}/ticket_ingest}}"

if ! command -v hey >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq hey
    else
        echo "hey is not installed: sudo apt-get install hey" >&2
        exit 1
    fi
fi

rows() { psql "$database" -tAc "SELECT count(*) FROM tickets"; }
before="$(rows)"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
hey -n "$requests" -c "$clients" -m POST -D "$repo/loadtest/ticket.txt" "$url" | tee "$report"
accepted="$(awk '$1 == "[202]" { print $2 }' "$report")"
accepted="${accepted:-0}"

landed=0
for _ in $(seq 1 300); do
    landed=$(( $(rows) - before ))
    [ "$landed" -ge "$accepted" ] && break
    sleep 0.1
done
lost=$(( accepted > landed ? accepted - landed : 0 ))
echo "sent $requests, 202: $accepted, landed: $landed, lost: $lost"
[ "$lost" -eq 0 ]
