#!/usr/bin/env python3
"""provgate soak benchmark (issue 16 item 6): the real binary under an hour of mixed traffic.

Started by benches/soak/run.sh; one process per role so the registry can be killed and
restarted while everything else runs:

  soak.py main --bin PROVGATE --minutes N --work DIR --csv FILE
  soak.py upstream PORT               a stand-in model server (200 JSON for everything)
  soak.py registry PORT RECORDS_DIR   the HTTP registry contract of the README
  soak.py load URL TOKENS_FILE STATS_FILE RATE

`main` makes keys with the provgate CLI, serves the issuer JWKS over HTTP (a new key every
--rotate-minutes, the previous one kept beside it), mints tokens with the newest key every
minute, re-signs the approval record every minute, restarts the registry twice (at a third
and two thirds of the run, down 20 s each), and samples provgate's RSS, open fds and threads
every 10 s into the CSV. Everything listens on 127.0.0.1 ephemeral ports.
"""
import base64
import hashlib
import http.client
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

ISSUER = "https://issuer.soak"
MODEL = "all-minilm-l6-v2"
WORKLOAD = "spiffe://example.org/ns/prod/sa/model-serving"
CALLER = "spiffe://example.org/ns/app/sa/client"
# Request kinds that carry the good token: anything but 200 for them is an error.
GOOD = ("list", "chat", "traced")
# RSS reported at these minutes (warm-up against growth).
CHECKPOINTS = (1, 5, 10, 20, 30, 45, 60)


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, code, body, ctype="application/json", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def serve(handler, port):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.daemon_threads = True
    return srv


# --- upstream -------------------------------------------------------------------------------
class Upstream(Quiet):
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if self.path.startswith("/v1/models"):
            body = json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode()
        else:
            body = json.dumps({"id": "soak", "object": "chat.completion", "model": MODEL,
                               "choices": [{"index": 0, "message": {"role": "assistant",
                                                                    "content": "ok"}}]}).encode()
        self.send(200, body)

    do_GET = answer
    do_POST = answer


# --- registry -------------------------------------------------------------------------------
def payload(jws):
    part = jws.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def make_registry(records_dir):
    class Registry(Quiet):
        def do_GET(self):
            u = urllib.parse.urlparse(self.path)
            digest = urllib.parse.parse_qs(u.query).get("digest", [""])[0]
            if u.path != "/approvals" or not digest:
                return self.send(404, b"")
            lines = []
            for name in sorted(os.listdir(records_dir)):
                if not name.endswith(".jwt"):
                    continue
                try:
                    jws = open(os.path.join(records_dir, name)).read().strip()
                    if digest in payload(jws):
                        lines.append(jws)
                except (OSError, ValueError, IndexError):
                    continue
            if not lines:
                return self.send(404, b"")
            body = ("\n".join(lines) + "\n").encode()
            etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send(200, body, "application/jose", [("ETag", etag)])

    return Registry


# --- load -----------------------------------------------------------------------------------
def load(url, tokens_file, stats_file, rate):
    u = urllib.parse.urlparse(url)
    stats = {}
    refusals = []
    lock = threading.Lock()
    tokens = {"good": ""}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    def reload_tokens():
        while not stop.is_set():
            try:
                tokens.update(json.load(open(tokens_file)))
            except (OSError, ValueError):
                pass
            stop.wait(2)

    chat = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})

    def one(conn, rng):
        r = rng.random()
        headers = {"Authorization": "Bearer " + tokens["good"]}
        method, path, body, kind = "GET", "/v1/models", None, "list"
        if r < 0.35:
            pass
        elif r < 0.70:
            method, path, body, kind = "POST", "/v1/chat/completions", chat, "chat"
            headers["Content-Type"] = "application/json"
        elif r < 0.80:
            headers, kind = {}, "no_token"                          # 401 token_missing
        elif r < 0.88:
            headers["Authorization"] = "Bearer " + tokens["good"][:-4] + "AAAA"  # 401
            kind = "bad_token"
        elif r < 0.95:
            path, kind = "/v2/repository/models/x/load", "mgmt"     # 403 route_not_allowed
            method, body = "POST", "{}"
        else:
            kind = "traced"
            headers["traceparent"] = "00-%032x-%016x-01" % (rng.getrandbits(128) | 1,
                                                             rng.getrandbits(64) | 1)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        key = f"{kind} {resp.status}"
        if kind in GOOD and resp.status != 200:
            # A good token refused: say why (the answer's error code) and when.
            try:
                key += " " + str(json.loads(data).get("error", ""))
            except ValueError:
                pass
            with lock:
                refusals.append([round(time.time(), 3), key])
        return key, resp.getheader("Connection", "") == "close"

    def worker(seed, per_thread):
        rng = random.Random(seed)
        conn = None
        sent = 0
        next_at = time.monotonic()
        while not stop.is_set():
            next_at += 1.0 / per_thread
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            elif delay < -1:
                next_at = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                key, closed = one(conn, rng)
                sent += 1
                # A new connection every 200 requests: accept/close churn for the fd count.
                if closed or sent % 200 == 0:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                key = "error:" + type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                stats[key] = stats.get(key, 0) + 1

    threading.Thread(target=reload_tokens, daemon=True).start()
    while not tokens["good"] and not stop.is_set():
        time.sleep(0.2)
    threads = 8
    ws = [threading.Thread(target=worker, args=(i, rate / threads), daemon=True)
          for i in range(threads)]
    for w in ws:
        w.start()
    while not stop.is_set():
        stop.wait(5)
        with lock:
            snap = dict(stats)
            snap_refusals = list(refusals)
        tmp = stats_file + ".tmp"
        json.dump({"stats": snap, "refusals": snap_refusals}, open(tmp, "w"))
        os.replace(tmp, stats_file)


# --- main -----------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}")


def sample(pid):
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def thread_names(pid):
    """Threads by name (`/proc/PID/task/*/comm`), e.g. {"tokio-runtime-w": 2, ...}."""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        except OSError:
            continue  # ended between the listing and the read
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


def anon_kb(pid):
    """Anonymous (heap and stacks) and file-backed parts of RSS, from smaps_rollup."""
    anon = file_ = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    anon = int(line.split()[1])
                elif line.startswith("Rss:"):
                    file_ = int(line.split()[1])
    except OSError:
        pass
    return anon, file_ - anon


def main(args):
    opts = dict(zip(args[::2], args[1::2]))
    bin_ = opts["--bin"]
    minutes = float(opts.get("--minutes", "60"))
    work = opts["--work"]
    csv_path = opts["--csv"]
    rate = float(opts.get("--rate", "200"))
    rotate = float(opts.get("--rotate-minutes", "5"))
    me = os.path.abspath(__file__)
    run = lambda *a: subprocess.run([bin_, *a], check=True, capture_output=True, text=True)
    model = os.path.join(work, "model")
    records = os.path.join(work, "records")
    os.makedirs(records, exist_ok=True)
    run("keygen", "--key", f"{work}/approver.key", "--jwks", f"{work}/approvers.jwks.json")

    keys = []  # (private key path, jwk)

    def new_issuer_key():
        n = len(keys)
        jwks = f"{work}/issuer-{n}.jwks.json"
        run("keygen", "--key", f"{work}/issuer-{n}.key", "--jwks", jwks)
        keys.append((f"{work}/issuer-{n}.key", json.load(open(jwks))["keys"][0]))
        os.remove(jwks)

    def jwks_doc():
        return json.dumps({"keys": [k for _, k in keys[-2:]]}).encode()

    jwks_gets = []  # wall-clock times of provgate's JWKS fetches
    rotations = []  # wall-clock times at which a new key was published (and signed with)

    class Jwks(Quiet):
        def do_GET(self):
            jwks_gets.append(time.time())
            self.send(200, jwks_doc(), extra=[("Cache-Control", "max-age=60")])

    def mint():
        token = run("token", "--key", keys[-1][0], "--iss", ISSUER, "--sub", CALLER,
                    "--aud", "provgate", "--ttl", "15m").stdout.strip()
        tmp = f"{work}/tokens.json.tmp"
        json.dump({"good": token}, open(tmp, "w"))
        os.replace(tmp, f"{work}/tokens.json")

    signed = [0]

    def resign():
        signed[0] += 1
        n = signed[0]
        out = f"{records}/.r{n}.tmp"
        run("approve", "--key", f"{work}/approver.key", "--iss", "soak-approver",
            "--model", MODEL, "--version-id", f"soak-{n}", "--dir", model,
            "--workload", WORKLOAD, "--caller", "spiffe://example.org/ns/app/*",
            "--ttl", "2h", "--out", out)
        os.replace(out, f"{records}/r{n}.jwt")
        old = f"{records}/r{n - 1}.jwt"
        if os.path.exists(old):
            os.remove(old)

    new_issuer_key()
    mint()
    resign()

    ports = {k: free_port() for k in ("listen", "admin", "upstream", "registry", "jwks")}
    jwks_srv = serve(Jwks, ports["jwks"])
    threading.Thread(target=jwks_srv.serve_forever, daemon=True).start()
    config = f"""
[listen]
address = "127.0.0.1:{ports['listen']}"
[admin]
address = "127.0.0.1:{ports['admin']}"
[upstream]
address = "127.0.0.1:{ports['upstream']}"
api = ["openai"]
[mode]
enforce = true
[workload]
identity = "{WORKLOAD}"
[artefact]
model = "{MODEL}"
path = "{model}"
[registry]
kind = "http"
url = "http://127.0.0.1:{ports['registry']}"
allow_plaintext = true
refresh_interval = "5s"
timeout = "2s"
max_stale = "5m"
[trust]
approver_keys = "{work}/approvers.jwks.json"
[callers]
[[callers.issuers]]
issuer = "{ISSUER}"
jwks_url = "http://127.0.0.1:{ports['jwks']}/jwks"
allow_plaintext = true
audiences = ["provgate"]
algorithms = ["ES256"]
refresh_min = "30s"
refresh_max = "2m"
refetch_interval = "5s"
unknown_kid_wait = "2s"
[audit]
path = "{work}/audit/provgate-audit.jsonl"
max_segment_bytes = 4194304
keep_segments = 4
checkpoint_interval = "60s"
[log]
level = "warn"
"""
    os.makedirs(f"{work}/audit", exist_ok=True)
    open(f"{work}/provgate.toml", "w").write(config)
    py = sys.executable
    logs = open(f"{work}/children.log", "ab")
    spawn = lambda *a: subprocess.Popen([py, me, *a], stdout=logs, stderr=logs)
    upstream = spawn("upstream", str(ports["upstream"]))
    registry = spawn("registry", str(ports["registry"]), records)
    wait_port(ports["upstream"])
    wait_port(ports["registry"])
    plog = open(f"{work}/provgate.log", "ab")
    proxy = subprocess.Popen([bin_, "run", "-c", f"{work}/provgate.toml"], stdout=plog,
                             stderr=plog)
    wait_port(ports["listen"])
    stats_file = f"{work}/stats.json"
    loader = spawn("load", f"http://127.0.0.1:{ports['listen']}", f"{work}/tokens.json",
                   stats_file, str(rate))
    children = [upstream, registry, loader]

    start = time.monotonic()
    end = start + minutes * 60
    restarts = [start + minutes * 60 / 3, start + minutes * 120 / 3]
    registry_down_until = None
    restarted = [0]
    next_mint = next_sign = start + 60
    next_rotate = start + rotate * 60
    csv = open(csv_path, "w")
    csv.write("elapsed_s,rss_kb,fds,threads,requests,errors,registry_up,issuer_keys,"
              "records_signed,anon_kb,file_kb,thread_names\n")
    rows = []
    stats, refusals = {}, []
    wall_start = time.time()
    try:
        while True:
            now = time.monotonic()
            if proxy.poll() is not None:
                raise SystemExit(f"provgate exited with {proxy.returncode}")
            try:
                loaded = json.load(open(stats_file))
                stats, refusals = loaded["stats"], loaded["refusals"]
            except (OSError, ValueError, KeyError):
                pass
            total = sum(stats.values())
            # Anything but 200 for a good token, and any transport error.
            errors = sum(v for k, v in stats.items()
                         if k.startswith("error")
                         or (k.split()[0] in GOOD and k.split()[1] != "200"))
            rss, fds, threads = sample(proxy.pid)
            anon, file_ = anon_kb(proxy.pid)
            names = thread_names(proxy.pid)
            row = (round(now - start), rss, fds, threads, total, errors,
                   int(registry_down_until is None), len(keys), signed[0], anon, file_,
                   ";".join(f"{k}={v}" for k, v in names.items()))
            rows.append(row)
            csv.write(",".join(map(str, row)) + "\n")
            csv.flush()
            if now >= end:
                break
            if restarts and now >= restarts[0] and registry_down_until is None:
                restarts.pop(0)
                registry.terminate()
                registry.wait()
                restarted[0] += 1
                registry_down_until = now + 20
            if registry_down_until is not None and now >= registry_down_until:
                registry = spawn("registry", str(ports["registry"]), records)
                children[1] = registry
                registry_down_until = None
            if now >= next_rotate:
                rotations.append(time.time())
                new_issuer_key()
                next_rotate += rotate * 60
                mint()
            if now >= next_mint:
                mint()
                next_mint += 60
            if now >= next_sign:
                resign()
                next_sign += 60
            time.sleep(max(0.0, 10 - (time.monotonic() - now)))
    finally:
        for c in children:
            c.terminate()
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(15)
        except subprocess.TimeoutExpired:
            proxy.kill()
        for c in children:
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()
        jwks_srv.shutdown()
    summary(rows, stats, len(keys), signed[0], restarted[0])
    rel = lambda t: round(t - wall_start, 1)
    print(f"key rotations at s: {[rel(t) for t in rotations]}")
    print(f"JWKS fetches at s: {[rel(t) for t in jwks_gets]}")
    for at, key in refusals[:50]:
        fetched = [at - g for g in jwks_gets if g <= at]
        rotated = [at - r for r in rotations if r <= at]
        print(f"refused good token at {rel(at)} s: {key}; last JWKS fetch "
              + (f"{fetched[-1]:.1f} s before" if fetched else "none")
              + "; last rotation " + (f"{rotated[-1]:.1f} s before" if rotated else "none"))
    if len(refusals) > 50:
        print(f"... and {len(refusals) - 50} more refusals")


def summary(rows, stats, keys, signed, restarted):
    # The first minute is warm-up (caches, pools, the first audit segment): growth is
    # measured from the first sample after it.
    warm = [r for r in rows if r[0] >= 60] or rows
    first, last = warm[0], warm[-1]
    rss = [r[1] for r in warm]
    print(f"samples: {len(rows)} over {rows[-1][0]} s (growth from t={first[0]} s)")
    print(f"RSS KiB: first {first[1]}, last {last[1]}, max {max(rss)}, min {min(rss)}, "
          f"growth {100.0 * (last[1] - first[1]) / first[1]:+.1f}%, "
          f"max over first {100.0 * (max(rss) - first[1]) / first[1]:+.1f}%")
    for name, i in (("open fds", 2), ("threads", 3)):
        col = [r[i] for r in warm]
        print(f"{name}: first {first[i]}, last {last[i]}, min {min(col)}, max {max(col)}")
    print("RSS / anonymous / file-backed KiB, threads, at minute:")
    for m in CHECKPOINTS:
        at = [r for r in rows if r[0] >= m * 60]
        if at:
            r = at[0]
            print(f"  {m:>3} min (t={r[0]} s): {r[1]} / {r[9]} / {r[10]}, threads {r[3]}")
    # Flatness after warm-up: from the first sample at 5 and at 10 minutes to the end.
    for m in (5, 10):
        after = [r for r in rows if r[0] >= m * 60]
        if len(after) > 1:
            base = after[0][1]
            hi, lo = max(r[1] for r in after), min(r[1] for r in after)
            print(f"RSS after {m} min: from {base} to {after[-1][1]} KiB "
                  f"({100.0 * (after[-1][1] - base) / base:+.1f}%), range {lo}-{hi} "
                  f"({100.0 * (hi - base) / base:+.1f}% at most)")
    parse = lambda names: dict((kv.rsplit("=", 1)[0], int(kv.rsplit("=", 1)[1]))
                               for kv in names.split(";") if "=" in kv)
    per = [parse(r[11]) for r in warm]
    print("threads by name after warm-up: first, last, min, max")
    for name in sorted(set().union(*per)):
        col = [p.get(name, 0) for p in per]
        print(f"  {name}: {col[0]}, {col[-1]}, {min(col)}, {max(col)}")
    print(f"requests: {sum(stats.values())} by kind and answer "
          f"{json.dumps(dict(sorted(stats.items())))}")
    print(f"good-token requests not answered 200, and transport errors: {rows[-1][5]}")
    print(f"issuer keys: {keys}, records signed: {signed}, registry restarts: {restarted}")


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "upstream":
        serve(Upstream, int(rest[0])).serve_forever()
    elif role == "registry":
        serve(make_registry(rest[1]), int(rest[0])).serve_forever()
    elif role == "load":
        load(rest[0], rest[1], rest[2], float(rest[3]))
    elif role == "main":
        main(rest)
    else:
        raise SystemExit(__doc__)
