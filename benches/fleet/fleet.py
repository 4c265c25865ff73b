#!/usr/bin/env python3
"""Fleet simulation (issue 18 item 6): N real provgate sidecars against one
`provgate registry serve`, measured from the server's request log, the sidecars' own
metrics and probes through every sidecar. Standard library only. Run through run.sh.

Phases, one fleet per (N, start) pair:
  steady      after every sidecar is ready, WINDOW seconds of normal polling: registry
              requests/s, busiest second and busiest 100 ms against their means, 304 share,
              sidecar CPU (utime+stime from /proc) per sidecar-second
  outage      the server stopped (SIGINT) for OUTAGE seconds: registry fetch attempts the
              sidecars made (their provgate_registry_fetches_total{result="error"} delta), then
              the server restarted on the same port and the time until every sidecar has a
              successful fetch again (its ok/not_modified/revoked counters move)
  change      (--change-window > 0) a second record for the model is published: every
              watch returns with the change and re-watches; the registry load over the
              next CHANGE_WINDOW seconds (busiest second of the re-watches' returns)
  revocation  revoked.txt names the record: time until every sidecar answers 403
              approval_revoked (probes through every sidecar every 100 ms)

Extrapolation of the busiest second: per-second counts of N independent sidecars add, so at
k x N the mean is k times and the spread sqrt(k) times larger; the measured busiest second's
excess over the mean, in standard deviations of the per-second counts (z), is carried over:
busiest(10,000) / mean = 1 + z * sd / (mean * sqrt(k)). This holds when the sidecars' timing
is independent (random first polls and watches), not for a fleet in lockstep.

Every process is started here and stopped by its PID. Results: one JSON object per fleet in
OUT/results.jsonl (appended).
"""
import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MODEL = "fleet-model"
WORKLOAD = "spiffe://example.org/ns/prod/sa/model-serving"
CALLER = "spiffe://example.org/ns/app/sa/client"
ISSUER = "https://issuer.fleet.test"
JTI = "fleet-record-1"

CHILDREN = []  # every Popen we started


def stop_all(*_):
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in CHILDREN:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


_NEXT_PORT = [20000 + (os.getpid() % 50) * 200]


def free_port():
    """A free port below the ephemeral range (so no sidecar's outgoing connection takes it
    before its listener binds), never the same twice in one run."""
    while True:
        port = _NEXT_PORT[0]
        _NEXT_PORT[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def setup(binary, work: Path):
    """Keys, one tiny model directory shared by the fleet, its record, a caller token."""
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    reg = work / "registry"
    reg.mkdir(exist_ok=True)
    for name in ("approver", "issuer"):
        if not (work / f"{name}.key").exists():
            run([binary, "keygen", "--key", work / f"{name}.key", "--jwks", work / f"{name}.jwks.json"])
    run([binary, "approve", "--key", work / "approver.key", "--iss", "approver@example.org",
         "--model", MODEL, "--version-id", "fleet-v1", "--dir", model, "--workload", WORKLOAD,
         "--caller", CALLER, "--tier", "internal", "--ttl", "2d", "--jti", JTI,
         "--out", reg / "record.jws"])
    token = run([binary, "token", "--key", work / "issuer.key", "--iss", ISSUER, "--sub", CALLER,
                 "--aud", "provgate", "--ttl", "12h"]).strip()
    return model, reg, token


def sidecar_config(i, work, model, registry_url, listen, admin, args):
    d = work / f"sc{i}"
    d.mkdir(exist_ok=True)
    extra = args.registry_extra.replace("\\n", "\n")
    text = f"""
[listen]
address = "127.0.0.1:{listen}"
[admin]
address = "127.0.0.1:{admin}"
[upstream]
address = "127.0.0.1:9"
[mode]
enforce = true
[workload]
identity = "{WORKLOAD}"
[artefact]
model = "{MODEL}"
path = "{model}"
poll_interval = "5s"
[registry]
kind = "http"
url = "{registry_url}"
allow_plaintext = true
refresh_interval = "{args.refresh}"
timeout = "2s"
max_stale = "10m"
{extra}
[trust]
approver_keys = "{work / 'approver.jwks.json'}"
[[callers.issuers]]
issuer = "{ISSUER}"
jwks_file = "{work / 'issuer.jwks.json'}"
audiences = ["provgate"]
[tiers.internal]
[audit]
path = "{d / 'audit.jsonl'}"
[server]
threads = 1
grace_period = "0s"
"""
    path = d / "provgate.toml"
    path.write_text(text)
    return path, d


class Server:
    def __init__(self, binary, reg, log, reqlog):
        self.binary, self.reg, self.log, self.reqlog = binary, reg, log, reqlog
        self.port = 0
        self.proc = None

    def start(self):
        for _ in range(50):
            p = subprocess.Popen(
                [self.binary, "registry", "serve", "--dir", self.reg,
                 "--listen", f"127.0.0.1:{self.port}", "--print-address",
                 "--request-log", self.reqlog, "--rescan", "5s"],
                stdout=subprocess.PIPE, stderr=open(self.log, "a"), text=True)
            CHILDREN.append(p)
            line = p.stdout.readline().strip()
            if line:
                self.port = int(line.rsplit(":", 1)[1])
                self.proc = p
                return
            p.wait()
            time.sleep(0.1)  # the port may still be held: try again
        sys.exit("registry server did not start")

    def stop(self):
        os.kill(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=10)


# === HTTP, raw and small ===

async def http_get(host_port, path, headers="", keep=None, timeout=3.0):
    """One GET; returns (status, body). `keep` is a dict holding a keep-alive connection."""
    async def once():
        if keep is not None and keep.get("conn"):
            reader, writer = keep["conn"]
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
            if keep is not None:
                keep["conn"] = (reader, writer)
        conn = "keep-alive" if keep is not None else "close"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {conn}\r\n{headers}\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if m:
            body = await reader.readexactly(int(m.group(1)))
        elif keep is None:
            body = await reader.read()
        else:
            body = b""
        if keep is None or status != 403:
            # Only a denial's body is known to be length-delimited: start afresh otherwise.
            writer.close()
            if keep is not None:
                keep["conn"] = None
        return status, body
    try:
        return await asyncio.wait_for(once(), timeout)
    except Exception:
        if keep is not None and keep.get("conn"):
            keep["conn"][1].close()
            keep["conn"] = None
        return None, b""


async def gather_limited(coros, limit=32):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c
    return await asyncio.gather(*(one(c) for c in coros))


FETCH_RE = re.compile(r'^provgate_registry_fetches_total\{[^}]*result="([a-z_]+)"[^}]*\} (\S+)', re.M)


async def fetch_counts(admin):
    status, body = await http_get(admin, "/metrics")
    if status != 200:
        return None
    out = {}
    for result, v in FETCH_RE.findall(body.decode()):
        out[result] = out.get(result, 0) + float(v)
    return out


async def all_counts(admins):
    return await gather_limited([fetch_counts(a) for a in admins])


def ok_of(c):
    return sum(v for k, v in (c or {}).items() if k != "error")


# === analysis of the request log ===

def read_log(path, t0_ms, t1_ms):
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) != 5:
                continue
            ms = int(p[0])
            if t0_ms <= ms < t1_ms:
                rows.append((ms, p[1], int(p[2]), int(p[3]), p[4] == "1"))
    return rows


def load_stats(rows, t0_ms, t1_ms):
    secs = max((t1_ms - t0_ms) / 1000, 1e-9)
    per_s, per_100 = {}, {}
    for ms, *_ in rows:
        per_s[(ms - t0_ms) // 1000] = per_s.get((ms - t0_ms) // 1000, 0) + 1
        per_100[(ms - t0_ms) // 100] = per_100.get((ms - t0_ms) // 100, 0) + 1
    n = len(rows)
    mean_s = n / secs
    mean_100 = n / (secs * 10)
    busiest_s = max(per_s.values(), default=0)
    busiest_100 = max(per_100.values(), default=0)
    bins = int(secs)
    counts = [per_s.get(i, 0) for i in range(bins)] if bins else []
    var = sum((c - mean_s) ** 2 for c in counts) / len(counts) if counts else 0.0
    sd = var ** 0.5
    z = (busiest_s - mean_s) / sd if sd else 0.0
    return {
        "window_s": round(secs, 1),
        "requests": n,
        "requests_per_s": round(mean_s, 2),
        "busiest_s": busiest_s,
        "busiest_s_vs_mean": round(busiest_s / mean_s, 2) if mean_s else None,
        "busiest_100ms": busiest_100,
        "busiest_100ms_vs_mean": round(busiest_100 / mean_100, 2) if mean_100 else None,
        "sd_per_s": round(sd, 2),
        "dispersion": round(var / mean_s, 2) if mean_s else None,
        "busiest_s_z": round(z, 2),
        "share_304": round(sum(1 for r in rows if r[2] == 304) / n, 3) if n else None,
        "held": sum(1 for r in rows if r[4]),
        "by_status": {str(s): sum(1 for r in rows if r[2] == s) for s in sorted({r[2] for r in rows})},
    }


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def watching(a):
    extra = a.registry_extra.replace("\\n", "\n")
    if re.search(r'watch\s*=\s*"0s"', extra):
        return False
    return "watch" in extra or re.search(r'layout\s*=\s*"path"', extra) is not None


async def main_async(a):
    binary = os.path.abspath(a.bin)
    work = Path(a.work) / f"n{a.n}-{a.start}-{a.label}"
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    model, reg, token = setup(binary, work)
    # The server's files in a directory of their own: the sidecars watch the key files'
    # directory (trust reload), and a request log written there would wake every one of them.
    (work / "server").mkdir()
    reqlog = work / "server" / "requests.log"
    server = Server(binary, reg, work / "server" / "server.log", reqlog)
    server.start()
    url = f"http://127.0.0.1:{server.port}/"
    result = {"label": a.label, "n": a.n, "start": a.start, "refresh": a.refresh,
              "registry_extra": a.registry_extra, "client_commit": a.client_commit,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    # --- start the fleet ---
    sidecars = []
    env = dict(os.environ, RUST_LOG="warn")
    # Together: every sidecar waits in a shell for the GO file, then all exec at once (the
    # spread left is the machine's: N start-ups on its cores). Staggered: spread evenly over
    # --stagger seconds.
    go = work / "GO"
    gate = 'while [ ! -e "$2" ]; do sleep 0.02; done; exec "$0" run -c "$1"'
    t_start = time.time()
    for i in range(a.n):
        listen, admin = free_port(), free_port()
        cfg, d = sidecar_config(i, work, model, url, listen, admin, a)
        if a.start == "together":
            argv = ["sh", "-c", gate, binary, str(cfg), str(go)]
        else:
            argv = [binary, "run", "-c", cfg]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                             stderr=open(d / "provgate.log", "w"), env=env)
        CHILDREN.append(p)
        sidecars.append({"proc": p, "listen": listen, "admin": admin, "dir": d})
        if a.start == "staggered":
            time.sleep(a.stagger / a.n)
    if a.start == "together":
        t_start = time.time()
        go.touch()
    result["start_spread_s"] = round(time.time() - t_start, 1)

    # --- wait until every sidecar is ready ---
    pending = list(sidecars)
    deadline = time.time() + 180
    while pending and time.time() < deadline:
        statuses = await gather_limited([http_get(s["admin"], "/readyz", timeout=2) for s in pending])
        pending = [s for s, (st, _) in zip(pending, statuses) if st != 200]
        if pending:
            await asyncio.sleep(0.5)
    if pending:
        dead = [s for s in pending if s["proc"].poll() is not None]
        log = (pending[0]["dir"] / "provgate.log").read_text()[-2000:]
        sys.exit(f"{len(pending)} sidecars not ready ({len(dead)} exited); first log:\n{log}")
    result["all_ready_s"] = round(time.time() - t_start, 1)
    await asyncio.sleep(0.5)
    first = read_log(reqlog, int(t_start * 1000), int(time.time() * 1000))[: a.n]
    if len(first) == a.n:
        # The first N requests: one per sidecar when every first fetch succeeded.
        result["first_requests_spread_s"] = round((first[-1][0] - first[0][0]) / 1000, 2)
    pids = [s["proc"].pid for s in sidecars]
    result["sidecar_rss_mb_total"] = round(rss_mb(pids))

    # --- steady: normal polling (or watching) ---
    await asyncio.sleep(a.settle)
    s0 = cpu_seconds([server.proc.pid])
    c0, t0 = cpu_seconds(pids), time.time()
    await asyncio.sleep(a.window)
    c1, t1 = cpu_seconds(pids), time.time()
    s1 = cpu_seconds([server.proc.pid])
    # A request is logged when it returns: with watch (the path layout watches by default),
    # wait out the longest hold (the server's 60 s cap) of the window's last arrivals.
    await asyncio.sleep(a.hold_wait if watching(a) else 0.5)
    steady = load_stats(read_log(reqlog, int(t0 * 1000), int(t1 * 1000)), int(t0 * 1000), int(t1 * 1000))
    steady["sidecar_cpu_ms_per_s"] = round((c1 - c0) / (t1 - t0) / a.n * 1000, 3)
    steady["server_cpu_ms_per_s"] = round((s1 - s0) / (t1 - t0) * 1000, 2)
    result["steady"] = steady
    print(json.dumps({"steady": steady}), flush=True)

    admins = [s["admin"] for s in sidecars]
    if a.change_window > 0:
        # A second record for the model: every digest answer changes once.
        tmp = work / "record2.jws"
        run([binary, "approve", "--key", work / "approver.key", "--iss", "approver@example.org",
             "--model", MODEL, "--version-id", "fleet-v1", "--dir", model, "--workload", WORKLOAD,
             "--caller", CALLER, "--tier", "internal", "--ttl", "2d", "--jti", JTI + "-2",
             "--out", tmp])
        t_change = time.time()
        os.rename(tmp, reg / "record2.jws")
        await asyncio.sleep(a.change_window + 1.5)
        await asyncio.sleep(a.hold_wait)
        rewatches = read_log(reqlog, int(t_change * 1000), int((t_change + 1.5) * 1000))
        t0c = t_change + 1.5
        after_change = load_stats(read_log(reqlog, int(t0c * 1000), int((t0c + a.change_window) * 1000)),
                                  int(t0c * 1000), int((t0c + a.change_window) * 1000))
        after_change["requests_in_first_1_5_s"] = len(rewatches)
        result["after_change"] = after_change
        print(json.dumps({"after_change": after_change}), flush=True)

    if a.outage > 0:
        before = await all_counts(admins)
        t_down = time.time()
        server.stop()
        await asyncio.sleep(a.outage)
        after = await all_counts(admins)
        t_up = time.time()
        server.start()
        errors = sum((y or {}).get("error", 0) - (x or {}).get("error", 0) for x, y in zip(before, after))
        outage_s = t_up - t_down
        normal = steady["requests_per_s"] * outage_s
        # re-sync: every sidecar's success counters move past their value at the outage's end
        base = [ok_of(c) for c in after]
        resynced = [None] * len(admins)
        deadline = time.time() + max(120, 4 * a.outage)
        while any(r is None for r in resynced) and time.time() < deadline:
            idx = [i for i, r in enumerate(resynced) if r is None]
            counts = await gather_limited([fetch_counts(admins[i]) for i in idx])
            now = time.time()
            for i, c in zip(idx, counts):
                if c is not None and ok_of(c) > base[i]:
                    resynced[i] = now - t_up
            await asyncio.sleep(0.25)
        done = [r for r in resynced if r is not None]
        result["outage"] = {
            "down_s": round(outage_s, 1),
            "attempts": int(errors),
            "attempts_per_s": round(errors / outage_s, 2),
            "normal_requests_same_time": round(normal),
            "attempts_vs_normal": round(errors / normal, 2) if normal else None,
            "resynced": len(done),
            "resync_all_s": round(max(done), 2) if len(done) == len(admins) else None,
            "resync_median_s": round(sorted(done)[len(done) // 2], 2) if done else None,
            "resolution_s": 0.25,
        }
        print(json.dumps({"outage": result["outage"]}), flush=True)
        await asyncio.sleep(a.settle)

    # --- revocation ---
    keeps = [dict() for _ in sidecars]
    auth = f"Authorization: Bearer {token}\r\n"
    first = await gather_limited([http_get(s["listen"], "/v1/models", auth, k) for s, k in zip(sidecars, keeps)])
    result["before_revocation_statuses"] = {str(st): sum(1 for x, _ in first if x == st) for st in {x for x, _ in first}}
    tmp = reg / ".revoked.txt.tmp"
    # Every record of the model (the change phase added a second one).
    tmp.write_text(JTI + "\n" + (JTI + "-2\n" if a.change_window > 0 else ""))
    t_rev = time.time()
    os.rename(tmp, reg / "revoked.txt")
    blocked = [None] * len(sidecars)
    deadline = t_rev + 60
    while any(b is None for b in blocked) and time.time() < deadline:
        idx = [i for i, b in enumerate(blocked) if b is None]
        answers = await gather_limited(
            [http_get(sidecars[i]["listen"], "/v1/models", auth, keeps[i]) for i in idx], limit=64)
        now = time.time()
        for i, (st, body) in zip(idx, answers):
            if st == 403 and b"approval_revoked" in body:
                blocked[i] = now - t_rev
        await asyncio.sleep(0.1)
    done = sorted(b for b in blocked if b is not None)
    result["revocation"] = {
        "blocked": len(done),
        "all_blocked_s": round(done[-1], 2) if len(done) == len(sidecars) else None,
        "median_s": round(done[len(done) // 2], 2) if done else None,
        "first_s": round(done[0], 2) if done else None,
        "resolution_s": 0.1,
    }
    print(json.dumps({"revocation": result["revocation"]}), flush=True)

    for k in keeps:
        if k.get("conn"):
            k["conn"][1].close()
    for s in sidecars:
        if s["proc"].poll() is None:
            os.kill(s["proc"].pid, signal.SIGINT)
    for s in sidecars:
        try:
            s["proc"].wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(s["proc"].pid, signal.SIGKILL)
    server.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    if not a.keep:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    print(json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--start", choices=["together", "staggered"], default="together")
    ap.add_argument("--stagger", type=float, default=10.0, help="seconds over which a staggered start spreads")
    ap.add_argument("--refresh", default="5s")
    ap.add_argument("--registry-extra", default="", help='more [registry] lines, e.g. layout = "path"\\nwatch = "30s"')
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--outage", type=float, default=30.0)
    ap.add_argument("--hold-wait", type=float, default=62.0,
                    help="with watch: seconds to wait after the window for held requests to return")
    ap.add_argument("--change-window", type=float, default=0.0,
                    help="seconds of registry load measured after a second record is published (0: no change phase)")
    ap.add_argument("--label", default="run")
    ap.add_argument("--client-commit", default="")
    ap.add_argument("--work", default="/tmp/provgate-fleet")
    ap.add_argument("--out", default="benches/fleet/out")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        asyncio.run(main_async(a))
    finally:
        stop_all()


if __name__ == "__main__":
    main()
