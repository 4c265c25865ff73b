#!/usr/bin/env python3
"""Idle CPU per sidecar, several binaries side by side in one run (issue 18's idle floor).

    python3 benches/fleet/idle.py --bin before=/path/a --bin after=/path/b --n 20 --window 60

Starts one `provgate registry serve` and, for each binary, N sidecars configured as in the
fleet simulation (fleet.py), each with its own copy of the model directory (as in a pod),
all started together and interleaved, so every binary sees the same machine load. Once all are ready and a settle has passed, reads utime+stime of every
sidecar (and of each of its threads, by thread name) from /proc at the start and the end of
the window, and prints the CPU per sidecar in ms per second, per binary, with the threads
that cost most. Nothing is sent to the sidecars during the window: the registry's answers
(polls or watches) are their only work. Results are appended to OUT/idle.jsonl.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet  # noqa: E402


def thread_ticks(pid):
    """{thread name: utime+stime ticks} for one process."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def wakeups(pid):
    """Voluntary + involuntary context switches over all threads (a count of wake-ups)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def main_async(a):
    bins = []
    for spec in a.bin:
        label, _, path = spec.partition("=")
        bins.append((label, os.path.abspath(path)))
    work = Path(a.work)
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    model, reg, _token = fleet.setup(bins[0][1], work)
    # The server's files in a directory of their own: the sidecars watch the key files'
    # directory (trust reload), and a request log written there would wake every one of them.
    (work / "server").mkdir()
    reqlog = work / "server" / "requests.log"
    server = fleet.Server(bins[0][1], reg, work / "server" / "server.log", reqlog)
    server.start()
    url = f"http://127.0.0.1:{server.port}/"
    cfg_args = argparse.Namespace(registry_extra=a.registry_extra, refresh=a.refresh)
    sidecars = []
    env = dict(os.environ, RUST_LOG="warn")
    for i in range(a.n):
        for label, binary in bins:
            listen, admin = fleet.free_port(), fleet.free_port()
            # A model directory of its own (same files, so the same digest and record), as in
            # a pod: every sidecar's rescan of a shared directory would wake every other
            # sidecar's watch (inotify reports a directory's reads to all its watchers).
            own = work / f"model-{label}-{i}"
            shutil.copytree(model, own)
            cfg, d = fleet.sidecar_config(f"{label}-{i}", work, own, url, listen, admin, cfg_args)
            p = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.DEVNULL,
                                 stderr=open(d / "provgate.log", "w"), env=env)
            fleet.CHILDREN.append(p)
            sidecars.append({"label": label, "proc": p, "admin": admin, "dir": d})
    pending = list(sidecars)
    deadline = time.time() + 180
    while pending and time.time() < deadline:
        st = await fleet.gather_limited([fleet.http_get(s["admin"], "/readyz", timeout=2) for s in pending])
        pending = [s for s, (code, _) in zip(pending, st) if code != 200]
        if pending:
            await asyncio.sleep(0.5)
    if pending:
        log = (pending[0]["dir"] / "provgate.log").read_text()[-2000:]
        sys.exit(f"{len(pending)} sidecars not ready; first log:\n{log}")
    await asyncio.sleep(a.settle)
    tick = os.sysconf("SC_CLK_TCK")
    load0 = os.getloadavg()
    before = {id(s): (thread_ticks(s["proc"].pid), wakeups(s["proc"].pid)) for s in sidecars}
    t0 = time.time()
    await asyncio.sleep(a.window)
    t1 = time.time()
    after = {id(s): (thread_ticks(s["proc"].pid), wakeups(s["proc"].pid)) for s in sidecars}
    load1 = os.getloadavg()
    secs = t1 - t0
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "n": a.n,
              "window_s": round(secs, 1), "registry_extra": a.registry_extra,
              "loadavg_start": load0, "loadavg_end": load1, "bins": {}}
    for label, binary in bins:
        mine = [s for s in sidecars if s["label"] == label]
        threads, total, wakes = {}, 0, 0
        for s in mine:
            b, a_ = before[id(s)], after[id(s)]
            for name, v in a_[0].items():
                d = v - b[0].get(name, 0)
                threads[name] = threads.get(name, 0) + d
                total += d
            wakes += a_[1] - b[1]
        per = total / tick / secs / len(mine) * 1000
        top = sorted(threads.items(), key=lambda kv: -kv[1])[:6]
        result["bins"][label] = {
            "binary": binary,
            "cpu_ms_per_s_per_sidecar": round(per, 3),
            "context_switches_per_s_per_sidecar": round(wakes / secs / len(mine), 1),
            "threads_ms_per_s_per_sidecar": {n: round(v / tick / secs / len(mine) * 1000, 3) for n, v in top},
        }
    print(json.dumps(result, indent=1), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "idle.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    for s in sidecars:
        if s["proc"].poll() is None:
            os.kill(s["proc"].pid, signal.SIGINT)
    for s in sidecars:
        try:
            s["proc"].wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(s["proc"].pid, signal.SIGKILL)
    server.stop()
    subprocess.run(["rm", "-rf", str(work)], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH, once per binary")
    ap.add_argument("--n", type=int, default=20, help="sidecars per binary")
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--refresh", default="5s")
    ap.add_argument("--registry-extra", default="")
    ap.add_argument("--work", default="/tmp/provgate-idle")
    ap.add_argument("--out", default="benches/fleet/out")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (fleet.stop_all(), sys.exit(1)))
    try:
        asyncio.run(main_async(a))
    finally:
        fleet.stop_all()


if __name__ == "__main__":
    main()
