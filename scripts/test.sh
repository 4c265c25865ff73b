#!/usr/bin/env bash
# Runs every test provgate has: formatting, lints, unit tests, and the integration tests
# (real binary, real sockets on 127.0.0.1, the reference model_signing tool and PyJWT, a real
# MLflow model registry server, a real KServe model server, kubernetes-validate, promtool and
# a real Prometheus server).
# Installs whatever a fresh machine lacks first. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

PROVGATE_PYTHON="$(scripts/setup.sh --python | tail -n 1)"
export PROVGATE_PYTHON
PROVGATE_MLFLOW="$(scripts/setup.sh --mlflow | tail -n 1)"
export PROVGATE_MLFLOW
PROVGATE_KSERVE_PYTHON="$(scripts/setup.sh --kserve | tail -n 1)"
export PROVGATE_KSERVE_PYTHON
# kubernetes-validate for `provgate inject`'s golden tests; promtool and prometheus (Debian's
# package) for the monitoring pack's tests.
PROVGATE_OPS_PYTHON="$(scripts/setup.sh --ops | tail -n 1)"
export PROVGATE_OPS_PYTHON

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
[ "$status" -eq 0 ] || exit "$status"
# Coverage-guided fuzzing, bounded: each target for PROVGATE_FUZZ_SECONDS (default 8) on the
# stable toolchain; a crash fails the run (README "Fuzzing"). PROVGATE_FUZZ_SECONDS=0 skips.
fuzz_seconds="${PROVGATE_FUZZ_SECONDS:-8}"
if [ "$fuzz_seconds" -gt 0 ]; then
    scripts/fuzz.sh "$fuzz_seconds"
fi
