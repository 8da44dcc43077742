#!/usr/bin/env bash
# Tuning sweep: the same wrk load against ticket-ingest under several
# configurations, for an SRE choosing batch size and writers.
#   loadtest/sweep.sh [--duration 8] [--repeat 3] [--traffic sample|realistic]
# For each of batch_max_tickets in {50, 200, 500, 2000} x writers in {1, 2, 3}
# (ack = wal), then ack = commit and ack = memory at the defaults, it records
# committed tickets/s (wrk start to last commit), p99 ack latency and database
# commits/s (flushed batches / s). The whole list runs --repeat times, pass
# after pass, so that the machine's drift hits every point alike; every run
# goes to loadtest/sweep-runs.csv, the median of each point to
# loadtest/sweep.csv, drawn in docs/tuning.png (gnuplot). Database: as
# loadtest/bench.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

duration=8 repeat=3 traffic=sample
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        --traffic) traffic="$2"; shift 2 ;;
        *) sed -n '2,13p' "$0"; exit 2 ;;
    esac
done
script=loadtest/tickets.lua
[ "$traffic" = sample ] && export TICKETS_FILE=loadtest/ticket.txt
# shellcheck source=loadtest/need.sh
source loadtest/need.sh
need wrk
need gnuplot gnuplot-nox
need python3
cargo build --release --quiet
binary="$repo/target/release/ticket-ingest"
server_url="$(pg_server_for_load_tests "$repo")"
work="$(mktemp -d /var/tmp/ticket-ingest-sweep.XXXXXX)"
trap 'rm -rf "$work"' EXIT
service_port="$(pg_free_port 19198)"
results="$repo/loadtest/sweep.csv"
runs="$repo/loadtest/sweep-runs.csv"
header="ack,writers,batch_max_tickets,tickets_per_s,p99_ms,commits_per_s"
echo "pass,$header" >"$runs"

metric() { curl -fs "http://127.0.0.1:$service_port/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }

run_point() { # ACK WRITERS BATCH
    local ack="$1" writers="$2" batch="$3" database
    database="sweep_$(date +%s%N)"
    psql "$server_url/postgres" -qc "CREATE DATABASE $database"
    TICKET_INGEST_DATABASE_URL="$server_url/$database" TICKET_INGEST_LISTEN="127.0.0.1:$service_port" \
        TICKET_INGEST_WAL_DIR="$work/wal-$database" TICKET_INGEST_LOG_LEVEL=warn \
        "$binary" serve --config config/ticket-ingest.toml --ack "$ack" --writers "$writers" \
        --batch-max-tickets "$batch" 2>>"$work/service.log" &
    local pid=$!
    until curl -fs "http://127.0.0.1:$service_port/healthz" >/dev/null 2>&1; do sleep 0.05; done
    local started accepted landed=0 finished batches
    started="$(date +%s%N)"
    wrk -t1 -c50 -d"${duration}s" --latency -s "$script" "http://127.0.0.1:$service_port/ticket" >"$work/wrk.txt"
    accepted="$(awk '$1 == "status" && $2 == "202:" { print $3 }' "$work/wrk.txt")"
    finished="$(python3 loadtest/wait_committed.py "$service_port" 120)"
    until [ "$landed" -ge "${accepted:-0}" ]; do
        landed="$(psql "$server_url/$database" -tAc "SELECT count(*) FROM tickets")"
        [ "$landed" -ge "${accepted:-0}" ] || sleep 0.5
    done
    batches="$(metric ticket_ingest_batch_size_count)"
    kill -TERM "$pid"; wait "$pid" || true
    psql "$server_url/postgres" -qc "DROP DATABASE $database"
    local seconds p99
    seconds="$(echo "scale=3; ($finished - $started) / 1000000000" | bc)"
    p99="$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } print v }' "$work/wrk.txt")"
    printf '%s,%s,%s,%s,%s,%s,%s\n' "$pass" "$ack" "$writers" "$batch" "$(echo "$landed / $seconds" | bc)" "$p99" \
        "$(echo "${batches%.*} / $seconds" | bc)" | tee -a "$runs"
}

for pass in $(seq 1 "$repeat"); do
    for writers in 1 2 3; do
        for batch in 50 200 500 2000; do
            run_point wal "$writers" "$batch"
        done
    done
    run_point commit 2 500
    run_point memory 2 500
done

# One row per point: the median of its runs, column by column.
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "$header" >"$results"
for point in $(tail -n +2 "$runs" | cut -d, -f2-4 | sort -t, -k1,1 -k2,2n -k3,3n -u); do
    row="$point"
    for column in 5 6 7; do
        row="$row,$(grep ",$point," "$runs" | cut -d, -f"$column" | median)"
    done
    echo "$row" >>"$results"
done

awk -F, 'NR > 1 && $1 == "wal" { print > ("'"$work"'/w" $2 ".dat") }' "$results"
gnuplot <<EOF
set terminal pngcairo size 1000,720 font ",10" noenhanced
set output "$repo/docs/tuning.png"
set datafile separator ","
set multiplot layout 3,1 title "ticket-ingest, ack = wal, wrk -t1 -c50 -d${duration}s, ${traffic} tickets, median of ${repeat} runs (loadtest/sweep.sh)"
set logscale x
set xtics (50, 200, 500, 2000)
set grid
set key outside right
set ylabel "committed tickets/s"
plot for [w=1:3] "$work/w".w.".dat" using 3:4 with linespoints title sprintf("writers = %d", w)
set ylabel "p99 ack latency (ms)"
plot for [w=1:3] "$work/w".w.".dat" using 3:5 with linespoints title sprintf("writers = %d", w)
set xlabel "batch_max_tickets"
set ylabel "database commits/s"
plot for [w=1:3] "$work/w".w.".dat" using 3:6 with linespoints title sprintf("writers = %d", w)
unset multiplot
EOF
echo "wrote $results and docs/tuning.png"
