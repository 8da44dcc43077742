#!/usr/bin/env bash
# A/B: two builds (or two configurations) under the same load, alternating,
# so that the machine's drift hits both alike.
#   loadtest/ab.sh [--rounds 3] [--duration 8] COMMAND_A COMMAND_B
# A command is a binary, possibly after `env NAME=value ...` (split on
# spaces), e.g. "env TICKET_INGEST_WAL_DIR=/dev/shm/wal /tmp/a" to take the
# disk out. Each round runs nginx `return 200`, then each command on a fresh
# database:
# `wrk -t1 -c50` with the sample ticket (TICKETS_FILE, default
# loadtest/ticket.txt; set it empty for loadtest/tickets.lua's realistic
# tickets), then waits until every accepted ticket is committed,
# and prints committed tickets/s, the ratio to nginx, p50/p99, peak RSS, and
# the CPU time per committed ticket (from wrk's start to the last commit) of
# the service, of the local PostgreSQL cluster's processes, and of the whole
# machine (wrk and the kernel included), and the context switches per
# committed ticket of the service's threads and of the machine: less noisy
# than the rates.
# Environment: ACK (default wal), FLAGS (extra serve flags, applied to both),
# WAL_DIR (default a temporary directory), CONNECTIONS (wrk's, default 50;
# 200 for the second point), RATE (say "20000 40000": after wrk, each
# offered rate is also held for 8 s by oha at 100 connections with latency
# correction, against nginx and each command, printing p50/p99/p99.9; the
# sample ticket only), PARTITIONED (which commands' databases are made by
# `COMMAND migrate --partitioned` before it serves: "2", "1" or "1 2"; the
# same binary twice with PARTITIONED=2 compares plain and partitioned
# tables). Build copies first:
# cp target/release/ticket-ingest /tmp/a.
# Database: as loadtest/bench.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

rounds=3 duration=8
while [ $# -gt 2 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        *) sed -n '2,25p' "$0"; exit 2 ;;
    esac
done
[ $# -eq 2 ] || { sed -n '2,25p' "$0"; exit 2; }
# shellcheck source=loadtest/need.sh
source loadtest/need.sh
need wrk
need nginx nginx-light
need python3
# TICKETS_FILE= (empty) posts realistic generated tickets instead.
if [ "${TICKETS_FILE-loadtest/ticket.txt}" = "" ]; then
    unset TICKETS_FILE
else
    export TICKETS_FILE="${TICKETS_FILE:-loadtest/ticket.txt}"
fi
if [ -n "${RATE:-}" ]; then
    [ -n "${TICKETS_FILE:-}" ] || { echo "RATE needs the sample ticket (TICKETS_FILE)" >&2; exit 2; }
    need_cargo oha
fi
work="$(mktemp -d /var/tmp/ticket-ingest-ab.XXXXXX)"
wal_dir="${WAL_DIR:-$work/wal}"
trap 'nginx -c "$work/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$work"' EXIT
server_url="$(pg_server_for_load_tests "$repo")"
nginx_port="$(pg_free_port 18181)"
cat >"$work/nginx.conf" <<NGINX
worker_processes auto; pid $work/nginx.pid; error_log $work/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work;
       server { listen 127.0.0.1:$nginx_port; location / { return 200; } } }
NGINX
load() { wrk -t1 -c"${CONNECTIONS:-50}" -d"${duration}s" --latency -s loadtest/tickets.lua "$1"; }
# At each offered rate of RATE: oha's latency percentiles, corrected for the
# requests a slow answer delays (no coordinated omission).
fixed_rates() {
    local rate
    for rate in ${RATE:-}; do
        oha -z 8s -q "$rate" -c 100 --latency-correction --no-tui --output-format json \
            -m POST -D "$TICKETS_FILE" "$1" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ms = lambda v: "%.2f" % (1000 * (v or 0))
print("    at %s req/s: p50 %s p99 %s p99.9 %s ms  answers %s" % (sys.argv[1], ms(p["p50"]), ms(p["p99"]), ms(p["p99.9"]), codes))
' "$rate"
    done
}

# CPU time, in clock ticks: of processes; of the private cluster's processes
# (none counted for a TICKET_INGEST_DATABASE_URL server, which may be
# remote); of the whole machine, busy.
ticks() {
    local pid sum=0
    for pid in "$@"; do sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0))); done
    echo "$sum"
}
postmaster=""
if [ -z "${TICKET_INGEST_DATABASE_URL:-}" ]; then
    postmaster="$(head -1 "$(pg_real_dir "$repo/.data/pg")/postmaster.pid" 2>/dev/null || true)"
fi
cluster_ticks() {
    # shellcheck disable=SC2046 # one pid per word
    if [ -n "$postmaster" ]; then ticks $(pgrep -P "$postmaster"); else echo 0; fi
}
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# Context switches: of a process's threads (voluntary and not), and of the
# whole machine.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { sum += $2 } END { print sum + 0 }'; }
machine_switches() { awk '$1 == "ctxt" { print $2 }' /proc/stat; }
per_ticket_us() { echo $(( $1 * 1000000 / $(getconf CLK_TCK) / ($2 > 0 ? $2 : 1) )); }

for round in $(seq 1 "$rounds"); do
    nginx -c "$work/nginx.conf"; sleep 0.3
    load "http://127.0.0.1:$nginx_port/ticket" >"$work/nginx.txt"
    nginx_rps="$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$work/nginx.txt")"
    echo "round $round: nginx $nginx_rps req/s  $(awk '$1 == "50%" || $1 == "99%" { printf "p%s %s ", substr($1, 1, 2), $2 }' "$work/nginx.txt")"
    fixed_rates "http://127.0.0.1:$nginx_port/ticket"
    nginx -c "$work/nginx.conf" -s stop 2>/dev/null; sleep 0.3
    for index in 1 2; do
        command="${!index}"
        database="ab_$(date +%s%N)"
        psql "$server_url/postgres" -qc "CREATE DATABASE $database"
        label="$command"
        if [[ " ${PARTITIONED:-} " == *" $index "* ]]; then
            # shellcheck disable=SC2086 # COMMAND is a list of words
            TICKET_INGEST_DATABASE_URL="$server_url/$database" TICKET_INGEST_LOG_LEVEL=warn \
                $command migrate --partitioned --config config/ticket-ingest.toml >/dev/null
            label="$command (partitioned)"
        fi
        rm -rf "$wal_dir"
        port="$(pg_free_port 19191)"
        # shellcheck disable=SC2086 # COMMAND and FLAGS are lists of words
        TICKET_INGEST_DATABASE_URL="$server_url/$database" TICKET_INGEST_ACK="${ACK:-wal}" \
            TICKET_INGEST_LISTEN="127.0.0.1:$port" TICKET_INGEST_WAL_DIR="$wal_dir" TICKET_INGEST_LOG_LEVEL=warn \
            $command serve --config config/ticket-ingest.toml ${FLAGS:-} 2>>"$work/service.log" &
        pid=$!
        until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "$command exited before it was healthy (an older binary refusing a key of config/ticket-ingest.toml? run from its own checkout):" >&2
                tail -n 5 "$work/service.log" >&2
                exit 1
            fi
            sleep 0.05
        done
        service_cpu="$(ticks "$pid")" cluster_cpu="$(cluster_ticks)" machine_cpu="$(busy_ticks)"
        service_switches="$(switches "$pid")" all_switches="$(machine_switches)"
        started="$(date +%s%N)"
        load "http://127.0.0.1:$port/ticket" >"$work/wrk.txt"
        accepted="$(awk '$1 == "status" && $2 == "202:" { print $3 }' "$work/wrk.txt")"
        finished="$(python3 loadtest/wait_committed.py "$port" 120)"
        service_cpu=$(( $(ticks "$pid") - service_cpu )) cluster_cpu=$(( $(cluster_ticks) - cluster_cpu ))
        machine_cpu=$(( $(busy_ticks) - machine_cpu ))
        service_switches=$(( $(switches "$pid") - service_switches )) all_switches=$(( $(machine_switches) - all_switches ))
        until [ "$(psql "$server_url/$database" -qtAc 'SELECT count(*) FROM tickets')" -ge "${accepted:-0}" ]; do
            sleep 0.5
        done
        committed=$(( ${accepted:-0} * 1000000000 / (finished - started) ))
        printf '  %-40s %6d committed tickets/s  %s x nginx  p50 %s p99 %s  peak RSS %d MiB\n' \
            "$label" "$committed" "$(echo "scale=2; $committed / $nginx_rps" | bc)" \
            "$(awk '$1 == "50%" { print $2 }' "$work/wrk.txt")" "$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")" \
            "$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$pid/status")"
        printf '  %-40s CPU per ticket: service %d µs, PostgreSQL %d µs, machine %d µs\n' "" \
            "$(per_ticket_us "$service_cpu" "${accepted:-0}")" "$(per_ticket_us "$cluster_cpu" "${accepted:-0}")" \
            "$(per_ticket_us "$machine_cpu" "${accepted:-0}")"
        printf '  %-40s context switches per ticket: service %s, machine %s\n' "" \
            "$(echo "scale=2; $service_switches / ${accepted:-1}" | bc)" "$(echo "scale=2; $all_switches / ${accepted:-1}" | bc)"
        # The write-ahead log's groups: records per fdatasync, and how long one took.
        curl -fs "http://127.0.0.1:$port/metrics" | awk -v tickets="${accepted:-0}" '
            /^ticket_ingest_wal_append_duration_seconds_count/ { groups = $2 }
            /^ticket_ingest_wal_append_duration_seconds_sum/ { seconds = $2 }
            END { if (groups > 0) printf "  %-40s WAL: %.1f records per fdatasync, %.2f ms per write + fdatasync\n", "", tickets / groups, 1000 * seconds / groups }'
        fixed_rates "http://127.0.0.1:$port/ticket"
        kill -TERM "$pid"; wait "$pid" || true
        psql "$server_url/postgres" -qc "DROP DATABASE $database"
    done
done
