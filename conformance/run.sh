#!/usr/bin/env bash
# API conformance: Schemathesis (all phases: examples, coverage, fuzzing, stateful) against a
# live `sovra server --dev` on a free loopback port. Exits non-zero on any failed check.
# Bounded: SOVRA_CONFORMANCE_MAX_TIME seconds (default 180) and SOVRA_CONFORMANCE_MAX_EXAMPLES
# cases per operation and phase (default 10). See docs/conformance.md.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
MAX_TIME=${SOVRA_CONFORMANCE_MAX_TIME:-180}
MAX_EXAMPLES=${SOVRA_CONFORMANCE_MAX_EXAMPLES:-10}

if ! python3 -m schemathesis.cli --version 2>/dev/null | grep -q "version $ST_VERSION$"; then
  python3 -m pip install --quiet "schemathesis==$ST_VERSION"
fi

# The already-built debug binary; built only when missing.
bin="${CARGO_TARGET_DIR:-target}/debug/sovra"
if [[ ! -x "$bin" ]]; then
  cargo build -p sovra
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Port 0: the kernel picks a free port; the dev server writes it to dev.env. The rate limits
# are raised far above what one Schemathesis worker sends: with the defaults, a fast machine
# reached the per-address limit for unauthenticated requests, whose 429 then failed the check
# that such a request gets 401 or 403, and most key administration was answered 429 untested.
# The limiter itself is tested in the Rust tests (crates/server/tests, crates/cli/tests).
{
  printf 'listen = "127.0.0.1:0"\n'
  for class in read crypto key_admin rsa sys unauthenticated; do
    printf '[rate_limits.%s]\nper_second = 1000000\nburst = 1000000\n' "$class"
  done
} >"$work/sovra.toml"
"$bin" server --dev --data-dir "$work/data" --config "$work/sovra.toml" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do
  [[ -s "$work/data/dev.env" ]] && grep -q '^SOVRA_CACERT=' "$work/data/dev.env" && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "conformance: the dev server exited:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
set -a
# shellcheck disable=SC1091
. "$work/data/dev.env"
set +a
if [[ -z "${SOVRA_ADDR:-}" ]]; then
  echo "conformance: the dev server did not write dev.env" >&2
  exit 1
fi

status=0
python3 -m schemathesis.cli --config-file conformance/schemathesis.toml run \
  "$SOVRA_ADDR/api/v1/openapi.json" \
  --tls-verify "$SOVRA_CACERT" \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --workers 1 \
  --no-color \
  --report junit --report-junit-path "$work/junit.xml" \
  || status=$?

# Schemathesis exits 0 when it tested nothing (schema unreachable, time spent): not a pass.
if [[ $status -eq 0 ]]; then
  tested=$(python3 -c 'import sys, xml.etree.ElementTree as E
cases = E.parse(sys.argv[1]).getroot().iter("testcase")
print(sum(1 for c in cases if c.find("skipped") is None))' "$work/junit.xml" 2>/dev/null || echo 0)
  if [[ "$tested" -eq 0 ]]; then
    echo "conformance: no operation was tested" >&2
    status=1
  fi
fi

# The server's side of a failure: its warnings and errors (logs carry no secrets).
if [[ $status -ne 0 ]]; then
  echo "conformance: failed (exit $status); server warnings and errors:" >&2
  grep -E 'WARN|ERROR' "$work/server.log" | tail -n 40 >&2 || true
fi
exit "$status"
