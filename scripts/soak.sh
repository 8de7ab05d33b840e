#!/usr/bin/env bash
# The slow tiers of the reliability tests, with their figures: 200 simulated power cuts per
# operation (and per broken protocol), 50 real SIGKILLs of the CLI and of the mount daemon per
# operation, and every I/O fault at every operation. Takes tens of minutes.
#   scripts/soak.sh            # RPFS_CRASH_STATES=200 RPFS_KILLS=50
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
rpfs_install_deps
export RPFS_CRASH_STATES="${RPFS_CRASH_STATES:-200}" RPFS_KILLS="${RPFS_KILLS:-50}"
echo "soak: $RPFS_CRASH_STATES simulated crash states per case, $RPFS_KILLS kills per test" >&2
# The integration tests are one binary (tests/it); these filters select its modules crashsim,
# crash and faults (libtest matches substrings of the full names, e.g. crash::killed_...).
cargo test --release --test it -- crashsim:: crash:: faults:: --nocapture --test-threads 2 2>&1 |
  grep -E "states|caught|kills|killed|committed|faults|^test |test result"
