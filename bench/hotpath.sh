#!/usr/bin/env bash
# Hot-path benchmark: JWT-authenticated encrypt (1 KiB), decrypt, data key, ECDSA P-256 sign,
# batch encrypt of 100 items and key creation against a release server, beside the same
# server's /health and raw in-process signing; the encrypt also paced at half the /health rate
# for its p99. Runs on SQLite (in a temporary directory) with the audit log on (one durable
# event per request, the default) and off, then on PostgreSQL (audit on) when a URL is given. Key-admin rate limits are raised
# so that key creation measures the store, not the limiter; all other limits are the defaults.
# With PERF=1 it also records the server with `perf` during a closed-loop encrypt run and
# draws docs/flamegraph-encrypt.svg (needs inferno-collapse-perf and inferno-flamegraph).
# SERVER_ENV adds environment variables to the server's (not the load generator's), e.g.
# SERVER_ENV=TOKIO_WORKER_THREADS=1 for a server with one request worker thread.
# Usage: bench/hotpath.sh [seconds-per-scenario] [connections] [postgres-admin-url]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conc=${2:-16}
pg_admin=${3:-}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p sovra -p sovra-bench
dir=$(mktemp -d)
. bench/common.sh
trap 'stop; rm -rf "$dir"' EXIT
"$target/release/sovra-bench" --write-idp "$dir/idp"
echo "machine: $(nproc) cores, $(uname -m); server and load generator on the same machine"
fsync_line=$(dd if=/dev/zero of="$dir/fsync-probe" bs=4k count=500 oflag=dsync 2>&1 | tail -1)
echo "disk: 500 synchronous 4 KiB writes: $fsync_line"

# A server on its own data directory: NAME and extra config lines, with the key-admin and crypto
# rate limits raised and the bench identity provider trusted.
start_bench_server() {
    start_server "$1" "$(
        printf 'listen = "127.0.0.1:0"\n%s\n' "$2"
        printf '[rate_limits.key_admin]\nper_second = 1000000\nburst = 1000000\n'
        printf '[rate_limits.crypto]\nper_second = 100000000\nburst = 100000000\n'
        idp_config
    )"
}

start_bench_server sqlite ""
echo
"$target/release/sovra-bench" --env-file "$env_file" --hot-path --idp "$dir/idp" \
    --seconds "$secs" --concurrency "$conc" --label "SQLite store, audit on,"
if [ "${PERF:-0}" = 1 ]; then
    perf record -F 299 --call-graph dwarf,32768 -o "$dir/perf.data" -p "$pid" -- sleep "$secs" > /dev/null 2>&1 &
    perf_pid=$!
    "$target/release/sovra-bench" --env-file "$env_file" --encrypt-only --idp "$dir/idp" --seconds "$((secs + 2))" \
        --concurrency "$conc" > "$dir/perf-run.txt"
    wait "$perf_pid" || true
    perf script -i "$dir/perf.data" 2>/dev/null | inferno-collapse-perf > "$dir/encrypt.folded"
    inferno-flamegraph --title "sovra server, closed-loop encrypt 1 KiB (perf, $(date -u +%F))" \
        < "$dir/encrypt.folded" > docs/flamegraph-encrypt.svg
    echo "flame graph: docs/flamegraph-encrypt.svg"
fi
stop

# The same without the audit log, to separate the durable-audit cost from the rest of the path.
start_bench_server sqlite-audit-off "$(printf '[audit]\nenabled = false')"
echo
"$target/release/sovra-bench" --env-file "$env_file" --hot-path --idp "$dir/idp" \
    --seconds "$secs" --concurrency "$conc" --label "SQLite store, audit OFF,"
stop

if [ -n "$pg_admin" ]; then
    db="sovra_bench_$(date +%s)"
    psql "$pg_admin" -qc "CREATE DATABASE $db"
    start_bench_server postgres "database_url = \"${pg_admin%/*}/$db\""
    echo
    "$target/release/sovra-bench" --env-file "$env_file" --hot-path --idp "$dir/idp" \
        --seconds "$secs" --concurrency "$conc" --label "PostgreSQL store, audit on,"
    stop
    psql "$pg_admin" -qc "DROP DATABASE $db"
fi
