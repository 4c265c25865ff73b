#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input (fuzz/, README "Fuzzing"):
# builds the fuzz targets with cargo-fuzz on the stable toolchain (`-s none`: no sanitizer,
# which needs nightly; panics, overflows and debug assertions are still crashes), then runs
# each target for SECONDS (default 60) on one core, from its committed seeds and corpus.
# Prints the executions each target saw; exits non-zero if any target crashed (the input is
# left in fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ once fixed).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz is installed from crates.io (pinned, --locked) into the project cache if the
# machine lacks it. New corpus entries are written to a scratch copy, not to fuzz/corpus/,
# unless FUZZ_KEEP_CORPUS=1 (then minimise with `cargo fuzz cmin -s none TARGET` before
# committing).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
cache="${PROVGATE_CACHE:-$HOME/.cache/provgate}"
CARGO_FUZZ_VERSION=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    if ! "$cache/cargo-fuzz/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $cache/cargo-fuzz" >&2
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$cache/cargo-fuzz" >&2
    fi
    export PATH="$cache/cargo-fuzz/bin:$PATH"
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
# The sanitizer is off (stable); debug assertions and overflow checks are on (fuzz/Cargo.toml).
cargo fuzz build -s none 2>&1 | tail -n 3 >&2 || { echo "fuzz: build failed" >&2; exit 1; }
echo "fuzz: build took $(( $(date +%s) - start ))s" >&2

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
printf '%-14s %12s %10s %8s %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
    if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
        corpus="fuzz/corpus/$t"
        mkdir -p "$corpus"
    else
        corpus="$scratch/$t"
        mkdir -p "$corpus"
        cp -r "fuzz/corpus/$t/." "$corpus/" 2>/dev/null || true
    fi
    log="$scratch/$t.log"
    set +e
    cargo fuzz run -s none "$t" "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    execs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$log" | tail -n 1)
    rate=$(awk '/stat::average_exec_per_sec/ { print $NF }' "$log" | tail -n 1)
    size=$(find "$corpus" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        result=ok
    else
        result="CRASH (exit $status)"
        failed+=("$t")
        grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -n 8 >&2 || true
    fi
    printf '%-14s %12s %10s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$size" "$result"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
