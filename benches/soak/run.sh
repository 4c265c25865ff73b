#!/usr/bin/env bash
# The soak benchmark (issue 16 item 6; a benchmark, not a CI test):
#   benches/soak/run.sh [--minutes N] [--rate RPS] [--rotate-minutes M] [--bin PATH] [--csv FILE]
# Runs the real provgate binary for N minutes (default 60) behind mixed traffic (allowed
# GET/POST, missing and bad tokens, refused routes, traceparents; about RPS requests/s, default
# 200, new connections every 200 requests), with a new issuer key in the HTTP JWKS every M
# minutes (default 5) and fresh tokens every minute, the approval record re-signed every
# minute, and the HTTP registry restarted twice. Samples provgate's RSS (and its anonymous
# part), open fds, threads and threads by name every 10 s into a CSV (default
# soak-YYYYmmddTHHMMSS.csv) and prints a summary: RSS at 1-60 min, flatness after 5 and 10
# min, each thread name's count, and every good-token refusal beside the JWKS fetch times.
# --bin: the provgate binary (default: built with `cargo build --release`). All on 127.0.0.1;
# every process it starts is stopped; its work directory is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=60 rate=200 rotate=5 bin="" csv="soak-$(date -u +%Y%m%dT%H%M%S).csv"
while [ $# -gt 0 ]; do
    case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --rotate-minutes) rotate="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --csv) csv="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --release --locked --bin provgate
    bin="${CARGO_TARGET_DIR:-target}/release/provgate"
fi
bin="$(realpath "$bin")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/model"
cp -r config/sample-model/. "$work/model/"
python3 benches/soak/soak.py main --bin "$bin" --minutes "$minutes" --rate "$rate" \
    --rotate-minutes "$rotate" --work "$work" --csv "$csv"
echo "samples: $csv"
