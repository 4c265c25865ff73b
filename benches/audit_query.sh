#!/usr/bin/env bash
# Memory of the audit readers on a large generated set: `audit query`, `audit summary`,
# `audit export --format ocsf` and `audit verify` stream one bounded line at a time, so their
# peak RSS must not grow with the set. Generates SIZES (in MB, default "100 1000") of
# synthetic denials through the real writer (`provgate audit generate`: bounds, chain,
# 64 MiB segments, checkpoints), then reports each reader's wall time and max RSS (GNU time).
#
# Run: [SIZES="100 1000"] [READERS="summary;verify"] benches/audit_query.sh [PROVGATE_BINARY]   (default: target/debug/provgate; build it
# with `cargo build` first). The 1 GB case needs about 1.1 GB of disk under $TMPDIR and a few
# minutes: run it once, not in CI.
#
# Reference (2026-12-01, 2-core shared machine, debug binary): see BENCHMARKS.md
# "Audit readers on a 1 GB set".
set -euo pipefail
bin="${1:-${CARGO_TARGET_DIR:-target}/debug/provgate}"
sizes="${SIZES:-100 1000}"
# Readers to run, separated by ';' (the export is the slowest in a debug build).
READERS="${READERS:-query --reason approval_expired --format json;query --caller spiffe://example.org/ns/app/sa/c3;summary;export --format ocsf;verify}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
repo="$(cd "$(dirname "$0")/.." && pwd)"

for mb in $sizes; do
    dir="$work/set-$mb"
    mkdir -p "$dir"
    # About 985 bytes per synthetic record (every fifth has a path cut to 2 KB).
    count=$((mb * 1024 * 1024 / 985))
    cat > "$work/gen-$mb.toml" <<TOML
[upstream]
address = "127.0.0.1:1"
[workload]
identity = "spiffe://example.org/w"
[artefact]
model = "m"
path = "$work"
[registry]
kind = "dir"
path = "$work"
[trust]
approver_keys = "$repo/config/keys/approvers.jwks.json"
[[callers.issuers]]
issuer = "https://issuer.example.org"
jwks_file = "$repo/config/keys/issuer.jwks.json"
audiences = ["provgate"]
[audit]
path = "$dir/audit.jsonl"
max_segment_bytes = 67108864
keep_segments = 0
TOML
    start=$(date +%s.%N)
    "$bin" audit generate -c "$work/gen-$mb.toml" --count "$count" --long-paths 2>/dev/null
    gen=$(echo "$(date +%s.%N) - $start" | bc)
    bytes=$(du -sb "$dir" | cut -f1)
    printf '\nset: %s records, %s bytes in %s files (generated in %.1f s)\n' \
        "$count" "$bytes" "$(ls "$dir" | wc -l)" "$gen"
    printf '%-44s %10s %12s\n' "reader" "wall s" "max RSS KB"
    IFS=';' read -r -a readers <<< "$READERS"
    for reader in "${readers[@]}"; do
        # shellcheck disable=SC2086
        set -- $reader
        cmd="$1"; shift
        /usr/bin/time -f '%e %M' -o "$work/time" "$bin" audit "$cmd" "$dir" "$@" > /dev/null || true
        read -r wall rss < "$work/time"
        printf '%-44s %10s %12s\n' "$reader" "$wall" "$rss"
    done
done
