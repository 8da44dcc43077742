#!/usr/bin/env python3
"""Whether the disk takes several fdatasyncs at once.

    python3 loadtest/fsync_overlap.py [DIRECTORY]   (default: .data)

2 000 times a 4 KiB pwrite into a zero-filled file followed by fdatasync,
from 1, then 2, then 4 threads at once (each on its own part of the file).
Prints syncs per second and the median sync. If syncs ran fully in
parallel, 2 threads would do twice the syncs of one at the same median.
"""
import os
import sys
import threading
import time

SYNCS, BLOCK, PART = 2000, 4096, 16 << 20


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else ".data"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "fsync-overlap.tmp")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"\0" * (4 * PART), 0)
        os.fsync(fd)
        for threads in (1, 2, 4):
            times = [[] for _ in range(threads)]

            def syncs(part, out):
                block = b"x" * BLOCK
                for i in range(SYNCS // threads):
                    started = time.perf_counter()
                    os.pwrite(fd, block, part * PART + (i * BLOCK) % PART)
                    os.fdatasync(fd)
                    out.append(time.perf_counter() - started)

            workers = [threading.Thread(target=syncs, args=(part, times[part])) for part in range(threads)]
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            elapsed = time.perf_counter() - started
            every = sorted(t for part in times for t in part)
            print(f"{threads} thread(s): {len(every) / elapsed:.0f} syncs/s, median {1000 * every[len(every) // 2]:.3f} ms")
    finally:
        os.close(fd)
        os.remove(path)


if __name__ == "__main__":
    main()
