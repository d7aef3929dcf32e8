#!/usr/bin/env bash
# RSA flood load test: client 1 floods RSA-4096 signing over many connections while client 2
# encrypts 1 KiB with AES-256-GCM; reports client 2's throughput and p50/p99 alone and under
# the flood, and what became of client 1's signatures. The two clients are two identities of
# a test identity provider. Three runs, each against a fresh release dev server: default rate
# limits with a hostile flooder (sends again at once after a 429), default rate limits with a
# flooder that waits Retry-After, and rate limits disabled. A fourth run floods RSA-4096 key
# creations from client 1 while client 2 signs with RSA-3072 (default limits): another
# identity's heavy work during a generation flood, with the RSA quota raised so that only the
# per-identity bound on heavy work protects client 2.
# Usage: bench/flood.sh [seconds-per-phase] [client-2-connections] [client-1-connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conc=${2:-16}
flood_conc=${3:-64}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p sovra -p sovra-bench
dir=$(mktemp -d)
. bench/common.sh
trap 'stop; rm -rf "$dir"' EXIT
"$target/release/sovra-bench" --write-idp "$dir/idp"
echo "machine: $(nproc) cores, $(uname -m); server and both clients on the same machine"
for run in hostile honouring disabled keygen; do
    limits=default; flags=; label="Rate limits on, client 1 ignores Retry-After:"
    # The RSA quota raised for both, so that client 2's closed loop is not its own limit and
    # only the per-identity bound on heavy work stands between the flood and client 2.
    # Client 2 on heavy_ops_per_identity (2) connections: more would be its own bound.
    vconc=$conc
    [ "$run" = keygen ] && { limits=rsa-raised; vconc=2; flags=--flood-keygen; label="Key-generation flood, RSA quota raised (per-identity heavy-work bound only):"; }
    [ "$run" = honouring ] && { flags=--honour-retry-after; label="Rate limits on, client 1 waits Retry-After:"; }
    [ "$run" = disabled ] && { limits=disabled; label="Rate limits disabled:"; }
    start_server "$run" "$(
        printf 'listen = "127.0.0.1:0"\n'
        idp_config
        [ "$limits" = disabled ] && printf '[rate_limits]\nenabled = false\n'
        [ "$limits" = rsa-raised ] && printf '[rate_limits.rsa]\nper_second = 1000000\nburst = 1000000\n'
        true
    )"
    echo
    "$target/release/sovra-bench" --env-file "$env_file" --flood --idp "$dir/idp" \
        --seconds "$secs" --concurrency "$vconc" --flood-concurrency "$flood_conc" \
        --label "$label" $flags
    stop
done
