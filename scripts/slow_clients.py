#!/usr/bin/env python3
"""Slow clients against a running provgate (issue 16): open N connections to the proxy
listener, each sending a request line and then one header line every INTERVAL seconds (a
slowloris), and report every few seconds how many are still open and provgate's resident
memory (VmRSS of PID).

    ulimit -n 16384
    scripts/slow_clients.py --target 127.0.0.1:18080 --pid $(pgrep -n provgate) \
        --connections 3000 --interval 5 --duration 40

Standard library only. The numbers of the last run are in BENCHMARKS.md.
"""
import argparse
import socket
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--connections", type=int, default=3000)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=40.0)
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    base = rss_kib(args.pid)
    print(f"rss before: {base} KiB")
    conns = []
    refused = 0
    t0 = time.monotonic()
    for i in range(args.connections):
        s = socket.create_connection((host, int(port)))
        s.setblocking(False)
        try:
            s.send(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        except OSError:
            refused += 1
            s.close()
            continue
        conns.append(s)
    print(f"opened {len(conns)} in {time.monotonic() - t0:.1f}s")
    peak = 0
    line = 0
    next_send = time.monotonic() + args.interval
    while time.monotonic() - t0 < args.duration:
        time.sleep(min(1.0, max(0.0, next_send - time.monotonic())))
        # Drop the ones provgate closed (readable with EOF) or answered (503 on a limit).
        alive = []
        for s in conns:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                alive.append(s)
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                refused += 1
            s.close()
        conns = alive
        if time.monotonic() >= next_send:
            line += 1
            for s in conns:
                try:
                    s.send(f"x-slow-{line}: y\r\n".encode())
                except OSError:
                    pass
            next_send += args.interval
        rss = rss_kib(args.pid)
        peak = max(peak, rss)
        print(f"t={time.monotonic() - t0:5.1f}s open={len(conns):5d} refused={refused} "
              f"rss={rss} KiB (+{rss - base} KiB)", flush=True)
    print(f"peak rss {peak} KiB (+{peak - base} KiB over {base} KiB); "
          f"still open at the end: {len(conns)}; answered 503: {refused}")


if __name__ == "__main__":
    main()
