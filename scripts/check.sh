#!/usr/bin/env bash
# The guardrails every commit passes, run by .ci/run before the tests (and by hand before a
# commit): formatting, clippy with warnings as errors (the product's own lints live in
# src/lib.rs and src/main.rs: no unwrap/expect without a stated reason, every allow with a
# reason, checked arithmetic where on-disk lengths and offsets are decoded), no import cycle
# between modules, no source file of 700 lines or more, and a release binary that holds none
# of the test harnesses.
# Usage: scripts/check.sh [--no-release]   (--no-release skips the release build, for speed)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "module graph (scripts/modgraph.py)"
python3 scripts/modgraph.py

step "no source file of 700 lines or more"
# Issue 14: rooms of their own size. A file that grows past this is split by concern (its
# unit tests into a child `tests.rs` first).
long=$(find src -name '*.rs' -exec wc -l {} + | awk '$2 != "total" && $1 >= 700')
if [ -n "$long" ]; then
  echo "split these files (700 lines or more):" >&2
  echo "$long" >&2
  exit 1
fi

if [ "${1:-}" != "--no-release" ]; then
  step "release binary holds no test harness"
  cargo build --release --quiet --bin rpfs
  # The harnesses live in rpfs::testing (crashsim, fault, fuzzing), compiled only with the
  # `testing` feature; their symbols must not be in the release binary. The second grep proves
  # the symbols are there to be found (the binary keeps its symbol table).
  harness=$(nm -C target/release/rpfs | grep -cE 'rpfs::testing::|crashsim|FaultyStorage|Sabotage' || true)
  product=$(nm -C target/release/rpfs | grep -c 'rpfs::store::local::' || true)
  if [ "$harness" -ne 0 ] || [ "$product" -eq 0 ]; then
    echo "release binary: $harness test-harness symbols, $product LocalStorage symbols" >&2
    exit 1
  fi
  echo "release binary: no test-harness symbol ($product LocalStorage symbols seen)" >&2
fi
