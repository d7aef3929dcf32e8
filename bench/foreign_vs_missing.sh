#!/usr/bin/env bash
# Another identity's key id against missing ids (issue 20, item 10): identity B encrypts under
# identity A's key and under random missing ids, alternating, one request at a time, on SQLite
# and (when a URL is given) on PostgreSQL; prints both latency distributions side by side.
# Usage: bench/foreign_vs_missing.sh [requests-of-each] [postgres-admin-url]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
pg_admin=${2:-}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p sovra -p sovra-bench
dir=$(mktemp -d)
. bench/common.sh
trap 'stop; rm -rf "$dir"' EXIT
"$target/release/sovra-bench" --write-idp "$dir/idp"
echo "machine: $(nproc) cores, $(uname -m); server and client on the same machine"
start_server sqlite "$(printf 'listen = "127.0.0.1:0"\n'; idp_config)"
echo
"$target/release/sovra-bench" --env-file "$env_file" --idp "$dir/idp" --concurrency 1 \
    --foreign-vs-missing "$n" --label "SQLite store:"
stop
if [ -n "$pg_admin" ]; then
    db="sovra_probe_$(date +%s)"
    psql "$pg_admin" -qc "CREATE DATABASE $db"
    start_server postgres "$(printf 'listen = "127.0.0.1:0"\ndatabase_url = "%s"\n' "${pg_admin%/*}/$db"; idp_config)"
    echo
    "$target/release/sovra-bench" --env-file "$env_file" --idp "$dir/idp" --concurrency 1 \
        --foreign-vs-missing "$n" --label "PostgreSQL store:"
    stop
    psql "$pg_admin" -qc "DROP DATABASE $db"
fi
