#!/usr/bin/env python3
"""rpfs benchmarks, measured in one run on this machine; driven by scripts/bench.sh.

Sections:
  chain  read speed of a point at the end of a 500-point chain against the first point of the
         same chain (same disk, same data volume), warm and cold page cache, plus ingest times.

Every figure is a median over repeated runs; ratios compare figures from the same run.
Writes BENCHMARKS.md (or the file given with --out).
"""

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RPFS = os.path.join(ROOT, "target", "release", "rpfs")
MIB = 1 << 20


def run(*args, env=None, stdout=subprocess.DEVNULL):
    subprocess.run(args, env=env, check=True, stdout=stdout)


def is_root():
    return os.geteuid() == 0


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def hyperfine(commands, runs, cold):
    """Median seconds of each command, from one hyperfine run that interleaves nothing."""
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    args = ["hyperfine", "--style", "none", "--runs", str(runs), "--export-json", out]
    if cold:
        args += ["--prepare", "sync; echo 3 > /proc/sys/vm/drop_caches"]
    else:
        args += ["--warmup", "2"]
    subprocess.run(args + commands, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        results = json.load(f)["results"]
    os.unlink(out)
    return [r["median"] for r in results]


def block_content(block, rng):
    """60% random blocks, the rest text-like: compressible and incompressible data alike."""
    if rng.random() < 0.6:
        return rng.randbytes(block)
    line = b"rpfs benchmark text line %012d\n" % rng.randrange(10**12)
    return (line * (block // len(line) + 1))[:block]


def write_disk(path, size, block, rng):
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, block):
            f.seek(off)
            f.write(block_content(block, rng))


def chain(args, work):
    size = args.chain_disk_mib * MIB
    block = 64 * 1024
    depth = args.chain_depth
    rng = random.Random(42)
    store = os.path.join(work, "store")
    disk = os.path.join(work, "disk.img")
    env = dict(os.environ, RPFS_STORE=store)
    write_disk(disk, size, block, rng)
    run(RPFS, "init", env=env)
    run(RPFS, "vm", "add", "vm", "--disk", "d=" + disk, env=env)
    run(RPFS, "collection", "create", "c", "--vm", "vm", env=env)
    t = time.monotonic()
    run(RPFS, "point", "create", "c", "p1", env=env)
    full = time.monotonic() - t
    incr = []
    changes = max(1, size // block // 200)  # 0.5% of the blocks per point
    with open(disk, "r+b") as f:
        for i in range(2, depth + 1):
            for _ in range(changes):
                f.seek(rng.randrange(size // block) * block)
                f.write(block_content(block, rng))
            f.flush()
            os.fsync(f.fileno())
            t = time.monotonic()
            run(RPFS, "point", "create", "c", "p%d" % i, env=env)
            incr.append(time.monotonic() - t)
    store_bytes = int(subprocess.run(["du", "-sb", store], check=True, capture_output=True,
                                     text=True).stdout.split()[0])
    cat = lambda p: f"RPFS_STORE={store} {RPFS} cat c/{p} --disk d > /dev/null"
    first, last = cat("p1"), cat("p%d" % depth)
    # Both reads must return the right bytes before their speed means anything.
    for p in ("p1", "p%d" % depth):
        got = subprocess.run(f"RPFS_STORE={store} {RPFS} cat c/{p} --disk d | wc -c", shell=True,
                             check=True, capture_output=True, text=True).stdout.strip()
        assert int(got) == size, f"{p}: read {got} bytes of {size}"
    warm = hyperfine([first, last], args.runs, cold=False)
    cold = hyperfine([first, last], args.runs, cold=True) if is_root() else None
    mbs = lambda secs: size / MIB / secs
    rows = [("sequential read, warm page cache", warm)]
    if cold:
        rows.append(("sequential read, cold page cache", cold))
    lines = [
        f"### Chain depth ({args.chain_disk_mib} MiB disk, {depth} points, "
        f"{changes} random 64 KiB blocks changed per point)",
        "",
        f"| measure | point 1 of {depth} | point {depth} of {depth} | point {depth} / point 1 |",
        "|---|---|---|---|",
    ]
    for name, (a, b) in rows:
        lines.append(f"| {name} | {mbs(a):.0f} MiB/s | {mbs(b):.0f} MiB/s | {b / a:.2f}x time |")
    lines += [
        "",
        f"Full point: {full:.2f} s ({mbs(full):.0f} MiB/s). Incremental points: median "
        f"{statistics.median(incr) * 1000:.0f} ms (each reads and hashes the whole disk). "
        f"Store after {depth} points: {store_bytes / MIB:.0f} MiB.",
        "",
    ]
    if not cold:
        lines.append("Cold-cache figures need root (to drop the page cache); not measured.\n")
    return "\n".join(lines)


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    version = subprocess.run([RPFS, "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"{version} at commit {commit}, measured {time.strftime('%Y-%m-%d %H:%M %Z')}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--full", action="store_true", help="full-size workload")
    p.add_argument("--only", choices=["chain"], help="run one section")
    p.add_argument("--runs", type=int, default=7, help="repetitions per measure (median)")
    p.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    p.add_argument("--work", help="scratch directory (default: a temporary one)")
    args = p.parse_args()
    args.chain_disk_mib = 1024 if args.full else 256
    args.chain_depth = 500
    work = args.work or tempfile.mkdtemp(prefix="rpfs-bench-")
    try:
        sections = []
        for name, fn in [("chain", chain)]:
            if args.only in (None, name):
                d = os.path.join(work, name)
                os.makedirs(d, exist_ok=True)
                print(f"== {name}", file=sys.stderr)
                sections.append(fn(args, d))
        text = "# rpfs benchmarks\n\n" + "Machine: " + machine() + "\n\n" + "\n".join(sections)
        with open(args.out, "w") as f:
            f.write(text)
        print(text)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
