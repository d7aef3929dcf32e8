#!/usr/bin/env bash
# Benchmark: encrypt/decrypt of 1 KiB through HTTPS against a release dev server, beside the
# raw in-process AES-256-GCM and trivial HTTPS endpoint baselines of the same run.
# Usage: bench/run.sh [seconds-per-scenario] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conc=${2:-16}
cargo build --release -q -p sovra -p sovra-bench
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
printf 'listen = "127.0.0.1:0"\n' > "$dir/sovra.toml"
SOVRA_LOG=warn target/release/sovra server --dev --data-dir "$dir/data" --config "$dir/sovra.toml" > "$dir/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do [ -f "$dir/data/dev.env" ] && break; sleep 0.1; done
[ -f "$dir/data/dev.env" ] || { cat "$dir/server.log"; exit 1; }
echo "machine: $(nproc) cores, $(uname -m); server and load generator on the same machine"
target/release/sovra-bench --env-file "$dir/data/dev.env" --seconds "$secs" --concurrency "$conc" --label "SQLite store,"
