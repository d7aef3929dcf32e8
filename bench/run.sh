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
. bench/common.sh
trap 'stop; rm -rf "$dir"' EXIT
echo "machine: $(nproc) cores, $(uname -m); server and load generator on the same machine"
for audit in true false; do
    start_server "audit-$audit" "$(printf 'listen = "127.0.0.1:0"\n[audit]\nenabled = %s' "$audit")"
    label="SQLite store, audit $([ "$audit" = true ] && echo on || echo off),"
    "$target/release/sovra-bench" --env-file "$env_file" --seconds "$secs" --concurrency "$conc" --label "$label"
    echo
    stop
done
