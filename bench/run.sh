#!/usr/bin/env bash
# Benchmark: encrypt/decrypt of 1 KiB through HTTPS against a release dev server, beside the
# raw in-process AES-256-GCM and trivial HTTPS endpoint baselines of the same run; once with
# the audit log on (the default: one durable event per request) and once with it off.
# Usage: bench/run.sh [seconds-per-scenario] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conc=${2:-16}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p sovra -p sovra-bench
dir=$(mktemp -d)
pid=
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
echo "machine: $(nproc) cores, $(uname -m); server and load generator on the same machine"
for audit in true false; do
    data="$dir/data-audit-$audit"
    printf 'listen = "127.0.0.1:0"\n[audit]\nenabled = %s\n' "$audit" > "$dir/sovra-$audit.toml"
    SOVRA_LOG=warn "$target/release/sovra" server --dev --data-dir "$data" --config "$dir/sovra-$audit.toml" > "$dir/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do [ -f "$data/dev.env" ] && break; sleep 0.1; done
    [ -f "$data/dev.env" ] || { cat "$dir/server.log"; exit 1; }
    label="SQLite store, audit $([ "$audit" = true ] && echo on || echo off),"
    "$target/release/sovra-bench" --env-file "$data/dev.env" --seconds "$secs" --concurrency "$conc" --label "$label"
    echo
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
