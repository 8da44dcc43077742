#!/usr/bin/env bash
# Memory over a long run: does RSS stay flat over millions of tickets?
#   loadtest/soak.sh [--tickets 10000000] [--ack wal] [--connections 50]
# Starts the release build (default config, a fresh database), posts the
# sample ticket with wrk until --tickets were answered 202, samples the
# service's RSS every 10 s into loadtest/soak.csv (seconds, tickets
# accepted so far, RSS MiB), waits until every accepted ticket is
# committed, and prints the RSS after the first million tickets, at the
# end, its peak, and the zero-loss check. Exits non-zero on a lost ticket.
# Database: as loadtest/bench.sh (TICKET_INGEST_DATABASE_URL's server, else
# the private cluster of scripts/pg.sh).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

tickets=10000000 ack=wal connections=50
while [ $# -gt 0 ]; do
    case "$1" in
        --tickets) tickets="$2"; shift 2 ;;
        --ack) ack="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        *) sed -n '2,12p' "$0"; exit 2 ;;
    esac
done
# shellcheck source=loadtest/need.sh
source loadtest/need.sh
need wrk

echo "==> building the release binary"
cargo build --release --quiet
work="$(mktemp -d /var/tmp/ticket-ingest-soak.XXXXXX)"
service_pid=""
cleanup() {
    if [ -n "$service_pid" ]; then kill "$service_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

server_url="$(pg_server_for_load_tests "$repo")"
database="soak_$(date +%s)"
psql "$server_url/postgres" -qc "CREATE DATABASE $database"
database_url="$server_url/$database"
port="$(pg_free_port 19298)"
TICKET_INGEST_DATABASE_URL="$database_url" TICKET_INGEST_ACK="$ack" TICKET_INGEST_LISTEN="127.0.0.1:$port" \
    TICKET_INGEST_WAL_DIR="$work/wal" TICKET_INGEST_LOG_LEVEL=warn \
    target/release/ticket-ingest serve --config config/ticket-ingest.toml 2>"$work/service.log" &
service_pid=$!
until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    kill -0 "$service_pid" 2>/dev/null || { tail -n 20 "$work/service.log" >&2; exit 1; }
    sleep 0.05
done

accepted_so_far() {
    curl -fs "http://127.0.0.1:$port/metrics" | awk '$1 ~ /^ticket_ingest_tickets_accepted_total/ { n += $2 } END { printf "%d", n }'
}
rss_mib() { awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$service_pid/status"; }

csv="$repo/loadtest/soak.csv"
echo "seconds,accepted,rss_mib" >"$csv"
TICKETS_FILE=loadtest/ticket.txt wrk -t1 -c"$connections" -d10000s -s loadtest/tickets.lua \
    "http://127.0.0.1:$port/ticket" >"$work/wrk.txt" &
wrk_pid=$!
started="$(date +%s)"
rss_at_million=""
while :; do
    sleep 10
    accepted="$(accepted_so_far)"
    rss="$(rss_mib)"
    echo "$(( $(date +%s) - started )),$accepted,$rss" | tee -a "$csv"
    [ -z "$rss_at_million" ] && [ "$accepted" -ge 1000000 ] && rss_at_million="$rss"
    [ "$accepted" -ge "$tickets" ] && break
done
kill -INT "$wrk_pid"; wait "$wrk_pid" || true
accepted="$(accepted_so_far)"
until [ "$(psql "$database_url" -qtAc "SELECT count(*) FROM tickets")" -ge "$accepted" ]; do sleep 0.5; done
landed="$(psql "$database_url" -qtAc "SELECT count(*) FROM tickets")"
peak="$(awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$service_pid/status")"
echo
echo "soak: $accepted tickets accepted (ack=$ack) in $(( $(date +%s) - started )) s"
echo "  RSS after 1 M tickets ${rss_at_million:-?} MiB, at the end $(rss_mib) MiB, peak $peak MiB (loadtest/soak.csv)"
echo "  zero-loss check: accepted $accepted, rows committed $landed, lost $(( accepted > landed ? accepted - landed : 0 ))"
kill -TERM "$service_pid"; wait "$service_pid" || true
service_pid=""
psql "$server_url/postgres" -qc "DROP DATABASE $database" || true
[ "$landed" -ge "$accepted" ]
