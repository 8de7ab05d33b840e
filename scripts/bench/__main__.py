"""rpfs benchmarks, measured side by side with its peers in one run; driven by scripts/bench.sh.

Sections:
  peers  the workload of issue 4 (an ext4 OS disk ~35% full of real files, a data disk half
         random data and half holes, six generations apart by random 64 KiB writes over 2% and
         5% of them), ingested by rpfs, restic, borg and a qcow2 chain, then read back through
         each one's mount (FUSE), against the raw image read directly and through a FUSE export
         of the raw file (qemu-storage-daemon: the FUSE ceiling). Beside them, what bounds two
         measures: fio's time for a first point's I/O alone (the device floor), and how the page
         cache holds a file read through FUSE against the raw image (folio sizes, third pass).
  chain  reads of the point at the end of a 500-point chain against its first point.
  idle   a point of an unchanged VM (everything hashed, nothing stored).
  files  file-level restore: a large file read out of files/<disk>/ against the whole disk image
         read through the same mount, and `ls -l` of a 10,000-entry guest directory.
  clones ten VMs made from one template (the peers' OS and data disks), each then changed 2%
         differently (random 64 KiB writes, a seed each): the first point of each clone into one
         store (rpfs, restic, borg), then incremental points of the first clone; the store beyond
         one VM against the distinct 4 KiB pages the other nine changed.

Every figure is a median over repeated runs where the measure repeats; ratios compare figures
of the same run. Writes the run's results to BENCHMARKS.json, and from them BENCHMARKS.md and
BENCHMARKS.svg (or the paths given); --render redoes the last two from a saved JSON file alone.
Needs root (page cache drops, mounts), except to --render.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import types

from .common import CACHE_SIZE, ROOT, log, read_passes_bin, rpfs_bin, set_bin_dir
from .measure import SECTIONS, binaries, machine
from .report import chart, report

# The layout of the JSON document a run saves; --render refuses another.
FORMAT = 1


def parse_args():
    p = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter,
                                # scripts/bench.sh looks for --render and --bin-dir by their full
                                # names: no abbreviations.
                                allow_abbrev=False)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the small workload (the default)")
    size.add_argument("--full", action="store_true", help="the full-size workload of issue 4")
    p.add_argument("--only", action="append", choices=[name for name, _ in SECTIONS], help="run these sections")
    p.add_argument("--only-peer", action="append", help="ingest with these peers only (rpfs, qcow2, restic, borg)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each read measure and of the clones' incremental point (median)")
    p.add_argument("--full-reps", type=int, default=3, help="full points taken by each peer (median)")
    p.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"), help="the Markdown report")
    p.add_argument("--svg", default=os.path.join(ROOT, "BENCHMARKS.svg"), help="the chart of the peers")
    p.add_argument("--json", help="the run's results (default: beside --out, its name ending in .json)")
    p.add_argument("--render", metavar="PATH.json",
                   help="write --out and --svg from these saved results; runs nothing, needs no root")
    p.add_argument("--bin-dir", help="where the rpfs binaries are: DIR/rpfs, DIR/examples/read_passes\n"
                                     "(default: target/release; scripts/bench.sh builds them only then)")
    p.add_argument("--work", help="scratch directory (default: a temporary one)")
    return p.parse_args()


def workload(args):
    """The sizes and repetitions of the run, --quick (the default) or --full."""
    full = args.full
    return {
        "size": "full" if full else "quick",
        "os_gib": 4 if full else 1, "data_gib": 1,
        "generations": 6,
        "fio_seconds": 15 if full else 8,
        "chain_disk_mib": 256 if full else 64,
        "idle_os_gib": 4 if full else 1, "idle_data_gib": 1,
        "files_file_mib": 2048 if full else 512,
        "reps": args.reps, "full_reps": args.full_reps,
        "only": args.only, "only_peer": args.only_peer,
        "cache_size": CACHE_SIZE,
    }


def render(doc, out, svg):
    """Writes the report and the chart of a run's document; returns the report."""
    if doc.get("format") != FORMAT:
        sys.exit(f"results of format {doc.get('format')}, not {FORMAT}: render them with the bench that wrote them")
    text, _ = report(doc)
    with open(out, "w") as f:
        f.write(text)
    chart(svg, doc["results"])
    return text


def measure(args):
    """Runs the sections; returns the run's document: its results and what the report says
    about the run (the command, the date, the machine, the binaries, the workload)."""
    if args.bin_dir:
        set_bin_dir(args.bin_dir)
    params = workload(args)
    sections = [(name, fn) for name, fn in SECTIONS if args.only is None or name in args.only]
    needed = [rpfs_bin()] + ([read_passes_bin()] if any(name == "chain" for name, _ in sections) else [])
    for path in needed:
        if not os.access(path, os.X_OK):
            sys.exit(f"no {path}: build it (cargo build --release --bins --examples) or give --bin-dir")
    doc = {"format": FORMAT, "argv": sys.argv[1:], "date": None, "machine": machine(),
           "binaries": binaries(args.bin_dir is not None), "workload": params, "results": {}}
    settings = types.SimpleNamespace(**params)
    work = args.work or tempfile.mkdtemp(prefix="rpfs-bench-", dir="/var/tmp")
    start = time.monotonic()
    try:
        for name, fn in sections:
            d = os.path.join(work, name)
            os.makedirs(d, exist_ok=True)
            log(f"== {name}")
            doc["results"][name] = fn(settings, d)
            if not args.work:
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    doc["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    doc["seconds"] = round(time.monotonic() - start)
    return doc


def main():
    args = parse_args()
    if args.render:
        with open(args.render) as f:
            doc = json.load(f)
    else:
        if os.geteuid() != 0:
            sys.exit("scripts/bench.sh needs root (page cache drops and mounts)")
        doc = measure(args)
        path = args.json or os.path.splitext(args.out)[0] + ".json"
        saved = json.dumps(doc, indent=1) + "\n"
        with open(path, "w") as f:
            f.write(saved)
        log(f"results in {path}")
        # The report of the run is rendered from what was saved, as --render renders it.
        doc = json.loads(saved)
    print(render(doc, args.out, args.svg))


if __name__ == "__main__":
    main()
