#!/usr/bin/env bash
# Benchmarks rpfs side by side with its peers (restic, borg, a qcow2 chain, the raw image read
# directly and through a FUSE export) in one run, and writes BENCHMARKS.md and BENCHMARKS.svg.
# Usage: scripts/bench.sh [--full] [--only peers|chain|idle|files] [--reps N] [--work DIR]
# Needs root: it drops the page cache between measures and mounts FUSE filesystems.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
RPFS_PACKAGES[restic]=restic
RPFS_PACKAGES[borg]=borgbackup
RPFS_PACKAGES[fio]=fio
RPFS_PACKAGES[qemu-storage-daemon]=qemu-utils
rpfs_install_deps
# Debian's python3 carries the packages the bench imports (borg's FUSE binding, matplotlib).
missing=()
/usr/bin/python3 -c 'import llfuse' 2>/dev/null || missing+=(python3-llfuse)
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet --bins --examples
exec /usr/bin/python3 scripts/bench.py "$@"
