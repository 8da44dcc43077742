#!/usr/bin/env bash
# One benchmark run, side by side on this machine:
#   1. nginx answering 200 to the same wrk load   (the HTTP ceiling)
#   2. ticket-ingest end to end: answered AND committed in PostgreSQL
#   3. PostgreSQL's own COPY of the same rows      (the database ceiling)
#   4. optionally (--backlog N): N tickets accepted while the writers are
#      held back, then the time the writers take to commit them all
# on a fresh database, with --partitioned one made by `ticket-ingest
# migrate --partitioned` (pg_partman: postgresql-15-partman),
# and prints each figure, the ratios, p50/p99 ack latency, peak RSS and the
# zero-loss check (rows committed >= 202 answers), and appends a CSV row to
# loadtest/results.csv. Traffic: `sample` posts loadtest/ticket.txt on every
# request (the old service's load), `realistic` (default) generates
# tickets of 1-30 Zipf-distributed lines, 2 % malformed (loadtest/tickets.lua),
# `large` posts one 60 KB ticket of 1 500 lines on every request (memory
# under overload), and a file name posts that file on every request.
#
#   loadtest/bench.sh [--ack wal|commit|memory] [--duration 10] [--connections 50]
#                     [--backlog 100000] [--label TEXT] [--partitioned]
#                     [--traffic sample|realistic|large|FILE] [--zipf 1.1] [--malformed 0.02]
#                     [-- extra ticket-ingest flags, e.g. --writers 3]
#
# Database: TICKET_INGEST_DATABASE_URL's server when set (a fresh database is
# created in it), else the private cluster of scripts/pg.sh. Installs wrk,
# nginx and python3 with apt-get when missing and root.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

ack=wal duration=10 connections=50 backlog=0 zipf=1.1 malformed=0.02 label="" traffic=realistic partitioned=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ack) ack="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --backlog) backlog="$2"; shift 2 ;;
        --zipf) zipf="$2"; shift 2 ;;
        --malformed) malformed="$2"; shift 2 ;;
        --label) label="$2"; shift 2 ;;
        --traffic) traffic="$2"; shift 2 ;;
        --partitioned) partitioned=1; shift ;;
        --) shift; break ;;
        *) sed -n '2,22p' "$0"; exit 2 ;;
    esac
done
extra_flags=("$@")

# shellcheck source=loadtest/need.sh
source loadtest/need.sh
need wrk
need nginx nginx-light
need python3

echo "==> building the release binary"
cargo build --release --quiet
binary="${CARGO_TARGET_DIR:-$repo/target}/release/ticket-ingest"

work="$(mktemp -d /var/tmp/ticket-ingest-bench.XXXXXX)"
chmod 777 "$work"  # the COPY files are written by the PostgreSQL server
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- database -------------------------------------------------------------
server_url="$(pg_server_for_load_tests "$repo")"
database="bench_$(date +%s)"
psql "$server_url/postgres" -qc "CREATE DATABASE $database"
database_url="$server_url/$database"
sql() { psql "$database_url" -qtAc "$1"; }
if [ -n "$partitioned" ]; then
    echo "==> partitioned tables: ticket-ingest migrate --partitioned"
    TICKET_INGEST_DATABASE_URL="$database_url" TICKET_INGEST_LOG_LEVEL=warn \
        "$binary" migrate --partitioned --config config/ticket-ingest.toml >/dev/null
fi

export TICKETS_ZIPF_S="$zipf" TICKETS_MALFORMED="$malformed"
script=loadtest/tickets.lua
case "$traffic" in
    sample) export TICKETS_FILE=loadtest/ticket.txt ;;
    realistic) ;;
    large)
        export TICKETS_FILE="$work/large.txt"
        awk 'BEGIN { print "Order: 987654\nVAT: 0.00\nTotal: 1875.00\n\nproduct,product_id,price"
                     for (i = 0; i < 1500; i++) printf "Article de rayon numero %d,P%05d,1.25\n", i, i }' >"$TICKETS_FILE" ;;
    *) [ -f "$traffic" ] || { echo "--traffic sample|realistic|large|FILE" >&2; exit 2; }
       export TICKETS_FILE="$traffic" ;;
esac
wrk_run() { # URL OUTPUT
    wrk -t1 -c"$connections" -d"${duration}s" --latency -s "$script" "$1" >"$2"
}
requests_per_second() { awk '/^Requests\/sec:/ { printf "%d", $2 }' "$1"; }
percentile() { awk -v p="$2" '$1 == p"%" { print $2 }' "$1"; }
accepted_of() { awk '$1 == "status" && $2 == "202:" { print $3 }' "$1"; }

# --- 1. nginx ---------------------------------------------------------------
nginx_port="$(pg_free_port 18080)"
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx;
    server {
        listen 127.0.0.1:$nginx_port;
        location / { return 200; }
    }
}
EOF
nginx -c "$work/nginx/nginx.conf"
sleep 0.3
echo "==> wrk against nginx (return 200)"
wrk_run "http://127.0.0.1:$nginx_port/ticket" "$work/nginx.txt"
nginx -c "$work/nginx/nginx.conf" -s stop
nginx_rps="$(requests_per_second "$work/nginx.txt")"

# --- 2. ticket-ingest end to end ----------------------------------------------
service_port="$(pg_free_port 19098)"
start_service() { # extra env assignments...
    env "$@" TICKET_INGEST_DATABASE_URL="$database_url" TICKET_INGEST_ACK="$ack" \
        TICKET_INGEST_LISTEN="127.0.0.1:$service_port" TICKET_INGEST_WAL_DIR="$work/wal" \
        TICKET_INGEST_LOG_LEVEL=warn "$binary" serve --config config/ticket-ingest.toml "${extra_flags[@]}" \
        2>>"$work/service.log" &
    service_pid=$!
    pids+=("$service_pid")
    for _ in $(seq 1 600); do
        curl -fs "http://127.0.0.1:$service_port/healthz" >/dev/null 2>&1 && return
        kill -0 "$service_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "ticket-ingest did not start:" >&2; tail -n 20 "$work/service.log" >&2; exit 1
}
start_service
echo "==> wrk against ticket-ingest (ack = $ack)"
started_ns="$(date +%s%N)"
wrk_run "http://127.0.0.1:$service_port/ticket" "$work/ingest.txt"
accepted="$(accepted_of "$work/ingest.txt")"
accepted="${accepted:-0}"
committed_ns="$(python3 loadtest/wait_committed.py "$service_port" 60)" || committed_ns="$(date +%s%N)"
landed="$(sql "SELECT count(*) FROM tickets")"
peak_rss_kb="$(awk '/VmHWM/ { print $2 }' "/proc/$service_pid/status")"
elapsed_s="$(echo "scale=3; ($committed_ns - $started_ns) / 1000000000" | bc)"
ingest_rps="$(echo "$accepted / $elapsed_s" | bc)"
p50="$(percentile "$work/ingest.txt" 50)"
p99="$(percentile "$work/ingest.txt" 99)"
non_202="$(awk '$1 == "status" && $2 != "202:" { n += $3 } END { print n + 0 }' "$work/ingest.txt")"
lines="$(sql "SELECT count(*) FROM ticket_lines")"
lost=$(( accepted > landed ? accepted - landed : 0 ))
kill -TERM "$service_pid"; wait "$service_pid" || true

# --- 3. COPY of the same rows ---------------------------------------------------
echo "==> COPY of the same $landed tickets and $lines lines"
sql "CREATE TABLE copy_tickets (LIKE tickets INCLUDING ALL); CREATE TABLE copy_lines (LIKE ticket_lines INCLUDING ALL)"
sql "COPY (SELECT * FROM tickets) TO '$work/tickets.bin' WITH (FORMAT binary); COPY (SELECT * FROM ticket_lines) TO '$work/lines.bin' WITH (FORMAT binary)"
# Both timed bulk writes (COPY, and the backlog drain below) start right
# after a checkpoint, so that neither pays for the other's dirty pages or
# for the full-page images a checkpoint in the middle would add.
sql "CHECKPOINT"
copy_started="$(date +%s%N)"
psql "$database_url" -qc "BEGIN; COPY copy_tickets FROM '$work/tickets.bin' WITH (FORMAT binary); COPY copy_lines FROM '$work/lines.bin' WITH (FORMAT binary); COMMIT;"
copy_ns=$(( $(date +%s%N) - copy_started ))
copy_rps="$(echo "$landed * 1000000000 / $copy_ns" | bc)"

# --- 4. backlog drain (optional) ---------------------------------------------------
drain_rps=""
if [ "$backlog" -gt 0 ]; then
    echo "==> backlog: $backlog tickets accepted while the writers are held back"
    sql "TRUNCATE tickets, ticket_lines, products; CHECKPOINT"
    PGAPPNAME=bench-locker psql "$database_url" -qc \
        "BEGIN; LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);" >/dev/null 2>&1 &
    locker=$!
    pids+=("$locker")
    sleep 0.3
    # Room for the whole backlog in both budgets (a parsed ticket of 30 lines
    # holds well under 16 KiB).
    start_service TICKET_INGEST_QUEUE_CAPACITY="$((backlog + 1000))" \
        TICKET_INGEST_QUEUE_MAX_BYTES="$(((backlog + 1000) * 16384))"
    wrk -t1 -c"$connections" -d"$((duration * 3))s" -s "$script" \
        "http://127.0.0.1:$service_port/ticket" >"$work/backlog.txt" &
    wrk_pid=$!
    waited=0
    while [ "$(curl -fs "http://127.0.0.1:$service_port/metrics" | awk '$1 == "ticket_ingest_in_flight" { print $2 }')" -lt "$backlog" ]; do
        sleep 0.2
        waited=$((waited + 1))
        if [ "$waited" -gt 600 ] || ! kill -0 "$wrk_pid" 2>/dev/null; then
            echo "the backlog did not reach $backlog tickets in flight:" >&2
            curl -fs "http://127.0.0.1:$service_port/metrics" | grep -E '^ticket_ingest_(in_flight|requests_total)' >&2
            exit 1
        fi
    done
    kill -INT "$wrk_pid"; wait "$wrk_pid" || true
    held="$(curl -fs "http://127.0.0.1:$service_port/metrics" | awk '$1 == "ticket_ingest_in_flight" { print $2 }')"
    drain_started="$(date +%s%N)"
    # Killing psql would not end the server's pg_sleep: end the session itself.
    sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench-locker'" >/dev/null
    wait "$locker" 2>/dev/null || true
    drained_ns="$(python3 loadtest/wait_committed.py "$service_port" 600)"
    until [ "$(sql "SELECT count(*) FROM tickets")" -ge "$held" ]; do sleep 0.5; done
    drain_ns=$(( drained_ns - drain_started ))
    drain_rps="$(echo "$held * 1000000000 / $drain_ns" | bc)"
    kill -TERM "$service_pid"; wait "$service_pid" || true
fi

# --- report -------------------------------------------------------------------------
ratio() { echo "scale=2; $1 / $2" | bc; }
echo
echo "ticket-ingest bench${partitioned:+ (partitioned tables)}: ack=$ack, wrk -t1 -c$connections -d${duration}s, traffic=$traffic (zipf=$zipf, malformed=$malformed) ${extra_flags[*]}"
printf '  %-44s %10s req/s      (p50 %s, p99 %s)\n' "nginx return 200" "$nginx_rps" \
    "$(percentile "$work/nginx.txt" 50)" "$(percentile "$work/nginx.txt" 99)"
printf '  %-44s %10s tickets/s  (%s x nginx)\n' "ticket-ingest answered+committed" "$ingest_rps" "$(ratio "$ingest_rps" "$nginx_rps")"
printf '  %-44s %10s tickets/s  (ticket-ingest = %s x COPY)\n' "COPY of the same rows ($lines lines)" "$copy_rps" "$(ratio "$ingest_rps" "$copy_rps")"
if [ -n "$drain_rps" ]; then
    printf '  %-44s %10s tickets/s  (%s x COPY)\n' "backlog drain ($held tickets)" "$drain_rps" "$(ratio "$drain_rps" "$copy_rps")"
fi
echo "  ack latency p50 $p50, p99 $p99; peak RSS $((peak_rss_kb / 1024)) MiB"
echo "  zero-loss check: 202 answers $accepted, rows committed $landed, lost $lost, non-202 answers $non_202"
results="$repo/loadtest/results.csv"
[ -f "$results" ] || echo "date,label,traffic,ack,connections,duration_s,nginx_rps,ingest_tps,copy_tps,drain_tps,p50,p99,peak_rss_mib,accepted,landed,lost,flags" >"$results"
echo "$(date -u +%FT%TZ),$label,$traffic,$ack,$connections,$duration,$nginx_rps,$ingest_rps,$copy_rps,$drain_rps,$p50,$p99,$((peak_rss_kb / 1024)),$accepted,$landed,$lost,${extra_flags[*]}" >>"$results"
psql "$server_url/postgres" -qc "DROP DATABASE $database" || true
[ "$lost" -eq 0 ]
