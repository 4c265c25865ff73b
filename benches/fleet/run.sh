#!/usr/bin/env bash
# Fleet simulation (issue 18 item 6): N real sidecars against `provgate registry serve`.
#
#   benches/fleet/run.sh                                # 50, 100, 200 sidecars, together and staggered
#   benches/fleet/run.sh --sizes 200 --starts together --label after \
#       --registry-extra 'layout = "path"' --window 120 --change-window 90
#                                                       # the path layout watches (60 s) by default
#   PROVGATE_BIN=/path/to/provgate benches/fleet/run.sh ...   # a given binary, no build
#   python3 benches/fleet/idle.py --bin before=A --bin after=B --n 20 --window 60
#                                                       # idle CPU per sidecar, binaries side by side
#
# 200 sidecars exhaust the host's inotify instances (fs.inotify.max_user_instances, 128 by
# default, shared by every process of the user): the rest fall back to their rescans. Other
# work on the machine that relies on inotify slows down meanwhile.
#
# Builds the release binary (nice -n 10) unless PROVGATE_BIN is set; every sidecar and the
# registry server run that one binary. Results are appended to benches/fleet/out/results.jsonl
# (not committed); benches/fleet/report.py turns them into the BENCHMARKS.md tables.
# Each fleet: ready, 30 s steady window, 30 s outage and re-sync, revocation.
set -euo pipefail
cd "$(dirname "$0")/../.."

sizes="50,100,200"
starts="together,staggered"
label="run"
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --starts) starts="$2"; shift 2 ;;
        --label) label="$2"; shift 2 ;;
        *) extra+=("$1"); shift ;;
    esac
done

if [ -z "${PROVGATE_BIN:-}" ]; then
    nice -n 10 cargo build --release --bin provgate
    PROVGATE_BIN="${CARGO_TARGET_DIR:-target}/release/provgate"
fi
commit="$(git rev-parse --short HEAD)"
# Many sidecars: each holds a few descriptors, the server one per sidecar connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

IFS=, read -r -a size_list <<<"$sizes"
IFS=, read -r -a start_list <<<"$starts"
for n in "${size_list[@]}"; do
    for start in "${start_list[@]}"; do
        echo "=== $label: $n sidecars, $start ($(date -u +%H:%M:%S))"
        nice -n 5 python3 benches/fleet/fleet.py --bin "$PROVGATE_BIN" --n "$n" --start "$start" \
            --label "$label" --client-commit "$commit" "${extra[@]}"
    done
done
