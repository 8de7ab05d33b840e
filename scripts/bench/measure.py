"""The measures. First the generic helpers (a command's time and peak memory, sequential and
random reads, the device floor, how the page cache holds a file, the machine and the builds
measured); then the sections, each of which builds its workload in a scratch directory, runs
its measures and returns plain data (numbers, lists, dicts: what the JSON results hold and the
report reads):

  peers  the workload of issue 4 ingested by rpfs and its peers, then read back through each
         one's mount, against the raw image read directly and through a FUSE export; with the
         device floor and the page cache's folio sizes beside them.
  chain  reads of the point at the end of a 500-point chain against its first point.
  idle   a point of an unchanged VM (everything hashed, nothing stored).
  files  a large file read out of files/<disk>/ against the whole disk image read through the
         same mount, and `ls -l` of a 10,000-entry guest directory.
  clones ten VMs made from one template (the peers' disks), each changed 2% differently: the
         first point of each into one store, then incremental points of the first clone.

Every figure is a median over repeated runs where the measure repeats."""

import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import time

from .common import (CACHE_SIZE, GIB, MIB, ROOT, bin_dir, is_mounted, log, out, read_passes_bin,
                     rpfs_bin, run, wait_for)
from .peers import INGESTING, Borg, Raw, RawFuse, Restic, Rpfs, RpfsVms
from .workload import (change_blocks, make_chain_disk, make_data_disk, make_files_tree,
                       make_os_disk, mkfs_ext4, PAGE, scribble)


# ----- generic measures -----

def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(cmd, env=None):
    """Runs cmd; returns (seconds, peak RSS in bytes) of it and its children."""
    t = time.monotonic()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.monotonic() - t
    kb = int(res.stderr.strip().splitlines()[-1])
    return secs, kb * 1024


def vm_hwm(pid):
    """Peak resident memory of a process and its threads, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def seq_read(path):
    """Sequential read of the whole file; returns bytes per second, by dd's own clock (starting
    a process costs ~10-20 ms, as much as a warm pass of a small disk)."""
    res = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M"], check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # "<bytes> bytes (...) copied, <seconds> s, <rate>"
    last = res.stderr.strip().splitlines()[-1]
    return int(last.split()[0]) / float(last.split("copied, ")[1].split()[0])


def rand_read(path, runtime):
    """4 KiB random reads (4 threads, synchronous, no readahead): IOPS and p99 latency in ms."""
    res = out("fio", "--name=rand", f"--filename={path}", "--rw=randread", "--bs=4k",
              "--ioengine=psync", "--numjobs=4", "--thread", "--group_reporting",
              "--fadvise_hint=random", "--invalidate=1", f"--runtime={runtime}", "--time_based",
              "--readonly", "--output-format=json")
    job = json.loads(res[res.index("{"):])["jobs"][0]["read"]
    return job["iops"], job["clat_ns"]["percentile"]["99.000000"] / 1e6


def device_floor(sources, write_bytes, scratch):
    """Seconds fio takes for a first point's I/O and nothing else: every source read whole
    (O_DIRECT, 4 MiB, 12 in flight each, as rpfs reads) and, if `write_bytes`, that many bytes
    written meanwhile (4 MiB, 8 in flight) and fsynced. A tool that reads these sources and
    stores `write_bytes` can only beat it by skipping holes (fio reads them as zeros)."""
    args = ["fio", "--direct=1", "--ioengine=libaio", "--bs=4M", "--output=/dev/null"]
    for i, src in enumerate(sources):
        args += [f"--name=read{i}", f"--filename={src}", "--rw=read", "--iodepth=12"]
    if write_bytes:
        args += ["--name=write", f"--filename={scratch}", "--rw=write", "--iodepth=8",
                 f"--size={write_bytes}", "--end_fsync=1"]
    drop_caches()
    t = time.monotonic()
    run(*args)
    secs = time.monotonic() - t
    if os.path.exists(scratch):
        os.unlink(scratch)
    return secs


def folio_shares(path, limit=256 * MIB):
    """How the page cache holds the first `limit` bytes of `path` (which must be cached): the
    share of its pages in order-0 (single 4 KiB page) folios, and the mean size of the others.
    Read from /proc/self/pagemap and /proc/kpageflags through a shared mapping of the file."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = min(os.path.getsize(path), limit)
    pages = size // mmap.PAGESIZE
    map_populate = 0x8000
    fd = os.open(path, os.O_RDONLY)
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED | map_populate, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        os.close(fd)
        raise OSError(ctypes.get_errno(), f"mmap of {path}")
    order0 = heads = tails = 0
    try:
        pm, kf = os.open("/proc/self/pagemap", os.O_RDONLY), os.open("/proc/kpageflags", os.O_RDONLY)
        try:
            entries = os.pread(pm, pages * 8, addr // mmap.PAGESIZE * 8)
            for i in range(pages):
                e = int.from_bytes(entries[i * 8:i * 8 + 8], "little")
                if not e >> 63:
                    continue  # not present
                flags = int.from_bytes(os.pread(kf, 8, (e & ((1 << 55) - 1)) * 8), "little")
                if flags & (1 << 15):
                    heads += 1
                elif flags & (1 << 16):
                    tails += 1
                else:
                    order0 += 1
        finally:
            os.close(pm)
            os.close(kf)
    finally:
        libc.munmap(addr, size)
        os.close(fd)
    present = order0 + heads + tails
    return {"order0": order0 / present if present else 0.0,
            "large_kib": (heads + tails) / heads * mmap.PAGESIZE / 1024 if heads else 0.0}


def cmp_ok(a, b):
    return subprocess.run(["cmp", a, b], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


# ----- what was measured on -----

def git_commit(path):
    """The short commit of the git work tree holding `path` ("unknown" outside one), with
    " with uncommitted changes" when its tracked files differ from that commit."""
    top = subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel"],
                         capture_output=True, text=True).stdout.strip() or path
    commit = subprocess.run(["git", "-C", top, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    # The previous run's own output does not change what is measured.
    changed = subprocess.run(["git", "-C", top, "status", "--porcelain", "--untracked-files=no",
                              "--", ".", ":!BENCHMARKS*"], capture_output=True, text=True).stdout
    if changed.strip():
        commit += " with uncommitted changes"
    return commit


def machine():
    """The machine, the commit of this repository and the versions of the tools measured."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {
        "rpfs": out(rpfs_bin(), "--version").strip(),
        "restic": out("restic", "version").split(" compiled")[0],
        "borg": out("borg", "--version").strip(),
        "qemu": out("qemu-img", "--version").splitlines()[0],
        "fio": out("fio", "--version").strip(),
    }
    mem = int(out("awk", "/MemTotal/ {print $2}", "/proc/meminfo")) // 1024 // 1024
    return {"cores": os.cpu_count(), "cpu": cpu, "mem_gib": mem, "system": platform.system(),
            "release": platform.release(), "commit": git_commit(ROOT), "versions": versions}


def binaries(given):
    """Which rpfs binaries are measured: their directory, and (when --bin-dir named one) the
    commit of the work tree holding it (the build is assumed to be of that tree)."""
    return {"dir": bin_dir(), "given": given, "commit": git_commit(bin_dir()) if given else None}


# ----- sections -----

def peer_disks(args, work, rng):
    """The peers' VM in `work`: an ext4 OS disk ~35% full of real files and a data disk half
    random data (from `rng`) and half holes; returns {disk: image path}."""
    disks = {"os": os.path.join(work, "os.img"), "data": os.path.join(work, "data.img")}
    log(f"workload: {args.os_gib} GiB OS disk ~35% full of real files, {args.data_gib} GiB data disk")
    make_os_disk(disks["os"], args.os_gib * GIB, os.path.join(work, "tree"), "-E", "root_owner=0:0")
    make_data_disk(disks["data"], args.data_gib * GIB, rng)
    return disks


def peers_section(args, work):
    rng = random.Random(4)
    os_size, data_size = args.os_gib * GIB, args.data_gib * GIB
    disks = peer_disks(args, work, rng)

    kinds = [k for k in INGESTING if args.only_peer is None or k.name.split()[0] in args.only_peer]
    peers = [k(work, disks) for k in kinds]
    ingest = {p.name: [] for p in peers}
    full = {p.name: [] for p in peers}
    # What the device alone needs for rpfs's first point's I/O, taking its turns with the peers.
    rp = next((p for p in peers if isinstance(p, Rpfs)), None)
    floor = {"read": [], "read_write": []}
    floor_file = os.path.join(work, "floor.out")

    def floor_turn():
        if rp is None:
            return
        floor["read"].append(device_floor(disks.values(), 0, floor_file))
        floor["read_write"].append(device_floor(disks.values(), floor["stored"], floor_file))
        log(f"device floor: read {floor['read'][-1]:.2f} s, read + write {floor['read_write'][-1]:.2f} s")

    # Per incremental generation: the distinct 4 KiB pages the writes changed, and what each
    # peer's store grew by for it.
    changed = []
    sizes = {p.name: [] for p in peers}
    for g in range(args.generations):
        if g > 0:
            changed.append(scribble(disks["os"], os_size, 0.02, rng)
                           + scribble(disks["data"], data_size, 0.05, rng))
        for p in peers:
            drop_caches()
            secs, rss = timed(*p.ingest_command())
            ingest[p.name].append((secs, rss))
            sizes[p.name].append(p.store_size())
            if g == 0:
                full[p.name].append(secs)
            log(f"gen {g}: {p.name} {secs:.2f} s, peak {rss / MIB:.0f} MiB")
        if g == 0:
            floor["stored"] = rp.store_size() if rp else 0
            floor_turn()
            # A full point is one sample per store: take more, each into a fresh store that is
            # then thrown away, the peers taking turns as in every generation.
            for rep in range(1, args.full_reps):
                scratch = os.path.join(work, f"full-{rep}")
                for k in kinds:
                    drop_caches()
                    secs, _ = timed(*k(scratch, disks).ingest_command())
                    full[k.name].append(secs)
                    log(f"full point {rep + 1}: {k.name} {secs:.2f} s")
                shutil.rmtree(scratch)
                floor_turn()

    rows = []
    readers = peers + [RawFuse(work, disks), Raw(work, disks)]
    for p in readers:
        r = {"name": p.name}
        if p.name in ingest:
            samples = ingest[p.name]
            r["full"] = statistics.median(full[p.name])
            r["incr"] = statistics.median(s for s, _ in samples[1:]) if len(samples) > 1 else None
            r["ingest_rss"] = max(m for _, m in samples)
            r["store"] = p.store_size()
            grown = sizes[p.name]
            if changed:
                # Store growth per incremental point over the bytes that truly changed.
                r["growth"] = statistics.median((grown[g + 1] - grown[g]) / (pages * PAGE)
                                                for g, pages in enumerate(changed))
        cold, warm, later, iops, p99 = [], [], [], [], []
        ok = True
        # Why rpfs's warm read stays below the raw image's: how the page cache holds each.
        kernel = isinstance(p, (Rpfs, Raw))
        for rep in range(args.reps):
            drop_caches()
            p.mount()
            try:
                cold.append(seq_read(p.file("os")))
                warm.append(seq_read(p.file("os")))
                if kernel:
                    later.append(seq_read(p.file("os")))
                if rep == 0:
                    if kernel:
                        r["folios"] = folio_shares(p.file("os"))
                    ok = all(cmp_ok(p.file(d), disks[d]) for d in disks)
                    r["daemon_rss"] = vm_hwm(p.proc.pid) if p.proc else None
            finally:
                p.unmount()
            drop_caches()
            p.mount()
            try:
                i, l = rand_read(p.file("os"), args.fio_seconds)
                iops.append(i)
                p99.append(l)
                # The daemon's peak over the whole read suite: sequential, then random reads.
                if rep == 0 and p.proc:
                    r["daemon_rss"] = max(r["daemon_rss"] or 0, vm_hwm(p.proc.pid))
            finally:
                p.unmount()
        r.update(cold=statistics.median(cold), warm=statistics.median(warm),
                 later=statistics.median(later) if later else None,
                 iops=statistics.median(iops), p99=statistics.median(p99), identical=ok)
        log(f"{p.name}: cold {r['cold'] / 1e6:.0f} MB/s, warm {r['warm'] / 1e6:.0f} MB/s, "
            f"{r['iops']:.0f} IOPS p99 {r['p99']:.2f} ms, identical {ok}")
        if p is rp:
            r["floor"] = {"stored": floor["stored"], "read": statistics.median(floor["read"]),
                          "read_write": statistics.median(floor["read_write"])}
        rows.append(r)
    return rows


def format_args():
    """`rpfs init`'s arguments for the store format RPFS_BENCH_FORMAT names (none: the default)."""
    fmt = os.environ.get("RPFS_BENCH_FORMAT")
    return ["--format", fmt] if fmt else []


def daemon_peak(env, mnt, paths, fio_seconds):
    """Peak RSS of a fresh mount daemon (the bench's block cache size) over cold sequential reads
    of `paths` (relative to the mount) and 4 KiB random reads of the first: what its index and
    table memory comes to in a store of many points or VMs (issue 16: bounded)."""
    os.makedirs(mnt, exist_ok=True)
    drop_caches()
    proc = subprocess.Popen([rpfs_bin(), "mount", mnt, "--foreground", "--cache-size", CACHE_SIZE],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: is_mounted(mnt), "mount")
        for path in paths:
            seq_read(os.path.join(mnt, path))
        rand_read(os.path.join(mnt, paths[0]), fio_seconds)
        return vm_hwm(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def chain_section(args, work):
    """Reads of point 1 and point 500 of one chain, in one reader process and through the mount."""
    size = args.chain_disk_mib * MIB
    block = 64 * 1024
    depth = 500
    rng = random.Random(42)
    store = os.path.join(work, "store")
    disk = os.path.join(work, "disk.img")
    env = dict(os.environ, RPFS_STORE=store)
    rpfs = rpfs_bin()
    make_chain_disk(disk, size, block, rng)
    run(rpfs, "init", *format_args(), env=env)
    run(rpfs, "vm", "add", "vm", "--disk", "d=" + disk, env=env)
    run(rpfs, "collection", "create", "c", "--vm", "vm", env=env)
    run(rpfs, "point", "create", "c", "p1", env=env)
    changes = max(1, size // block // 200)
    with open(disk, "r+b") as f:
        for i in range(2, depth + 1):
            change_blocks(f, size, block, changes, rng)
            run(rpfs, "point", "create", "c", f"p{i}", env=env)
    passes = json.loads(out(read_passes_bin(), store, "c", "d", str(args.reps + 1), "p1", f"p{depth}"))
    inproc = [statistics.median(passes[p][1:]) for p in ("p1", f"p{depth}")]
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    mounted = {"cold": [[], []], "warm": [[], []]}
    for _ in range(args.reps):
        for i, p in enumerate(("p1", f"p{depth}")):
            drop_caches()
            proc = subprocess.Popen([rpfs, "mount", mnt, "--foreground"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: is_mounted(mnt), "mount")
            path = os.path.join(mnt, "c", p, "disks", "d.img")
            mounted["cold"][i].append(size / seq_read(path))
            # A warm pass of this small disk takes tens of milliseconds, as long as starting dd
            # and the scheduler's noise: take ten.
            mounted["warm"][i].extend(size / seq_read(path) for _ in range(10))
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    peak = daemon_peak(env, mnt, ["c/p1/disks/d.img", f"c/p{depth}/disks/d.img"], args.fio_seconds)
    return {
        "depth": depth, "size": size, "changes": changes, "daemon_rss": peak,
        "inproc": inproc,
        "cold": [statistics.median(x) for x in mounted["cold"]],
        "warm": [statistics.median(x) for x in mounted["warm"]],
    }


def idle_section(args, work):
    """A point of an unchanged VM: everything read and hashed, nothing stored."""
    disks = {"os": os.path.join(work, "os.img"), "data": os.path.join(work, "data.img")}
    store = os.path.join(work, "store")
    env = dict(os.environ, RPFS_STORE=store)
    rpfs = rpfs_bin()
    rng = random.Random(7)
    make_os_disk(disks["os"], args.idle_os_gib * GIB, os.path.join(work, "tree"))
    make_data_disk(disks["data"], args.idle_data_gib * GIB, rng)
    run(rpfs, "init", *format_args(), env=env)
    run(rpfs, "vm", "add", "vm", *[f"--disk={d}={p}" for d, p in disks.items()], env=env)
    run(rpfs, "collection", "create", "c", "--vm", "vm", env=env)
    run(rpfs, "point", "create", "c", "base", env=env)
    warm, cold = [], []
    for i in range(args.reps):
        warm.append(timed([rpfs, "point", "create", "c", f"w{i}"], env=env)[0])
        drop_caches()
        cold.append(timed([rpfs, "point", "create", "c", f"c{i}"], env=env)[0])
    return {"size": (args.idle_os_gib + args.idle_data_gib) * GIB,
            "warm": statistics.median(warm), "cold": statistics.median(cold)}


def files_section(args, work):
    """A large guest file read through files/, against the disk image through the same mount."""
    size = args.files_file_mib * MIB
    store = os.path.join(work, "store")
    env = dict(os.environ, RPFS_STORE=store)
    rpfs = rpfs_bin()
    tree = os.path.join(work, "tree")
    make_files_tree(tree, size, random.Random(11))
    disk = os.path.join(work, "os.img")
    mkfs_ext4(disk, size + size // 4, tree)
    shutil.rmtree(tree)
    run(rpfs, "init", *format_args(), env=env)
    run(rpfs, "vm", "add", "vm", "--disk", "os=" + disk, env=env)
    run(rpfs, "collection", "create", "c", "--vm", "vm", env=env)
    run(rpfs, "point", "create", "c", "p", env=env)
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    rates = {"file": [], "disk": []}
    listing = []
    # Cold reads of this device vary by 2x from one to the next: take at least six of each, and
    # alternate which goes first (the host caches what the previous read fetched).
    for rep in range(max(args.reps, 6)):
        for what in ("file", "disk") if rep % 2 == 0 else ("disk", "file"):
            drop_caches()
            proc = subprocess.Popen([rpfs, "mount", mnt, "--foreground", "--cache-size", CACHE_SIZE],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: is_mounted(mnt), "mount")
            if what == "file":
                t = time.monotonic()
                n = len(out("ls", "-l", os.path.join(mnt, "c", "p", "files", "os", "many")).splitlines())
                listing.append(time.monotonic() - t)
                assert n == 10001, n
                path = os.path.join(mnt, "c", "p", "files", "os", "large.bin")
                rates["file"].append(seq_read(path))
            else:
                rates["disk"].append(seq_read(os.path.join(mnt, "c", "p", "disks", "os.img")))
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    return {"size": size, "disk_size": os.path.getsize(disk),
            "file": statistics.median(rates["file"]), "disk": statistics.median(rates["disk"]),
            "ls": statistics.median(listing)}


def clones_section(args, work, count=10, fraction=0.02):
    """Ten VMs made from one template, each changed 2% differently (issue 16): the first point
    of each clone into one store (rpfs: one VM and collection per clone; restic and borg: one
    repository), the tools taking turns clone by clone; then incremental points of the first
    clone, each after another 2% of changes. Returns, per tool, the time of every first and
    incremental point and the store's size after each first point, with the distinct 4 KiB
    pages each clone's changes made (what the store should add for it beyond the template)."""
    sizes = {"os": args.os_gib * GIB, "data": args.data_gib * GIB}
    # The peers section's template, built the same way from the same seed.
    template = peer_disks(args, os.path.join(work, "template"), random.Random(4))
    clones, changed = [], []
    for i in range(count):
        d = os.path.join(work, f"clone{i + 1}")
        os.makedirs(d)
        rng = random.Random(1600 + i)
        disks, pages = {}, 0
        for name, src in template.items():
            disks[name] = os.path.join(d, os.path.basename(src))
            run("cp", "--reflink=auto", src, disks[name])
            pages += scribble(disks[name], sizes[name], fraction, rng)
        clones.append(disks)
        changed.append(pages)
    log(f"{count} clones, changed {', '.join(f'{p * PAGE / MIB:.0f}' for p in changed)} MiB")
    shutil.rmtree(os.path.join(work, "template"))

    tools = [RpfsVms(work, clones)] if args.only_peer is None or "rpfs" in args.only_peer else []
    tools += [k(work, clones[0]) for k in (Restic, Borg)
              if args.only_peer is None or k.name.split()[0] in args.only_peer]
    rows = {p.name: {"name": p.name, "first": [], "sizes": [], "incr": [], "rss": 0} for p in tools}

    def point(p, i):
        """The next point of clone i by tool p: its seconds, and its peak memory in the row."""
        if isinstance(p, RpfsVms):
            p.vm = i
        else:
            p.disks = clones[i]
        drop_caches()
        secs, rss = timed(*p.ingest_command())
        rows[p.name]["rss"] = max(rows[p.name]["rss"], rss)
        return secs

    for i in range(count):
        for p in tools:
            rows[p.name]["first"].append(point(p, i))
            rows[p.name]["sizes"].append(p.store_size())
            log(f"clone {i + 1}: {p.name} first point {rows[p.name]['first'][-1]:.2f} s, "
                f"store {rows[p.name]['sizes'][-1] / MIB:.0f} MiB")
    incr_changed = []
    for rep in range(args.reps):
        rng = random.Random(1700 + rep)
        incr_changed.append(sum(scribble(path, sizes[name], fraction, rng) for name, path in clones[0].items()))
        for p in tools:
            rows[p.name]["incr"].append(point(p, 0))
            log(f"clone 1 again: {p.name} incremental point {rows[p.name]['incr'][-1]:.2f} s")
    peak = None
    rp = next((p for p in tools if isinstance(p, RpfsVms)), None)
    if rp:
        last = rp.gens[0] - 1
        peak = daemon_peak(rp.env, os.path.join(work, "mnt"),
                           [f"c1/g{last}/disks/os.img", f"c1/g{last}/disks/data.img",
                            f"c{count}/g0/disks/os.img"], args.fio_seconds)
    return {"count": count, "fraction": fraction, "os_size": sizes["os"], "data_size": sizes["data"],
            "daemon_rss": peak,
            "changed": changed, "incr_changed": incr_changed, "rows": list(rows.values())}


SECTIONS = [("peers", peers_section), ("chain", chain_section), ("idle", idle_section),
            ("files", files_section), ("clones", clones_section)]
