#!/usr/bin/env bash
# Runs every rpfs test: unit, property, CLI, crash and damage tests.
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
rpfs_install_deps
cargo test --all-targets "$@"
