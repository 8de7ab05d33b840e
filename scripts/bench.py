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
READ_PASSES = os.path.join(ROOT, "target", "release", "examples", "read_passes")
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
    """Median seconds of each command. The commands run in rounds, in alternating order, so
    drift in the machine's state (writeback, other load) falls on all of them alike."""
    times = {c: [] for c in commands}
    rounds = 3
    for r in range(rounds):
        order = commands if r % 2 == 0 else list(reversed(commands))
        out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        args = ["hyperfine", "--style", "none", "--runs", str(max(1, runs // rounds)),
                "--export-json", out]
        if cold:
            args += ["--prepare", "sync; echo 3 > /proc/sys/vm/drop_caches"]
        else:
            args += ["--warmup", "1"]
        subprocess.run(args + order, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            for res in json.load(f)["results"]:
                times[res["command"]] += res["times"]
        os.unlink(out)
    return [statistics.median(times[c]) for c in commands]


def settle():
    """Waits for writeback of what the setup wrote, so it does not land inside a measurement."""
    subprocess.run(["sync"], check=True)
    time.sleep(3)


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
    settle()
    # One process reading repeatedly, as the mount daemon does: pass 1 opens the packs, the
    # later passes measure resolving and decoding alone.
    passes = json.loads(subprocess.run(
        [READ_PASSES, store, "c", "d", str(args.runs + 1), "p1", "p%d" % depth],
        check=True, capture_output=True, text=True).stdout)
    steady = [statistics.median(passes[p][1:]) for p in ("p1", "p%d" % depth)]
    opening = [passes[p][0] for p in ("p1", "p%d" % depth)]
    warm = hyperfine([first, last], args.runs, cold=False)
    cold = hyperfine([first, last], args.runs, cold=True) if is_root() else None
    mbs = lambda secs: size / MIB / secs
    rows = [
        ("one reader process, warm page cache (median of later passes)", steady),
        ("one reader process, first pass (opens the packs)", opening),
        ("`rpfs cat` in a new process, warm page cache", warm),
    ]
    if cold:
        rows.append(("`rpfs cat` in a new process, cold page cache", cold))
    lines = [
        f"### Chain depth ({args.chain_disk_mib} MiB disk, {depth} points, "
        f"{changes} random 64 KiB blocks changed per point)",
        "",
        f"| sequential read of the whole disk | point 1 of {depth} | point {depth} of {depth} | "
        f"point {depth} / point 1 |",
        "|---|---|---|---|",
    ]
    for name, (a, b) in rows:
        lines.append(f"| {name} | {mbs(a):.0f} MiB/s | {mbs(b):.0f} MiB/s | {b / a:.2f}x time |")
    lines += [
        "",
        "Resolving a block (map lookup, pack table search, decode, hash check) costs the same at "
        "any depth: compare the later passes of one reader. A new process also pays once for "
        f"opening the packs the point references (up to {depth}: open, stat and three reads "
        "each). Cold reads add placement: the deep point's blocks are spread over those packs, "
        "read with as many requests in flight as there are cores.",
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
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        commit += " with uncommitted changes"
    version = subprocess.run([RPFS, "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"{version} at commit {commit}, measured {time.strftime('%Y-%m-%d %H:%M %Z')}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--full", action="store_true", help="full-size workload")
    p.add_argument("--only", choices=["chain"], help="run one section")
    p.add_argument("--runs", type=int, default=9, help="repetitions per measure (median)")
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
