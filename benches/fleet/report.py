#!/usr/bin/env python3
"""Markdown tables for BENCHMARKS.md from benches/fleet/out/results.jsonl (fleet.py's output),
each with the extrapolation to 10,000 sidecars: rates scale with N; ratios (busiest against
mean, attempts against normal polling) and times are carried over as measured at the largest N.

usage: report.py [results.jsonl]
"""
import json
import sys

FLEET = 10_000


def mode(r):
    extra = r["registry_extra"].replace("\\n", " ").strip()
    return extra or "default"


def rows(path):
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}"


def main():
    rs = rows(sys.argv[1] if len(sys.argv) > 1 else "benches/fleet/out/results.jsonl")
    print("#### Registry load in steady state\n")
    print("| client (commit) | [registry] | N | start | registry req/s | busiest s (x mean) "
          "| busiest 100 ms (x mean) | 304 share | held (watch) | sidecar CPU ms/s | "
          "at 10,000: req/s | at 10,000: busiest s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rs:
        s = r["steady"]
        scale = FLEET / r["n"]
        busiest = s["busiest_s_vs_mean"] or 0
        print(f"| {r['label']} ({r['client_commit']}) | {mode(r)} | {r['n']} | {r['start']} | "
              f"{fmt(s['requests_per_s'])} | {s['busiest_s']} ({fmt(s['busiest_s_vs_mean'])}) | "
              f"{s['busiest_100ms']} ({fmt(s['busiest_100ms_vs_mean'])}) | {fmt(s['share_304'], 3)} | "
              f"{s['held']} | {fmt(s['sidecar_cpu_ms_per_s'], 3)} | "
              f"{fmt(round(s['requests_per_s'] * scale))} | {fmt(round(s['requests_per_s'] * scale * busiest))} |")
    print("\n#### Registry outage (server stopped) and re-sync\n")
    print("| client (commit) | [registry] | N | start | down s | attempts | attempts/s | normal polling, same time "
          "| attempts x normal | all re-synced after s | median s | at 10,000: attempts/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rs:
        o = r.get("outage")
        if not o:
            continue
        print(f"| {r['label']} ({r['client_commit']}) | {mode(r)} | {r['n']} | {r['start']} | {o['down_s']} | "
              f"{fmt(o['attempts'])} | {fmt(o['attempts_per_s'])} | {fmt(o['normal_requests_same_time'])} | "
              f"{fmt(o['attempts_vs_normal'])} | {fmt(o['resync_all_s'])} | {fmt(o['resync_median_s'])} | "
              f"{fmt(round(o['attempts_per_s'] * FLEET / r['n']))} |")
    print("\n#### Revocation to blocked, every sidecar (probe resolution 100 ms)\n")
    print("| client (commit) | [registry] | N | start | first s | median s | all blocked s |")
    print("|---|---|---|---|---|---|---|")
    for r in rs:
        v = r["revocation"]
        print(f"| {r['label']} ({r['client_commit']}) | {mode(r)} | {r['n']} | {r['start']} | "
              f"{fmt(v['first_s'])} | {fmt(v['median_s'])} | {fmt(v['all_blocked_s'])} |")


if __name__ == "__main__":
    main()
