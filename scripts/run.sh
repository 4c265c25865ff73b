#!/usr/bin/env bash
# The first run: provgate in front of a real model server on loopback, on the embedded
# defaults. Installs what a fresh machine lacks first (scripts/setup.sh --kserve: KServe's
# Python ModelServer, onnxruntime and all-MiniLM-L6-v2 as an int8 ONNX file, no torch), then
#   - copies the model's files from the virtual environment into a served directory
#     ($PROVGATE_DEMO_DIR/model; the original stays untouched),
#   - serves them with KServe (tests/kserve/serve.py) on 127.0.0.1:$PROVGATE_MODEL_PORT,
#   - runs provgate on config/provgate.toml with only the ports, the model directory and the
#     audit file changed (config/approvals holds the demo approval for exactly these files),
#   - prints three commands to try: allowed (200), no token (401), changed weights (403).
# Ctrl-C stops both.
#
#   scripts/run.sh               the first run described above
#   scripts/run.sh -c my.toml    provgate alone on your configuration (arguments go to
#                                `provgate run`)
#
# Environment (defaults for a human; tests set their own):
#   PROVGATE_PORT=8080  PROVGATE_ADMIN_PORT=9090  PROVGATE_MODEL_PORT=8000
#   PROVGATE_DEMO_DIR=.first-run   where the served copy, the config, logs and token go
#   PROVGATE_BIN=                  a provgate binary to use instead of `cargo build --release`
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

if [ -n "${PROVGATE_BIN:-}" ]; then
    bin="$PROVGATE_BIN"
else
    cargo build --locked --release --bin provgate
    bin="${CARGO_TARGET_DIR:-target}/release/provgate"
fi
if [ $# -gt 0 ]; then
    exec "$bin" run "$@"
fi

model=all-minilm-l6-v2
port="${PROVGATE_PORT:-8080}"
admin_port="${PROVGATE_ADMIN_PORT:-9090}"
model_port="${PROVGATE_MODEL_PORT:-8000}"
demo="${PROVGATE_DEMO_DIR:-.first-run}"
mkdir -p "$demo"
demo="$(cd "$demo" && pwd)"
python="$(scripts/setup.sh --kserve | tail -n 1)"

# The served copy of the weights, fresh on every start (so the byte changed by the third
# command below is undone by the next run).
rm -rf "$demo/model"
"$python" tests/kserve/serve.py prepare "$demo/model"

# config/provgate.toml with the ports, the served directory, the audit file and a KServe probe.
config="$demo/provgate.toml"
sed -e "s#^address = \"127.0.0.1:8080\"#address = \"127.0.0.1:$port\"#" \
    -e "s#^address = \"127.0.0.1:9090\"#address = \"127.0.0.1:$admin_port\"#" \
    -e "s#^address = \"127.0.0.1:8000\"#address = \"127.0.0.1:$model_port\"#" \
    -e "s#^path = \"config/sample-model\"#path = \"$demo/model\"#" \
    -e "s#^path = \"provgate-audit.jsonl\"#path = \"$demo/provgate-audit.jsonl\"#" \
    config/provgate.toml > "$config"
printf '\n# Added by scripts/run.sh: ask the KServe server what it serves.\n[upstream.probe]\nkind = "kserve_v2"\ninterval = "1s"\n' >> "$config"
for want in "127.0.0.1:$port" "127.0.0.1:$admin_port" "127.0.0.1:$model_port" "$demo/model" "$demo/provgate-audit.jsonl"; do
    grep -qF "\"$want\"" "$config" || {
        echo "run.sh: config/provgate.toml changed shape; could not set $want in $config" >&2
        exit 1
    }
done
"$bin" run -t -c "$config" >/dev/null

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    echo "run.sh: stopped provgate and the model server" >&2
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for URL PID WHAT LOG: until URL answers 200, or PID exits (then the log's tail).
wait_for() {
    for _ in $(seq 1800); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "run.sh: $3 exited; the end of $4:" >&2
            tail -n 30 "$4" >&2
            exit 1
        fi
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "run.sh: $3 not ready after 180 s; see $4" >&2
    exit 1
}

echo "run.sh: starting the KServe model server on 127.0.0.1:$model_port (log: $demo/model-server.log)" >&2
OMP_NUM_THREADS=1 "$python" tests/kserve/serve.py serve "$model" "$demo/model" "$model_port" \
    > "$demo/model-server.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$model_port/v2/models/$model/ready" "$!" "the model server" "$demo/model-server.log"

echo "run.sh: starting provgate on 127.0.0.1:$port (admin 127.0.0.1:$admin_port, log: $demo/provgate.log)" >&2
"$bin" run -c "$config" > "$demo/provgate.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$admin_port/readyz" "$!" "provgate" "$demo/provgate.log"

# A caller's workload token from the demo issuer (the demo approval admits
# spiffe://example.org/ns/app/sa/*).
"$bin" token --key config/keys/issuer.demo.key --iss https://issuer.example.org \
    --sub spiffe://example.org/ns/app/sa/first-run --aud provgate --ttl 24h > "$demo/token"

url="http://127.0.0.1:$port/v2/models/$model/infer"
body='{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["is this model approved?"]}]}'
cat <<EOF

provgate is guarding a real model server: KServe serving $model (onnxruntime, CPU) on
127.0.0.1:$model_port, reachable through provgate on 127.0.0.1:$port. Metrics:
http://127.0.0.1:$admin_port/metrics. Audit log: $demo/provgate-audit.jsonl. Try, in another terminal:

# 1. Allowed: an embedding, tagged with the approved version (200, x-provgate-version-id)
curl -sS -i $url -H "Authorization: Bearer \$(cat $demo/token)" -H 'content-type: application/json' -d '$body'

# 2. No token: refused before the model server sees it (401 token_missing)
curl -sS -i $url -H 'content-type: application/json' -d '$body'

# 3. Change one byte of the served copy of the weights: provgate re-hashes, finds no approval for the new digest and refuses (403 artefact_unmanaged), though the model server still answers
printf X | dd of=$demo/model/model.onnx bs=1 seek=4096 conv=notrunc status=none && sleep 3 && curl -sS -i $url -H "Authorization: Bearer \$(cat $demo/token)" -H 'content-type: application/json' -d '$body'

Then: $bin audit verify $demo/provgate-audit.jsonl
Ctrl-C stops provgate and the model server.
EOF

wait -n "${pids[@]}" || true
echo "run.sh: a process exited; the ends of its logs:" >&2
tail -n 5 "$demo/model-server.log" "$demo/provgate.log" >&2
exit 1
