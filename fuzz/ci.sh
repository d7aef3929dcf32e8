#!/usr/bin/env bash
# CI: build every fuzz target (libFuzzer + AddressSanitizer) and replay its seed corpus once.
# fuzz/README.md explains the targets and how to run them for longer.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address and others); the stable toolchain
# takes them with RUSTC_BOOTSTRAP=1. Only this separate workspace is built that way.
export RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=0.13.1
cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION" ||
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"

# Unoptimised (--dev) keeps the sanitizer build of the whole dependency tree short; replaying a
# corpus needs no speed. Long runs use the optimised build (README).
cargo fuzz build --dev
for target in $(cargo fuzz list); do
  echo "fuzz: replaying corpus of $target"
  cargo fuzz run --dev "$target" "fuzz/corpus/$target" -- -runs=0
done
