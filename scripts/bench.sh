#!/usr/bin/env bash
# Benchmarks rpfs side by side with its peers (restic, borg, a qcow2 chain, the raw image read
# directly and through a FUSE export) in one run, and writes BENCHMARKS.md and BENCHMARKS.svg,
# with the run's raw results in BENCHMARKS.json. The bench itself is the Python package
# scripts/bench/ (see its __init__.py for what each module holds).
# Usage: scripts/bench.sh [--quick | --full] [--only peers|chain|idle|files|clones]... [--only-peer NAME]...
#                         [--reps N] [--full-reps N] [--work DIR] [--bin-dir DIR]
#                         [--out FILE.md] [--svg FILE.svg] [--json FILE.json]
#        scripts/bench.sh --render FILE.json [--out FILE.md] [--svg FILE.svg]
#   --quick           the small workload (the default): 1 GiB OS disk, 64 MiB chain disk, ...
#   --full            the full-size workload of issue 4 (4 GiB OS disk, 256 MiB chain disk, ...)
#   --only SECTION    run only these sections (repeatable): peers, chain, idle, files, clones
#   --only-peer NAME  ingest with these peers only (repeatable): rpfs, qcow2, restic, borg
#                     (the clones section: rpfs, restic, borg)
#   --reps N          repetitions of each read measure and of the clones section's
#                     incremental point (median; default 3)
#   --full-reps N     full points taken by each peer (median; default 3)
#   --work DIR        scratch directory, kept afterwards (default: a temporary one, removed)
#   --bin-dir DIR     measure DIR/rpfs and DIR/examples/read_passes instead of building
#                     target/release (no cargo build then)
#   --out, --svg      the report and the chart (default: BENCHMARKS.md, BENCHMARKS.svg)
#   --json FILE       the run's raw results (default: beside --out, BENCHMARKS.json)
#   --render FILE     write --out and --svg from saved results, running nothing: no build,
#                     no packages, no root
# Needs root to measure: it drops the page cache between measures and mounts FUSE filesystems.
set -euo pipefail
cd "$(dirname "$0")/.."
# Option names only, in full (the bench takes no abbreviations).
render=false
bin_dir=false
for arg in "$@"; do
  case "$arg" in
    --render|--render=*|-h|--help) render=true ;;
    --bin-dir|--bin-dir=*) bin_dir=true ;;
  esac
done
if ! $render; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/bench.sh needs root (page cache drops and mounts)" >&2
    exit 1
  fi
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
  $bin_dir || cargo build --release --quiet --bins --examples
fi
PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 -m bench "$@"
