#!/usr/bin/env python3
"""Waits until ticket-ingest has committed every ticket it accepted.

    python3 loadtest/wait_committed.py PORT [TIMEOUT_S]

Polls `ticket_ingest_in_flight` (tickets accepted and not yet committed) on
one keep-alive connection every 5 ms and prints the time it reached 0, in
nanoseconds since the epoch (the same clock as `date +%s%N`). Exits 1 on
timeout. The load scripts then count the rows in PostgreSQL to confirm.

Why not poll `SELECT count(*)` with psql: Debian's psql is a Perl wrapper
that costs ~35 ms of CPU per call, and the count scans the whole table, so
polling every 50 ms took a third of a core from the writers it was timing.
"""
import http.client
import sys
import time


def in_flight(connection):
    connection.request("GET", "/metrics")
    for line in connection.getresponse().read().decode().splitlines():
        name, _, value = line.partition(" ")
        if name == "ticket_ingest_in_flight":
            return int(float(value))
    raise RuntimeError("no ticket_ingest_in_flight in /metrics")


def main():
    port = int(sys.argv[1])
    deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 120)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while in_flight(connection) > 0:
        if time.monotonic() > deadline:
            sys.exit("tickets still in flight at the timeout")
        time.sleep(0.005)
    print(time.time_ns())


if __name__ == "__main__":
    main()
