#!/usr/bin/env python3
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

Every figure is a median over repeated runs where the measure repeats; ratios compare figures
of the same run. Writes BENCHMARKS.md and BENCHMARKS.svg (or the paths given).
Needs root (page cache drops, mounts).
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RPFS = os.path.join(ROOT, "target", "release", "rpfs")
READ_PASSES = os.path.join(ROOT, "target", "release", "examples", "read_passes")
MIB = 1 << 20
GIB = 1 << 30
CACHE_SIZE = "256M"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*args, env=None, quiet=True, check=True):
    return subprocess.run(args, env=env, check=check,
                          stdout=subprocess.DEVNULL if quiet else None)


def out(*args, env=None):
    return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def du(path):
    return int(out("du", "-sb", path).split()[0])


def timed(cmd, env=None):
    """Runs cmd; returns (seconds, peak RSS in bytes) of it and its children."""
    t = time.monotonic()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.monotonic() - t
    kb = int(res.stderr.strip().splitlines()[-1])
    return secs, kb * 1024


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


def wait_for(cond, what, timeout=60):
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def vm_hwm(pid):
    """Peak resident memory of a process and its threads, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ----- workload -----

def real_files(dest, want_bytes):
    """Copies real files from /usr into dest until want_bytes are there."""
    got = 0
    for top in ("/usr/lib", "/usr/share", "/usr/bin", "/usr/libexec", "/usr/include"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                if not os.path.isfile(src) or os.path.islink(src):
                    continue
                size = os.path.getsize(src)
                if size == 0 or got + size > want_bytes:
                    continue
                rel = os.path.relpath(src, "/usr")
                dst = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    shutil.copyfile(src, dst)
                except OSError:
                    continue
                got += size
                if got >= want_bytes * 0.999:
                    return got
    return got


def make_data_disk(path, size, rng):
    """Half random data, half holes, in 1 MiB extents."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, MIB):
            if rng.random() < 0.5:
                f.seek(off)
                f.write(rng.randbytes(min(MIB, size - off)))


def scribble(path, size, fraction, rng):
    """Random 64 KiB writes at 4 KiB-aligned offsets over `fraction` of the disk."""
    writes = int(size * fraction / (64 * 1024))
    with open(path, "r+b") as f:
        for _ in range(writes):
            f.seek(rng.randrange(0, (size - 64 * 1024) // 4096) * 4096)
            f.write(rng.randbytes(64 * 1024))
        f.flush()
        os.fsync(f.fileno())


# ----- peers -----

class Peer:
    """One tool: ingest each generation, then mount the last point and read its disks."""
    name = "?"
    mounts = True

    def __init__(self, work, disks):
        self.work = os.path.join(work, self.name.split()[0])
        os.makedirs(self.work, exist_ok=True)
        self.disks = disks  # {name: source path}
        self.mnt = os.path.join(self.work, "mnt")
        self.proc = None

    def store_size(self):
        return du(self.store)

    def unmount(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in [self.mnt] + [self.file(d) for d in self.disks]:
            if path and is_mounted(os.path.abspath(path)):
                subprocess.run(["umount", "-l", path], check=False)
        self.proc = None


class Rpfs(Peer):
    name = "rpfs"

    def __init__(self, work, disks):
        super().__init__(work, disks)
        self.store = os.path.join(self.work, "store")
        self.env = dict(os.environ, RPFS_STORE=self.store)
        run(RPFS, "init", env=self.env)
        args = [RPFS, "vm", "add", "vm"] + [f"--disk={d}={p}" for d, p in disks.items()]
        run(*args, env=self.env)
        run(RPFS, "collection", "create", "c", "--vm", "vm", env=self.env)
        self.gen = 0

    def ingest(self):
        r = timed([RPFS, "point", "create", "c", f"g{self.gen}"], env=self.env)
        self.gen += 1
        return r

    def mount(self):
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = subprocess.Popen([RPFS, "mount", self.mnt, "--foreground",
                                      "--cache-size", CACHE_SIZE], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: is_mounted(self.mnt), "rpfs mount")

    def file(self, disk):
        return os.path.join(self.mnt, "c", f"g{self.gen - 1}", "disks", f"{disk}.img")


class Restic(Peer):
    name = "restic"

    def __init__(self, work, disks):
        super().__init__(work, disks)
        self.store = os.path.join(self.work, "repo")
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.path.join(self.work, "cache"))
        run("restic", "-r", self.store, "init", env=self.env)

    def ingest(self):
        return timed(["restic", "-r", self.store, "backup", "--quiet", *self.disks.values()], env=self.env)

    def mount(self):
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = subprocess.Popen(["restic", "-r", self.store, "mount", self.mnt], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(os.path.join(self.mnt, "snapshots", "latest")), "restic mount")

    def file(self, disk):
        return os.path.join(self.mnt, "snapshots", "latest", self.disks[disk].lstrip("/"))


class Borg(Peer):
    name = "borg lz4"

    def __init__(self, work, disks):
        super().__init__(work, disks)
        self.store = os.path.join(self.work, "repo")
        self.env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_BASE_DIR=os.path.join(self.work, "base"))
        run("borg", "init", "-e", "none", self.store, env=self.env)
        self.gen = 0

    def ingest(self):
        r = timed(["borg", "create", "--compression", "lz4", f"{self.store}::g{self.gen}",
                   *self.disks.values()], env=self.env)
        self.gen += 1
        return r

    def mount(self):
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = subprocess.Popen(["borg", "mount", "-f", f"{self.store}::g{self.gen - 1}", self.mnt],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: is_mounted(self.mnt) and os.path.exists(self.file(next(iter(self.disks)))),
                 "borg mount")

    def file(self, disk):
        return os.path.join(self.mnt, self.disks[disk].lstrip("/"))


class QemuExport(Peer):
    """Images exported as files through qemu-storage-daemon's FUSE export."""

    def images(self):
        raise NotImplementedError

    def mount(self):
        args = ["qemu-storage-daemon"]
        for i, (disk, (fmt, image)) in enumerate(self.images().items()):
            export = self.file(disk)
            open(export, "a").close()
            args += ["--blockdev", f"driver=file,node-name=f{i},filename={image}",
                     "--blockdev", f"driver={fmt},node-name=n{i},file=f{i}",
                     "--export", f"type=fuse,id=e{i},node-name=n{i},mountpoint={export},writable=off"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: all(is_mounted(self.file(d)) for d in self.disks), "qemu-storage-daemon export")

    def file(self, disk):
        return os.path.join(self.work, f"export-{disk}.img")


class Qcow2(QemuExport):
    name = "qcow2 chain"

    def __init__(self, work, disks):
        super().__init__(work, disks)
        self.store = os.path.join(self.work, "chain")
        os.makedirs(self.store)
        self.gen = 0

    def image(self, disk, gen):
        return os.path.join(self.store, f"{disk}-{gen}.qcow2")

    def ingest(self):
        # A full copy first; then, per generation, an empty overlay over the new raw image,
        # rebased (safe mode) onto the previous chain: it ends up holding exactly the clusters
        # that differ from the chain.
        cmds = []
        for d, src in self.disks.items():
            out_img = self.image(d, self.gen)
            if self.gen == 0:
                cmds.append(["qemu-img", "convert", "-O", "qcow2", src, out_img])
            else:
                cmds.append(["qemu-img", "create", "-q", "-f", "qcow2", "-b", src, "-F", "raw", out_img])
                cmds.append(["qemu-img", "rebase", "-q", "-b", self.image(d, self.gen - 1),
                             "-F", "qcow2", out_img])
        # qemu-img leaves what it wrote in the page cache; rpfs, restic and borg return only
        # once their data is durable (they fsync), so the qcow2 time includes a sync of its images.
        cmds.append(["sync"] + [self.image(d, self.gen) for d in self.disks])
        script = " && ".join(" ".join(f"'{a}'" for a in c) for c in cmds)
        r = timed(["sh", "-c", script])
        self.gen += 1
        return r

    def images(self):
        return {d: ("qcow2", self.image(d, self.gen - 1)) for d in self.disks}


class RawFuse(QemuExport):
    name = "raw via FUSE (ceiling)"
    store = None

    def images(self):
        return {d: ("raw", p) for d, p in self.disks.items()}


class Raw(Peer):
    name = "raw image (no FUSE)"
    mounts = False

    def mount(self):
        pass

    def file(self, disk):
        return self.disks[disk]


# ----- measures -----

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


def peers_section(args, work):
    rng = random.Random(4)
    os_size, data_size = args.os_gib * GIB, args.data_gib * GIB
    disks = {"os": os.path.join(work, "os.img"), "data": os.path.join(work, "data.img")}
    log(f"workload: {args.os_gib} GiB OS disk ~35% full of real files, {args.data_gib} GiB data disk")
    tree = os.path.join(work, "tree")
    got = real_files(tree, int(os_size * 0.35))
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", tree, disks["os"],
        f"{os_size // 1024}k")
    shutil.rmtree(tree)
    make_data_disk(disks["data"], data_size, rng)

    kinds = [Rpfs, Qcow2, Restic, Borg]
    kinds = [k for k in kinds if args.only_peer is None or k.name.split()[0] in args.only_peer]
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

    for g in range(args.generations):
        if g > 0:
            scribble(disks["os"], os_size, 0.02, rng)
            scribble(disks["data"], data_size, 0.05, rng)
        for p in peers:
            drop_caches()
            secs, rss = p.ingest()
            ingest[p.name].append((secs, rss))
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
                    secs, _ = k(scratch, disks).ingest()
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


def chain_section(args, work):
    """Reads of point 1 and point 500 of one chain, in one reader process and through the mount."""
    size = args.chain_disk_mib * MIB
    block = 64 * 1024
    depth = 500
    rng = random.Random(42)
    store = os.path.join(work, "store")
    disk = os.path.join(work, "disk.img")
    env = dict(os.environ, RPFS_STORE=store)
    with open(disk, "wb") as f:
        for _ in range(size // block):
            f.write(rng.randbytes(block) if rng.random() < 0.6 else
                    ((b"rpfs benchmark text line %012d\n" % rng.randrange(10**12)) * 2000)[:block])
    run(RPFS, "init", env=env)
    run(RPFS, "vm", "add", "vm", "--disk", "d=" + disk, env=env)
    run(RPFS, "collection", "create", "c", "--vm", "vm", env=env)
    run(RPFS, "point", "create", "c", "p1", env=env)
    changes = max(1, size // block // 200)
    with open(disk, "r+b") as f:
        for i in range(2, depth + 1):
            for _ in range(changes):
                f.seek(rng.randrange(size // block) * block)
                f.write(rng.randbytes(block))
            f.flush()
            run(RPFS, "point", "create", "c", f"p{i}", env=env)
    passes = json.loads(out(READ_PASSES, store, "c", "d", str(args.reps + 1), "p1", f"p{depth}"))
    inproc = [statistics.median(passes[p][1:]) for p in ("p1", f"p{depth}")]
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    mounted = {"cold": [[], []], "warm": [[], []]}
    for _ in range(args.reps):
        for i, p in enumerate(("p1", f"p{depth}")):
            drop_caches()
            proc = subprocess.Popen([RPFS, "mount", mnt, "--foreground"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: is_mounted(mnt), "mount")
            path = os.path.join(mnt, "c", p, "disks", "d.img")
            mounted["cold"][i].append(size / seq_read(path))
            # A warm pass of this small disk takes tens of milliseconds, as long as starting dd
            # and the scheduler's noise: take ten.
            mounted["warm"][i].extend(size / seq_read(path) for _ in range(10))
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    return {
        "depth": depth, "size": size, "changes": changes,
        "inproc": inproc,
        "cold": [statistics.median(x) for x in mounted["cold"]],
        "warm": [statistics.median(x) for x in mounted["warm"]],
    }


def idle_section(args, work):
    """A point of an unchanged VM: everything read and hashed, nothing stored."""
    disks = {"os": os.path.join(work, "os.img"), "data": os.path.join(work, "data.img")}
    store = os.path.join(work, "store")
    env = dict(os.environ, RPFS_STORE=store)
    rng = random.Random(7)
    tree = os.path.join(work, "tree")
    real_files(tree, int(args.idle_os_gib * GIB * 0.35))
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, disks["os"], f"{args.idle_os_gib * GIB // 1024}k")
    shutil.rmtree(tree)
    make_data_disk(disks["data"], args.idle_data_gib * GIB, rng)
    run(RPFS, "init", env=env)
    run(RPFS, "vm", "add", "vm", *[f"--disk={d}={p}" for d, p in disks.items()], env=env)
    run(RPFS, "collection", "create", "c", "--vm", "vm", env=env)
    run(RPFS, "point", "create", "c", "base", env=env)
    warm, cold = [], []
    for i in range(args.reps):
        warm.append(timed([RPFS, "point", "create", "c", f"w{i}"], env=env)[0])
        drop_caches()
        cold.append(timed([RPFS, "point", "create", "c", f"c{i}"], env=env)[0])
    return {"size": (args.idle_os_gib + args.idle_data_gib) * GIB,
            "warm": statistics.median(warm), "cold": statistics.median(cold)}


def files_section(args, work):
    """A large guest file read through files/, against the disk image through the same mount."""
    size = args.files_file_mib * MIB
    store = os.path.join(work, "store")
    env = dict(os.environ, RPFS_STORE=store)
    tree = os.path.join(work, "tree")
    os.makedirs(os.path.join(tree, "many"))
    with open(os.path.join(tree, "large.bin"), "wb") as f:
        rng = random.Random(11)
        for _ in range(size // (4 * MIB)):
            f.write(rng.randbytes(4 * MIB))
    for i in range(10000):
        open(os.path.join(tree, "many", f"f{i:05}"), "w").close()
    disk = os.path.join(work, "os.img")
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, disk, f"{(size + size // 4) // 1024}k")
    shutil.rmtree(tree)
    run(RPFS, "init", env=env)
    run(RPFS, "vm", "add", "vm", "--disk", "os=" + disk, env=env)
    run(RPFS, "collection", "create", "c", "--vm", "vm", env=env)
    run(RPFS, "point", "create", "c", "p", env=env)
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    rates = {"file": [], "disk": []}
    listing = []
    # Cold reads of this device vary by 2x from one to the next: take at least six of each, and
    # alternate which goes first (the host caches what the previous read fetched).
    for rep in range(max(args.reps, 6)):
        for what in ("file", "disk") if rep % 2 == 0 else ("disk", "file"):
            drop_caches()
            proc = subprocess.Popen([RPFS, "mount", mnt, "--foreground", "--cache-size", CACHE_SIZE],
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


# ----- report -----

def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    # The previous run's own output does not change what is measured.
    changed = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                              "--", ".", ":!BENCHMARKS*"], capture_output=True, text=True).stdout
    if changed.strip():
        commit += " with uncommitted changes"
    versions = {
        "rpfs": out(RPFS, "--version").strip(),
        "restic": out("restic", "version").split(" compiled")[0],
        "borg": out("borg", "--version").strip(),
        "qemu": out("qemu-img", "--version").splitlines()[0],
        "fio": out("fio", "--version").strip(),
    }
    mem = int(out("awk", "/MemTotal/ {print $2}", "/proc/meminfo")) // 1024 // 1024
    return (f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.system()} {platform.release()}; "
            f"commit {commit}; " + ", ".join(versions.values()))


def fmt_rate(b):
    return f"{b / 1e9:.2f} GB/s" if b >= 1e9 else f"{b / 1e6:.0f} MB/s"


def report(args, results):
    lines = ["# rpfs benchmarks", "",
             f"Produced by `scripts/bench.sh {' '.join(sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}.", "", "Machine: " + machine(), ""]
    checks = []

    def check(what, value, target, ok):
        checks.append((what, value, target, ok))

    peers = results.get("peers")
    if peers:
        by = {r["name"]: r for r in peers}
        lines += [
            f"## Peers ({args.os_gib} GiB ext4 OS disk ~35% full of real files + {args.data_gib} GiB "
            f"data disk half random, {args.generations} generations of random 64 KiB writes over 2% / 5%)",
            "",
            f"Medians. Full points: {args.full_reps} each, into fresh stores. "
            "Ingest with the page cache dropped first; cold reads with the page cache dropped "
            f"and a fresh daemon; random reads: fio, 4 KiB, 4 threads, {args.fio_seconds} s, cold. "
            f"rpfs mounts with a {CACHE_SIZE} block cache. The qcow2 ingest times include a `sync` of "
            "the images written: qemu-img leaves them in the page cache, while rpfs, restic and borg "
            "fsync their data before they return. Warm reads are the second pass.",
            "",
            "| peer | full point | each incremental point | store after all points | peak ingest memory "
            "| cold sequential read | warm sequential read | 4 KiB random reads (cold) | mount daemon memory "
            "| read back identical |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in peers:
            cell = lambda k, f: f(r[k]) if r.get(k) is not None else "–"
            lines.append(
                f"| {r['name']} | {cell('full', lambda v: f'{v:.2f} s')} | {cell('incr', lambda v: f'{v:.2f} s')} "
                f"| {cell('store', lambda v: f'{v / GIB:.2f} GiB')} | {cell('ingest_rss', lambda v: f'{v / MIB:.0f} MiB')} "
                f"| {fmt_rate(r['cold'])} | {fmt_rate(r['warm'])} | {r['iops']:.0f} IOPS, p99 {r['p99']:.2f} ms "
                f"| {cell('daemon_rss', lambda v: f'{v / MIB:.0f} MiB')} | {'yes' if r['identical'] else 'NO'} |")
        rp, q, re_, bo = by.get("rpfs"), by.get("qcow2 chain"), by.get("restic"), by.get("borg lz4")
        ceiling, raw = by.get("raw via FUSE (ceiling)"), by.get("raw image (no FUSE)")
        if rp and q and re_ and bo:
            check("full point vs qcow2 full copy", f"{q['full'] / rp['full']:.2f}x faster", "≥ 1x", rp["full"] <= q["full"])
            check("full point vs restic / borg", f"{re_['full'] / rp['full']:.1f}x / {bo['full'] / rp['full']:.1f}x faster",
                  "≥ 5x", min(re_["full"], bo["full"]) >= 5 * rp["full"])
            check("incremental point vs qcow2 overlay", f"{q['incr'] / rp['incr']:.1f}x faster", "≥ 2x", q["incr"] >= 2 * rp["incr"])
            check("incremental point vs restic / borg", f"{re_['incr'] / rp['incr']:.1f}x / {bo['incr'] / rp['incr']:.1f}x faster",
                  "≥ 5x", min(re_["incr"], bo["incr"]) >= 5 * rp["incr"])
            check("store vs qcow2 chain", f"{rp['store'] / q['store']:.2f}x", "≤ 0.85x", rp["store"] <= 0.85 * q["store"])
            check("store vs restic / borg", f"{rp['store'] / re_['store']:.2f}x / {rp['store'] / bo['store']:.2f}x",
                  "≤ 0.6x", rp["store"] <= 0.6 * min(re_["store"], bo["store"]))
            check("cold sequential read vs FUSE ceiling", f"{rp['cold'] / ceiling['cold']:.2f}x", "≥ 1x", rp["cold"] >= ceiling["cold"])
            check("cold sequential read vs restic", f"{rp['cold'] / re_['cold']:.1f}x", "≥ 4x", rp["cold"] >= 4 * re_["cold"])
            best_peer = max(r["warm"] for r in peers if r["name"] not in ("rpfs", raw["name"]))
            check("warm sequential read vs best peer", f"{rp['warm'] / best_peer:.2f}x", "> 1x", rp["warm"] > best_peer)
            check("warm sequential read vs raw image", f"{rp['warm'] / raw['warm']:.2f}x", "≥ 0.6x", rp["warm"] >= 0.6 * raw["warm"])
            check("cold random 4 KiB reads vs qcow2 chain", f"{rp['iops'] / q['iops']:.2f}x", "≥ 1x", rp["iops"] >= q["iops"])
            check("cold random 4 KiB reads vs restic", f"{rp['iops'] / re_['iops']:.0f}x", "≥ 20x", rp["iops"] >= 20 * re_["iops"])
            limit = int(CACHE_SIZE[:-1]) * MIB + 64 * MIB
            check("mount daemon memory", f"{rp['daemon_rss'] / MIB:.0f} MiB", f"≤ {limit // MIB} MiB", rp["daemon_rss"] <= limit)
        lines.append("")
        if rp and rp.get("floor"):
            f = rp["floor"]
            lines += ["The device's own time for a first point's I/O, by fio in the same turns as the "
                      "full points (medians): every source read whole (O_DIRECT, 4 MiB, 12 in flight each) takes "
                      f"{f['read']:.2f} s; reading them while writing the {f['stored'] / GIB:.2f} GiB "
                      f"rpfs's first point stores (4 MiB, 8 in flight, then fsync) takes {f['read_write']:.2f} s. "
                      f"rpfs's full point took {rp['full'] / f['read_write']:.2f}x that time"
                      + (f"; 5x faster than borg would need {bo['full'] / 5:.2f} s, "
                         f"{bo['full'] / 5 / f['read_write']:.2f}x it." if bo else "."), ""]
        if rp and raw and rp.get("folios") and raw.get("folios"):
            a, b = rp["folios"], raw["folios"]
            lines += ["How the page cache holds os.img after a read (its first 256 MiB, from "
                      f"/proc/kpageflags): through the rpfs mount {a['order0']:.0%} of the pages are "
                      f"order-0 (4 KiB) folios; the raw image's are {b['order0']:.0%} order-0"
                      + (f", its larger folios averaging {b['large_kib']:.0f} KiB" if b["large_kib"] else "")
                      + ". A second pass activates each folio on the LRU, once per 4 KiB for a FUSE file; "
                      f"a third pass finds them active: rpfs {fmt_rate(rp['later'])}, the raw image "
                      f"{fmt_rate(raw['later'])} ({rp['later'] / raw['later']:.2f}x).", ""]
    chain = results.get("chain")
    if chain:
        d = chain["depth"]
        lines += [f"## Chain depth ({chain['size'] // MIB} MiB disk, {d} points, {chain['changes']} random "
                  "64 KiB blocks changed per point)", "",
                  "Through the mount: a fresh daemon and a dropped page cache per cold pass, then ten warm "
                  "passes on that mount; medians.", "",
                  f"| sequential read of the whole disk | point 1 | point {d} | point {d} / point 1 |",
                  "|---|---|---|---|"]
        for label, key in [("one reader process, later passes (no cache)", "inproc"),
                           ("through the mount, warm", "warm"), ("through the mount, cold", "cold")]:
            a, b = chain[key]
            lines.append(f"| {label} | {fmt_rate(chain['size'] / a)} | {fmt_rate(chain['size'] / b)} | {b / a:.2f}x time |")
        lines.append("")
        check("chain depth 500, reads through the mount (warm)", f"{chain['warm'][1] / chain['warm'][0]:.2f}x time",
              "≤ 1.1x", chain["warm"][1] <= 1.1 * chain["warm"][0])
        check("chain depth 500, one reader", f"{chain['inproc'][1] / chain['inproc'][0]:.2f}x time",
              "≤ 1.1x", chain["inproc"][1] <= 1.1 * chain["inproc"][0])
    idle = results.get("idle")
    if idle:
        lines += [f"## A point of an unchanged {idle['size'] // GIB} GiB VM", "",
                  f"Everything read and hashed, nothing stored: {idle['warm']:.2f} s with the sources in "
                  f"the page cache, {idle['cold']:.2f} s with it dropped.", ""]
        check(f"unchanged {idle['size'] // GIB} GiB VM point", f"{idle['cold']:.2f} s cold", "< 3 s", idle["cold"] < 3)
    files = results.get("files")
    if files:
        lines += [f"## File-level restore ({files['size'] // MIB} MiB file in a "
                  f"{files['disk_size'] // MIB} MiB ext4 disk)", "",
                  "Medians of at least 6, which of the two goes first alternating. Cold: page cache dropped and a fresh daemon for each read; the "
                  "listing is the first entry into `files/` of that mount (the filesystem is loaded then).", "",
                  "| read through the mount | rate |", "|---|---|",
                  f"| `files/os/large.bin` (the guest file) | {fmt_rate(files['file'])} |",
                  f"| `disks/os.img` (the whole disk image) | {fmt_rate(files['disk'])} |",
                  f"| `ls -l files/os/many` (10,000 entries) | {files['ls']:.2f} s |", ""]
        check("guest file read vs disk image read, cold", f"{files['file'] / files['disk']:.2f}x",
              "≥ 0.8x", files["file"] >= 0.8 * files["disk"])
        check("ls -l of a 10,000-entry guest directory, cold", f"{files['ls']:.2f} s", "< 1 s", files["ls"] < 1)
    if checks:
        lines += ["## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {w} | {v} | {t} | {'yes' if ok else '**no**'} |" for w, v, t, ok in checks]
        lines.append("")
    return "\n".join(lines), checks


def chart(path, results):
    peers = results.get("peers")
    if not peers:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [("full", "full point (s)", False), ("incr", "incremental point (s)", False),
               ("store", "store (GiB)", False), ("cold", "cold read (MB/s)", True),
               ("warm", "warm read (MB/s)", True), ("iops", "4K random IOPS", True)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(18, 4))
    for ax, (key, title, higher) in zip(axes, metrics):
        rows = [r for r in peers if r.get(key) is not None]
        scale = GIB if key == "store" else 1e6 if key in ("cold", "warm") else 1
        ax.barh([r["name"] for r in rows], [r[key] / scale for r in rows],
                color=["#d62728" if r["name"] == "rpfs" else "#7f7f7f" for r in rows])
        ax.set_title(title + (" ↑" if higher else " ↓"), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, format="svg")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--full", action="store_true", help="the full-size workload of issue 4")
    p.add_argument("--only", action="append", choices=["peers", "chain", "idle", "files"], help="run these sections")
    p.add_argument("--only-peer", action="append", help="ingest with these peers only (rpfs, qcow2, restic, borg)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each read measure (median)")
    p.add_argument("--full-reps", type=int, default=3, help="full points taken by each peer (median)")
    p.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    p.add_argument("--svg", default=os.path.join(ROOT, "BENCHMARKS.svg"))
    p.add_argument("--work", help="scratch directory (default: a temporary one)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("scripts/bench.sh needs root (page cache drops and mounts)")
    args.os_gib, args.data_gib = (4, 1) if args.full else (1, 1)
    args.generations = 6
    args.fio_seconds = 15 if args.full else 8
    args.chain_disk_mib = 256 if args.full else 64
    args.idle_os_gib, args.idle_data_gib = (4, 1) if args.full else (1, 1)
    args.files_file_mib = 2048 if args.full else 512
    work = args.work or tempfile.mkdtemp(prefix="rpfs-bench-", dir="/var/tmp")
    results = {}
    try:
        for name, fn in [("peers", peers_section), ("chain", chain_section), ("idle", idle_section),
                         ("files", files_section)]:
            if args.only is None or name in args.only:
                d = os.path.join(work, name)
                os.makedirs(d, exist_ok=True)
                log(f"== {name}")
                results[name] = fn(args, d)
                if not args.work:
                    shutil.rmtree(d, ignore_errors=True)
        text, checks = report(args, results)
        with open(args.out, "w") as f:
            f.write(text)
        chart(args.svg, results)
        print(text)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
