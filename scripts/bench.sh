#!/usr/bin/env bash
# Benchmarks rpfs (and, as they are added, its peers) side by side in one run, and writes
# BENCHMARKS.md. Usage: scripts/bench.sh [--full] [--only SECTION] [--runs N]
# Cold-cache figures need root (they drop the page cache between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
RPFS_PACKAGES[hyperfine]=hyperfine
RPFS_PACKAGES[python3]=python3
rpfs_install_deps
cargo build --release --quiet --bins --examples
exec python3 scripts/bench.py "$@"
