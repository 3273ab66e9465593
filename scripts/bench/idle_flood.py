#!/usr/bin/env python3
"""Opens many TCP connections that send nothing (or half a request head) to a listener, holds
them, and meanwhile times a real request every 200 ms on a fresh connection. Prints how many
connections were made, the slowest real request, and how many of the held connections the
server had closed at the end. Used by scripts/idle-flood.sh; standard library only."""

import argparse
import os
import resource
import socket
import statistics
import sys
import threading
import time

HALF_HEAD = b"GET /v1/whoami HTTP/1.1\r\nhost: localhost\r\n"


def probe(host, port, path, token, timeout):
    """Seconds a real request took to be answered, or None when it failed or timed out."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            auth = f"authorization: Bearer {token}\r\n" if token else ""
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{auth}connection: close\r\n\r\n".encode())
            head = s.recv(64)
            if not head.startswith(b"HTTP/1.1 200"):
                return None
    except OSError:
        return None
    return time.monotonic() - start


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--half", type=int, default=0)
    ap.add_argument("--path", default="/v1/whoami")
    ap.add_argument("--token", default="")
    ap.add_argument("--server-pid", type=int, default=0)
    ap.add_argument("--hold", type=float, default=15.0, help="seconds to hold them after opening")
    a = ap.parse_args()

    total = a.idle + a.half
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, total + 256), hard))

    latencies, failures, fds = [], [0], [0]
    done = threading.Event()

    def prober():
        while not done.is_set():
            took = probe(a.host, a.port, a.path, a.token, timeout=5.0)
            if took is None:
                failures[0] += 1
            else:
                latencies.append(took)
            if a.server_pid:
                fds[0] = max(fds[0], open_fds(a.server_pid))
            time.sleep(0.2)

    thread = threading.Thread(target=prober, daemon=True)
    thread.start()
    held, refused = [], 0
    started = time.monotonic()
    for i in range(total):
        try:
            s = socket.create_connection((a.host, a.port), timeout=5.0)
            if i >= a.idle:
                try:
                    s.sendall(HALF_HEAD)
                except OSError:
                    pass
            held.append(s)
        except OSError:
            refused += 1
    opened = time.monotonic() - started
    time.sleep(a.hold)
    done.set()
    thread.join()

    closed = 0
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()

    print(f"connections made: {len(held)} of {total} ({a.idle} idle, {a.half} half a head) "
          f"in {opened:.1f} s; connect failures: {refused}")
    print(f"closed by the server after {a.hold:.0f} s more: {closed} of {len(held)}")
    if a.server_pid:
        print(f"server's open files at most (sampled every 200 ms): {fds[0]}")
    if latencies:
        print(f"real requests: {len(latencies)} answered, {failures[0]} failed; "
              f"median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms")
    else:
        print(f"real requests: none answered, {failures[0]} failed")
    ok = latencies and failures[0] == 0 and max(latencies) < 1.0 and closed == len(held)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
