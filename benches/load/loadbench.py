#!/usr/bin/env python3
"""provgate load harness: one fixed upstream, several proxies in front of it, measured
interleaved in one run.

Targets (all proxying to the same nginx upstream on 127.0.0.1):
  direct            the upstream itself
  nginx             nginx as a plain reverse proxy (keep-alive pool)
  envoy             Envoy as a plain reverse proxy
  envoy-jwt         Envoy with jwt_authn verifying the same ES256 token on every request
  envoy-jwt-cache   the same with jwt_authn's token cache
  pingora           a minimal pingora pass-through built with provgate's server settings
  provgate          provgate with every check on (token verified, approval cached,
                    artefact verified)

Each round runs every target once per workload (GET ~200 B JSON; POST with a ~2 KB
OpenAI-style body), in a rotated order; rounds repeat; medians are reported with min-max.
Per target: requests/s, p50/p99/p99.9 (wrk, 1 thread, 32 connections), CPU seconds per
10k requests and peak RSS of the proxy's processes, ratios against nginx and direct. Then a
fixed-rate phase (oha, 1,000 requests/s) gives each target's p99 and provgate's added p99
over direct.

Every process it starts it stops, by PID. All traffic stays on 127.0.0.1.
Run it through benches/load/run.sh, which installs the tools and builds the binaries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESPONSE = ('{"object":"list","data":[{"id":"all-minilm-l6-v2","object":"model","created":1764000000,'
            '"owned_by":"platform","root":"/models/all-minilm-l6-v2","max_model_len":512,'
            '"permission":[]}]}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


# === process accounting ===

def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    return [pid] + children(pid)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    port: int

    def pids(self) -> list[int]:
        return tree(self.popen.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start(name: str, cmd: list[str], port: int, work: Path, env: dict | None = None,
          timeout: float = 30) -> Proc:
    log = open(work / f"{name}.log", "wb")
    popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                             env={**os.environ, **(env or {})})
    proc = Proc(name, popen, port)
    try:
        wait_port(port, popen, name, timeout)
    except Exception:
        proc.stop()
        raise RuntimeError(f"{name} failed to start; log:\n" + (work / f"{name}.log").read_text()[-3000:])
    return proc


# === configurations ===

def nginx_conf(work: Path, name: str, port: int, workers: str, body: str) -> Path:
    d = work / name
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    {body}
}}
""")
    return conf


def upstream_nginx(work: Path) -> Proc:
    port = free_port()
    body = f"""
    server {{
        listen 127.0.0.1:{port} reuseport;
        default_type application/json;
        location / {{ return 200 '{RESPONSE}'; }}
    }}"""
    conf = nginx_conf(work, "upstream", port, "1", body)
    return start("upstream", ["nginx", "-c", str(conf)], port, work)


def nginx_proxy(work: Path, upstream: int) -> Proc:
    port = free_port()
    body = f"""
    upstream model {{ server 127.0.0.1:{upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}"""
    conf = nginx_conf(work, "nginx-proxy", port, "auto", body)
    return start("nginx", ["nginx", "-c", str(conf)], port, work)


def envoy(work: Path, envoy_bin: str, upstream: int, name: str, jwks: str | None,
          cache: bool) -> Proc:
    port = free_port()
    admin = free_port()
    filters = []
    if jwks is not None:
        provider = {
            "issuer": "https://issuer.bench",
            "audiences": ["provgate"],
            "local_jwks": {"inline_string": jwks},
            "forward": True,
        }
        if cache:
            provider["jwt_cache_config"] = {"jwt_cache_size": 1000}
        filters.append({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"bench": provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
            },
        })
    filters.append({"name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                            "routes": [{"match": {"prefix": "/"},
                                                                        "route": {"cluster": "model"}}]}]},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": [{
                "name": "model",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "model", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                "port_value": upstream}}}}]}]},
            }],
        },
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))
    return start(name, [envoy_bin, "-c", str(path), "--concurrency", str(os.cpu_count() or 2),
                        "--disable-hot-restart", "-l", "warning", "--base-id", str(port)], port, work)


def provgate_config(work: Path, upstream: int, setup: dict) -> tuple[Path, int]:
    port = free_port()
    admin = free_port()
    text = f"""
[listen]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[upstream]
address = "127.0.0.1:{upstream}"
keepalive_pool = 128
[workload]
identity = "spiffe://example.org/ns/prod/sa/model-serving"
[artefact]
model = "all-minilm-l6-v2"
path = "{setup['model']}"
[registry]
kind = "dir"
path = "{setup['registry']}"
[trust]
approver_keys = "{setup['approvers']}"
[[callers.issuers]]
issuer = "https://issuer.bench"
jwks_file = "{setup['issuer_jwks']}"
audiences = ["provgate"]
[audit]
path = "{work / 'audit.jsonl'}"
[log]
level = "warn"
"""
    path = work / f"provgate-{port}.toml"
    path.write_text(text)
    return path, port


# === measurement ===

@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_per_10k: float | None
    rss_mb: float | None
    errors: int


@dataclass
class Target:
    name: str
    proc: Proc | None
    port: int
    samples: dict = field(default_factory=dict)


# The GET workload: KServe v2 model metadata. It names its model in the path, so provgate
# checks that name too; it is not the OpenAI model list, which provgate filters per caller
# (a body rewrite no other target does).
GET_PATH = "/v2/models/all-minilm-l6-v2"


def run_wrk(port: int, path: str, seconds: int, token: str, body: Path | None) -> dict:
    env = {**os.environ, "LOAD_TOKEN": token, "LOAD_METHOD": "POST" if body else "GET",
           "LOAD_BODY": str(body) if body else ""}
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(HERE / "wrk.lua"),
                          f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, env=env, timeout=seconds + 30)
    for line in out.stdout.splitlines():
        if line.startswith("LOADJSON "):
            return json.loads(line[len("LOADJSON "):])
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def measure(t: Target, workload: str, seconds: int, token: str) -> Sample:
    body = HERE / "chat-request.json" if workload == "post" else None
    path = "/v1/chat/completions" if body else GET_PATH
    pids = t.proc.pids() if t.proc else []
    cpu0 = cpu_seconds(pids)
    r = run_wrk(t.port, path, seconds, token, body)
    cpu1 = cpu_seconds(pids)
    requests = max(r["requests"], 1)
    return Sample(
        rps=requests / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        p999_ms=r["p999_us"] / 1000,
        cpu_per_10k=(cpu1 - cpu0) / requests * 10_000 if t.proc else None,
        rss_mb=peak_rss_mb(pids) if t.proc else None,
        errors=r["errors"] + r["non2xx"],
    )


def run_oha(oha: str, port: int, seconds: int, rate: int, token: str) -> float:
    out = subprocess.run([oha, "-z", f"{seconds}s", "-q", str(rate), "-c", "16", "--latency-correction",
                          "--no-tui", "--output-format", "json", "-H", f"Authorization: Bearer {token}",
                          f"http://127.0.0.1:{port}{GET_PATH}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    data = json.loads(out.stdout)
    codes = data.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    if bad:
        raise RuntimeError(f"fixed-rate run on {port} had {bad} non-2xx responses: {codes}")
    return data["latencyPercentiles"]["p99"] * 1000


def med(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = statistics.median(values)
    fmt = (lambda v: f"{v:,.0f}") if m >= 100 else (lambda v: f"{v:.3g}")
    return f"{fmt(m)} ({fmt(min(values))}-{fmt(max(values))})"


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired(by: dict[str, list[Sample]], base: str) -> list[str]:
    """Each target against `base` round by round (both measured within the same minute), which
    cancels the slow drifts of a shared machine that medians of each target alone keep."""
    ref = by.get(base) or []
    rows = []
    for name, samples in by.items():
        if name in (base, "direct") or not samples or len(samples) != len(ref):
            continue
        rps = [s.rps / r.rps for s, r in zip(samples, ref)]
        cpu = [s.cpu_per_10k / r.cpu_per_10k for s, r in zip(samples, ref)
               if s.cpu_per_10k and r.cpu_per_10k]
        rows.append(f"| {name} | {med(rps)} | {med(cpu)} |")
    if not rows:
        return []
    return ["", f"Round by round against {base}: median (min-max) of the per-round ratios.", "",
            "| target | requests/s ratio | CPU per request ratio |", "|---|---|---|"] + rows


def report(targets: list[Target], workloads: list[str], fixed: dict, args, machine: str) -> str:
    lines = [f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}; "
             f"{args.rounds} interleaved rounds x {args.seconds}s per target and workload; "
             "wrk -t1 -c32; medians (min-max)."]
    for w in workloads:
        by = {t.name: t.samples.get(w, []) for t in targets}
        ref_nginx = median([s.rps for s in by.get("nginx", [])])
        ref_direct = median([s.rps for s in by.get("direct", [])])
        label = f"GET {GET_PATH}, ~200 B JSON response" if w == "get" else \
            "POST /v1/chat/completions, ~2 KB JSON body"
        lines += ["", f"### {label}", "",
                  "| target | requests/s | p50 ms | p99 ms | p99.9 ms | CPU s / 10k req | peak RSS MB | vs nginx | vs direct | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for t in targets:
            s = by[t.name]
            if not s:
                continue
            rps = median([x.rps for x in s])
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                t.name, med([x.rps for x in s]), med([x.p50_ms for x in s]), med([x.p99_ms for x in s]),
                med([x.p999_ms for x in s]), med([x.cpu_per_10k for x in s]), med([x.rss_mb for x in s]),
                f"{rps / ref_nginx:.2f}" if ref_nginx else "-",
                f"{rps / ref_direct:.2f}" if ref_direct else "-",
                sum(x.errors for x in s)))
        lines += paired(by, "pingora")
    if fixed:
        lines += ["", f"### Fixed rate: {args.rate} requests/s for {args.fixed_seconds}s (oha, latency-corrected)", "",
                  "| target | p99 ms | added p99 over direct, ms |", "|---|---|---|"]
        direct = median(fixed.get("direct", []))
        for name, values in fixed.items():
            m = median(values)
            added = f"{m - direct:.3f}" if direct is not None and name != "direct" else "-"
            lines.append(f"| {name} | {med(values)} | {added} |")
    return "\n".join(lines)


def instruction_counts(args, setup: dict, work: Path, up: Proc) -> int:
    import instructions
    targets = []
    for name, cmd in [("pingora", [setup["passthrough"]]), ("provgate", [setup["provgate"], "run"])] + \
            [(n, [b, "run"]) for n, _, b in (c.partition("=") for c in args.candidate)]:
        if args.only and name not in args.only.split(","):
            continue
        cfg, port = provgate_config(work, up.port, setup)
        targets.append((name, cmd + (["-c"] if name != "pingora" else []) + [str(cfg)], port))
    def start_slow(name, cmd, port, work):
        return start(name, cmd, port, work, timeout=180)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = instructions.count(targets, work, setup, setup["token"], args.instructions,
                                args.workloads.split(","), GET_PATH, start_slow, out)
    text = instructions.report(result, "pingora", args.instructions)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"instructions-{stamp}.md").write_text(text + "\n")
    print("\n" + text + f"\n\nwritten: {out / f'instructions-{stamp}.md'}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", required=True, help="JSON written by run.sh: binaries, keys, token")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--fixed-seconds", type=int, default=10)
    p.add_argument("--only", default="", help="comma-separated target names")
    p.add_argument("--instructions", type=int, default=0, metavar="N",
                   help="instead of the timed rounds: instructions per request of the pass-through, "
                        "provgate and candidates under callgrind, N requests per workload")
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=PATH",
                   help="another provgate binary, run with provgate's configuration as target NAME "
                        "(an A/B of a change; repeatable)")
    p.add_argument("--workloads", default="get,post")
    p.add_argument("--out", default=str(HERE / "out"))
    args = p.parse_args()
    setup = json.loads(Path(args.setup).read_text())
    work = Path(tempfile.mkdtemp(prefix="provgate-load-"))
    procs: list[Proc] = []
    try:
        up = upstream_nginx(work)
        procs.append(up)
        targets = [Target("direct", None, up.port)]

        def add(name: str, make) -> None:
            if args.only and name not in args.only.split(","):
                return
            proc = make()
            procs.append(proc)
            targets.append(Target(name, proc, proc.port))

        if args.instructions:
            return instruction_counts(args, setup, work, up)
        add("nginx", lambda: nginx_proxy(work, up.port))
        if setup.get("envoy"):
            add("envoy", lambda: envoy(work, setup["envoy"], up.port, "envoy", None, False))
            add("envoy-jwt", lambda: envoy(work, setup["envoy"], up.port, "envoy-jwt", setup["issuer_jwks_text"], False))
            add("envoy-jwt-cache", lambda: envoy(work, setup["envoy"], up.port, "envoy-jwt-cache", setup["issuer_jwks_text"], True))
        cfg, port = provgate_config(work, up.port, setup)
        add("pingora", lambda: start("pingora", [setup["passthrough"], str(cfg)], port, work))
        cfg2, port2 = provgate_config(work, up.port, setup)
        add("provgate", lambda: start("provgate", [setup["provgate"], "run", "-c", str(cfg2)], port2, work))
        for spec in args.candidate:
            name, _, binary = spec.partition("=")
            if not name or not binary:
                raise SystemExit(f"--candidate wants NAME=PATH, got {spec!r}")
            cfg_c, port_c = provgate_config(work, up.port, setup)
            add(name, lambda: start(name, [binary, "run", "-c", str(cfg_c)], port_c, work))

        token = setup["token"]
        # Every target must answer 200 to the benchmark request before anything is measured.
        for t in targets:
            r = run_wrk(t.port, GET_PATH, 1, token, None)
            if r["non2xx"] or r["errors"] or r["requests"] == 0:
                raise RuntimeError(f"{t.name} does not serve the benchmark request: {r}\n"
                                   + ((work / f'{t.name}.log').read_text()[-2000:] if t.proc else ""))
        workloads = args.workloads.split(",")
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for w in workloads:
                for t in order:
                    s = measure(t, w, args.seconds, token)
                    t.samples.setdefault(w, []).append(s)
                    print(f"round {rnd + 1} {w:4} {t.name:16} {s.rps:9.0f} req/s  p99 {s.p99_ms:.3f} ms"
                          f"  cpu/10k {s.cpu_per_10k if s.cpu_per_10k is None else round(s.cpu_per_10k, 3)}"
                          f"  errors {s.errors}", flush=True)
        fixed: dict[str, list[float]] = {}
        if setup.get("oha") and args.fixed_seconds > 0:
            fixed_names = [t for t in targets if t.name in ("direct", "nginx", "envoy-jwt-cache", "pingora", "provgate")]
            for rnd in range(args.rounds):
                for t in fixed_names:
                    p99 = run_oha(setup["oha"], t.port, args.fixed_seconds, args.rate, token)
                    fixed.setdefault(t.name, []).append(p99)
                    print(f"fixed-rate round {rnd + 1} {t.name:16} p99 {p99:.3f} ms", flush=True)
        machine = f"{os.cpu_count()} cores, " + subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip()
        text = report(targets, workloads, fixed, args, machine)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (out / f"load-{stamp}.md").write_text(text + "\n")
        (out / f"load-{stamp}.json").write_text(json.dumps(
            {t.name: {w: [s.__dict__ for s in v] for w, v in t.samples.items()} for t in targets}
            | {"fixed_rate_p99_ms": fixed}, indent=1))
        print("\n" + text)
        print(f"\nwritten: {out / f'load-{stamp}.md'}")
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
