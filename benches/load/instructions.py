"""Instructions per request, counted by callgrind: the repeatable yardstick for what the
checks cost, where wall-clock and CPU-time ratios on a shared 2-core VM drift by several
percent from one minute to the next.

Each Rust proxy (the pingora pass-through, provgate, and any --candidate) runs under
`valgrind --tool=callgrind` with instrumentation off while it starts and warms up (first
token verification, pools). Then, per workload, the counters are zeroed, oha sends a fixed
number of requests over keep-alive connections, and the counters are dumped: instructions
executed in the proxy's user space (every thread) divided by the request count. Kernel work
(the syscalls themselves) is not counted; the load harness's CPU time covers that.

Called from loadbench.py (`benches/load/run.sh --instructions N`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _dump_total(out_prefix: Path, before: set[Path], keep: Path) -> int:
    """The `totals:` line of the dump file callgrind wrote since `before` was listed; the
    file is kept as `keep`, for `callgrind_annotate`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = sorted(set(out_prefix.parent.glob(out_prefix.name + "*")) - before)
        for f in new:
            text = f.read_text(errors="replace")
            m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
            if m:
                shutil.copyfile(f, keep)
                return int(m.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump under {out_prefix}")


def _oha(oha: str, port: int, n: int, token: str, post: Path | None, path: str) -> None:
    cmd = [oha, "-n", str(n), "-c", "8", "--no-tui", "--output-format", "json",
           "-H", f"Authorization: Bearer {token}"]
    if post:
        cmd += ["-m", "POST", "-D", str(post), "-T", "application/json"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True,
                         text=True, timeout=600)
    codes = json.loads(out.stdout).get("statusCodeDistribution", {})
    if set(codes) != {"200"}:
        raise RuntimeError(f"requests to {port} were not all 200: {codes}")


def count(targets: list[tuple[str, list[str], int]], work: Path, setup: dict, token: str,
          requests: int, workloads: list[str], get_path: str, start,
          out: Path) -> dict[str, dict[str, float]]:
    """Instructions per request for each (name, command, port), per workload; the profiles
    are kept in `out` as callgrind-NAME-WORKLOAD.out."""
    valgrind = shutil.which("valgrind")
    ctl = shutil.which("callgrind_control")
    if not valgrind or not ctl:
        raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
    oha = setup["oha"]
    result: dict[str, dict[str, float]] = {}
    for name, cmd, port in targets:
        prefix = work / f"callgrind-{name}"
        proc = start(f"{name}-callgrind",
                     [valgrind, "--tool=callgrind", "--instr-atstart=no",
                      f"--callgrind-out-file={prefix}.%p"] + cmd,
                     port, work)
        try:
            pid = str(proc.popen.pid)
            body = HERE / "chat-request.json"
            for w in workloads:
                post = body if w == "post" else None
                path = "/v1/chat/completions" if post else get_path
                # Warm: caches, pool, first verification. Under valgrind the background
                # services (first hash, registry read) can still be finishing when the port
                # opens, so the warm-up is retried until one run is all 200.
                for attempt in range(20):
                    try:
                        _oha(oha, port, 200, token, post, path)
                        break
                    except RuntimeError:
                        if attempt == 19:
                            raise
                        time.sleep(1)
            subprocess.run([ctl, "--instr=on", pid], check=True, capture_output=True)
            result[name] = {}
            for w in workloads:
                post = body if w == "post" else None
                path = "/v1/chat/completions" if post else get_path
                subprocess.run([ctl, "--zero", pid], check=True, capture_output=True)
                _oha(oha, port, requests, token, post, path)
                before = set(work.glob(prefix.name + "*"))
                subprocess.run([ctl, "--dump", pid], check=True, capture_output=True)
                keep = out / f"callgrind-{name}-{w}.out"
                result[name][w] = _dump_total(prefix, before, keep) / requests
                print(f"instructions {w:4} {name:16} {result[name][w]:,.0f} per request", flush=True)
        finally:
            proc.stop()
    return result


def report(result: dict[str, dict[str, float]], base: str, requests: int) -> str:
    workloads = sorted({w for r in result.values() for w in r})
    lines = [f"Instructions per request in the proxy's user space (callgrind, {requests} requests "
             "per workload over 8 keep-alive connections, after a warm-up; repeatable to about 0.2%, an occasional run up to 0.7% off).",
             "", "| target | " + " | ".join(f"{w.upper()} instructions | vs {base}" for w in workloads) + " |",
             "|---|" + "---|---|" * len(workloads)]
    for name, r in result.items():
        cells = []
        for w in workloads:
            v = r.get(w)
            b = result.get(base, {}).get(w)
            cells += [f"{v:,.0f}" if v else "-", f"{v / b:.3f}" if v and b else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit("run through benches/load/run.sh --instructions N")
