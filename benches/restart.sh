#!/usr/bin/env bash
# Restart over an unchanged model (issue 18 item 5): time from starting `provgate run` to
# `/readyz` 200, with every file hashed (`manifest_cache = "off"`, the behaviour before the
# persisted manifest) and with the persisted manifest. Generates FILES files of MIB MiB of
# pseudo-random data each (default 10 x 1024 MiB), runs each case ROUNDS times (default 3), prints
# one line per start (case, seconds to ready, bytes read according to /readyz, the load average
# and CPU pressure when it was ready; FULL_ROUNDS full-hash starts), and the
# start scrub's duration for the cached case; deletes the data on exit.
#
# Run: [FILES=10] [MIB=1024] [ROUNDS=3] [FULL_ROUNDS=ROUNDS] [SPARSE=1] [LOG=info]
#      [KEEP_LOGS=DIR] benches/restart.sh [PROVGATE_BINARY]
#   (default: $CARGO_TARGET_DIR or target, /release/provgate; build it with
#   `cargo build --release` first). Unless SPARSE=1 (holes, no disk), needs FILES x MIB MiB free under $WORK (default
#   /work/tmp, else $TMPDIR): check `df` first.
#
# Reference (2026-12-01, 2-core machine shared with other builds): BENCHMARKS.md "Restart".
set -euo pipefail
bin="${1:-${CARGO_TARGET_DIR:-target}/release/provgate}"
files="${FILES:-10}"
mib="${MIB:-1024}"
rounds="${ROUNDS:-3}"
base="${WORK:-/work/tmp}"
[ -d "$base" ] || base="${TMPDIR:-/tmp}"
work="$(mktemp -d "$base/restart-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/model" "$work/records" "$work/audit"
python3 - "$work/model" "$files" "$mib" "${SPARSE:-0}" <<'PY'
import os, sys
d, n, g = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if sys.argv[4] == "1":
    # Sparse files: no disk used; reading a hole costs a zero-filled page instead of a
    # page-cache copy, and the SHA-256 the same.
    for i in range(n):
        with open(os.path.join(d, f"model-{i:05d}-of-{n:05d}.safetensors"), "wb") as f:
            f.truncate(g << 20)
    sys.exit(0)
# 64 MiB of random bytes, written over and over with the file and block number in front of
# each MiB (the content only has to be distinct per file; generating 10 GiB of fresh
# randomness costs minutes on a busy machine).
block = bytearray(os.urandom(64 << 20))
for i in range(n):
    with open(os.path.join(d, f"model-{i:05d}-of-{n:05d}.safetensors"), "wb") as f:
        for m in range(g):
            o = (m % 64) << 20
            block[o:o + 8] = (i << 32 | m).to_bytes(8, "little")
            f.write(memoryview(block)[o:o + (1 << 20)])
PY
"$bin" keygen --key "$work/approver.key" --jwks "$work/approvers.jwks.json" >/dev/null
"$bin" keygen --key "$work/issuer.key" --jwks "$work/issuer.jwks.json" >/dev/null
# The files must be older than the racily-clean margin (2 s) when first listed.
sleep 3

config() { # $1: manifest_cache line
    cat > "$work/provgate.toml" <<TOML
[listen]
address = "127.0.0.1:$2"
[admin]
address = "127.0.0.1:$3"
[upstream]
address = "127.0.0.1:1"
[workload]
identity = "spiffe://example.org/ns/prod/sa/model-serving"
[artefact]
model = "big"
path = "$work/model"
$1
[registry]
kind = "dir"
path = "$work/records"
[trust]
approver_keys = "$work/approvers.jwks.json"
[[callers.issuers]]
issuer = "https://issuer.test"
jwks_file = "$work/issuer.jwks.json"
audiences = ["provgate"]
[tiers.internal]
[audit]
path = "$work/audit/audit.jsonl"
[server]
threads = 1
grace_period = "0s"
TOML
}

# Starts provgate, prints "SECONDS BYTES_READ" once /readyz answers 200; with $2 = scrub,
# also waits for the start scrub and prints its duration; stops it.
start() {
    python3 - "$bin" "$work/provgate.toml" "$1" "$2" "$work/run.log" <<'PY'
import json, os, subprocess, sys, time, urllib.request
bin, config, admin, wait_scrub, log = sys.argv[1:]
t0 = time.monotonic()
p = subprocess.Popen([bin, "run", "-c", config], stdout=subprocess.DEVNULL,
                     stderr=open(log, "w"), env={"RUST_LOG": os.environ.get("LOG", "info")})
def get(path):
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""
try:
    while True:
        status, body = get("/readyz")
        if status == 200:
            ready = time.monotonic() - t0
            break
        if p.poll() is not None or time.monotonic() - t0 > 600:
            sys.exit("provgate did not become ready: " + open(log).read()[-2000:])
        time.sleep(0.005)
    # The machine's load at that moment (shared machine: a slow start is often a wait for a core).
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    try:
        cpu = open("/proc/pressure/cpu").read().split()[1]
    except OSError:
        cpu = "avg10=?"
    h = json.loads(body)["models"]["big"]["hash"]
    out = f"{ready:.3f} {h['bytes_done']} load={load} cpu_pressure_{cpu}"
    if wait_scrub == "scrub":
        series = 'provgate_artefact_scrubs_total{model="big",result="ok"} 1'
        while series not in get("/metrics")[1]:
            time.sleep(0.05)
        out += f" scrub_done_at={time.monotonic() - t0:.1f}"
    else:
        # Let the watcher persist the manifest after publishing.
        deadline = time.monotonic() + 30
        while "artefact hashed" not in open(log).read() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    print(out)
finally:
    p.kill()
    p.wait()
PY
    # Each start's log kept, named by its time, when KEEP_LOGS names a directory (this runs
    # in a command substitution: no counter survives it).
    if [ -n "${KEEP_LOGS:-}" ]; then
        cp "$work/run.log" "$KEEP_LOGS/start-$(date +%H%M%S.%N).log"
    fi
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "model: $files files x $mib MiB, $(du -sh "$work/model" | cut -f1)"
for r in $(seq "${FULL_ROUNDS:-$rounds}"); do
    config 'manifest_cache = "off"' "$(port)" "$(port)"
    echo "full hash (manifest_cache off), round $r: $(start "$(grep -A1 '^\[admin\]' "$work/provgate.toml" | sed -n 's/.*"\(.*\)"/\1/p')" "")"
done
rm -f "$work/audit/manifest-big.json"
config '' "$(port)" "$(port)"
admin() { grep -A1 '^\[admin\]' "$work/provgate.toml" | sed -n 's/.*"\(.*\)"/\1/p'; }
echo "first start, no cache yet: $(start "$(admin)" "")"
for r in $(seq "$rounds"); do
    config '' "$(port)" "$(port)"
    echo "restart with the persisted manifest, round $r: $(start "$(admin)" "")"
done
config '' "$(port)" "$(port)"
echo "restart with the persisted manifest, waiting for the start scrub: $(start "$(admin)" scrub)"
grep -o 'manifest cache: reused [0-9]* files, read [0-9]* bytes' "$work/run.log" || true
