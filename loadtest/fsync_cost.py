#!/usr/bin/env python3
"""What one fdatasync costs on this disk, appending vs overwriting.

    python3 loadtest/fsync_cost.py [DIRECTORY]   (default: .data)

Writes 3 000 records of 1.5 kB, each followed by fdatasync, twice: once
appending to a new file (every sync also flushes the file size), once
overwriting a file zero-filled beforehand (what the WAL does). Prints the
median, p99 and mean sync time of each. Run it on the disk that holds
wal_dir, with the machine otherwise idle.
"""
import os
import sys
import time

RECORDS, SIZE = 3000, 1500


def measure(path, zero_filled):
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        if zero_filled:
            os.write(fd, b"\0" * (RECORDS * SIZE))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        record, times = b"x" * SIZE, []
        for _ in range(RECORDS):
            os.write(fd, record)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        os.remove(path)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)], sum(times) / len(times)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else ".data"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "fsync_cost.tmp")
    for label, zero_filled in (("appending", False), ("overwriting zeros", True)) * 2:
        median, p99, mean = measure(path, zero_filled)
        print(f"{label:18} median {median * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms  mean {mean * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
