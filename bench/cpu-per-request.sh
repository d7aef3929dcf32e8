#!/usr/bin/env bash
# CPU per request of one closed-loop scenario, server and load generator apart: for A/B runs of
# two builds or two settings on a machine whose speed drifts. Starts a fresh dev server on SQLite
# (data in $TMPDIR), warms it up for 1 s, then runs `sovra-bench` for the given seconds and reads
# the server's CPU ticks from /proc, the load generator's from its rusage and the machine's idle
# share from /proc/stat. The load generator does the same work per request whatever the server
# build, so its CPU per request meters the machine's speed at that moment; the server's CPU per
# request divided by the client's is the figure to compare between runs.
#
# Usage: bench/cpu-per-request.sh [encrypt|health] [audit on|off] [connections] [seconds]
# SERVER=path runs another server binary (a build kept aside); SERVER_ENV adds environment
# variables to the server's, e.g. SERVER_ENV=TOKIO_WORKER_THREADS=1.
# Prints: requests/s, server µs of CPU per request, client µs per request, their ratio, and the
# machine's idle share during the run.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-encrypt}
audit=${2:-on}
conc=${3:-64}
secs=${4:-4}
target=${CARGO_TARGET_DIR:-target}
bench=$target/release/sovra-bench
case $scenario in
    encrypt) mode=--encrypt-only ;;
    health) mode=--health-only ;;
    *) echo "scenario: encrypt or health" >&2; exit 2 ;;
esac
[ -x "${SERVER:-$target/release/sovra}" ] && [ -x "$bench" ] || cargo build --release -q -p sovra -p sovra-bench
dir=$(mktemp -d)
. bench/common.sh
trap 'stop; rm -rf "$dir"' EXIT
"$bench" --write-idp "$dir/idp" > /dev/null
start_server probe "$(
    printf 'listen = "127.0.0.1:0"\n'
    if [ "$audit" = off ]; then printf '[audit]\nenabled = false\n'; fi
    printf '[rate_limits.crypto]\nper_second = 100000000\nburst = 100000000\n'
    idp_config
)"
"$bench" --env-file "$env_file" "$mode" --idp "$dir/idp" --concurrency "$conc" --seconds 1 > /dev/null
server_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
s0=$(server_ticks)
m0=$(head -1 /proc/stat)
TIMEFORMAT='%U %S'
{ time "$bench" --env-file "$env_file" "$mode" --idp "$dir/idp" --concurrency "$conc" \
    --seconds "$secs" > "$dir/out"; } 2> "$dir/client-cpu"
s1=$(server_ticks)
m1=$(head -1 /proc/stat)
rate=$(grep -E '^\| (encrypt|health)' "$dir/out" | awk -F'|' '{gsub(/ /, "", $3); print $3}')
python3 - "$rate" "$secs" "$s0" "$s1" "$(cat "$dir/client-cpu")" "$m0" "$m1" "$(getconf CLK_TCK)" <<'EOF'
import sys
rate, secs, s0, s1, client, m0, m1, hz = sys.argv[1:]
requests = float(rate) * float(secs)
server_us = (int(s1) - int(s0)) / int(hz) * 1e6 / requests
client_us = sum(float(x) for x in client.split()) * 1e6 / requests
before, after = ([int(x) for x in m.split()[1:]] for m in (m0, m1))
delta = [a - b for a, b in zip(after, before)]
idle = 100 * delta[3] / sum(delta)
print(f"{float(rate):.0f} requests/s | server {server_us:.1f} µs/request | client {client_us:.1f} µs/request"
      f" | server/client {server_us / client_us:.2f} | idle {idle:.0f} %")
EOF
