#!/usr/bin/env bash
# Runs provgate on the embedded defaults (config/provgate.toml: the sample model, the demo
# keys and the sample approval), installing what a fresh machine lacks first.
# Extra arguments go to `provgate run`, e.g. `scripts/run.sh -c my.toml`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ $# -eq 0 ]; then
    set -- -c config/provgate.toml
fi
exec cargo run --locked --release --bin provgate -- run "$@"
