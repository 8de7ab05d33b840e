"""The peers rpfs is measured against, one class each: how to set up its store, the command that
takes a point of the disks (the measures time it), and how to mount the last point and where
each disk's image is in that mount. Rpfs, Restic, Borg and Qcow2 ingest; RawFuse (the raw image
through qemu-storage-daemon's FUSE export: the FUSE ceiling) and Raw (the image read directly)
only read. RpfsVms is rpfs holding several VMs in one store (the clones section), where Restic
and Borg take the clones one after the other into one repository by changing their `disks`."""

import os
import signal
import subprocess

from .common import CACHE_SIZE, du, is_mounted, rpfs_bin, run, wait_for


class Peer:
    """One tool: ingest each generation, then mount the last point and read its disks."""
    name = "?"
    # The peer's directory in the work directory (default: the first word of its name).
    slug = None
    mounts = True

    def __init__(self, work, disks):
        self.work = os.path.join(work, self.name.split()[0] if self.slug is None else self.slug)
        os.makedirs(self.work, exist_ok=True)
        self.disks = disks  # {name: source path}
        self.mnt = os.path.join(self.work, "mnt")
        self.proc = None

    def ingest_command(self):
        """The command (argv, env) that takes the next point; the caller runs and times it."""
        raise NotImplementedError

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


def rpfs_store(store, vms, fmt=None, init_args=()):
    """A new rpfs store in `store` (`rpfs init` given `init_args` too) holding the VMs
    {vm: {disk: source path}}, each with a collection of its own name; returns the environment
    that names the store."""
    env = dict(os.environ, RPFS_STORE=store)
    rpfs = rpfs_bin()
    # RPFS_BENCH_BLOCK_SIZE measures another block size than the default (e.g. 16K), and
    # RPFS_BENCH_FORMAT another store format than the default (2), e.g. 1.
    block = os.environ.get("RPFS_BENCH_BLOCK_SIZE")
    fmt = fmt or os.environ.get("RPFS_BENCH_FORMAT")
    run(rpfs, "init", *(["--block-size", block] if block else []),
        *(["--format", fmt] if fmt else []), *init_args, env=env)
    for vm, disks in vms.items():
        run(rpfs, "vm", "add", vm, *[f"--disk={d}={p}" for d, p in disks.items()], env=env)
        run(rpfs, "collection", "create", vm, "--vm", vm, env=env)
    return env


class Rpfs(Peer):
    name = "rpfs"
    fmt = None
    init_args = ()

    def __init__(self, work, disks):
        super().__init__(work, disks)
        self.store = os.path.join(self.work, "store")
        self.env = rpfs_store(self.store, {"c": disks}, self.fmt, self.init_args)
        self.gen = 0

    def ingest_command(self):
        cmd = [rpfs_bin(), "point", "create", "c", f"g{self.gen}"]
        self.gen += 1
        return cmd, self.env

    def mount(self):
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = subprocess.Popen([rpfs_bin(), "mount", self.mnt, "--foreground",
                                      "--cache-size", CACHE_SIZE], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: is_mounted(self.mnt), "rpfs mount")

    def file(self, disk):
        return os.path.join(self.mnt, "c", f"g{self.gen - 1}", "disks", f"{disk}.img")


class RpfsFormat1(Rpfs):
    """rpfs on a format-1 store (the previous release's format), beside rpfs on the default
    format, so both are measured in the same run (left out when RPFS_BENCH_FORMAT=1)."""
    name = "rpfs format 1"
    slug = "rpfs-f1"
    fmt = "1"


class RpfsZstd(Rpfs):
    """rpfs on a store made with `--compression zstd` (level 3), beside the default (LZ4): what
    the codec costs in time and saves in bytes, and the like-for-like store against qcow2's
    zstd clusters."""
    name = "rpfs zstd"
    slug = "rpfs-zstd"
    init_args = ("--compression", "zstd")


class RpfsVms(Peer):
    """rpfs with several VMs in one store (the clones section): VM and collection `c<i>` hold
    the disks vms[i - 1]; the next point is of the VM `vm` (an index into vms), so a caller
    switches VMs as it switches the other peers' `disks`."""
    name = "rpfs"
    mounts = False

    def __init__(self, work, vms):
        super().__init__(work, vms[0])
        self.store = os.path.join(self.work, "store")
        self.env = rpfs_store(self.store, {f"c{i + 1}": disks for i, disks in enumerate(vms)})
        self.vm = 0
        self.gens = [0] * len(vms)

    def ingest_command(self):
        gen = self.gens[self.vm]
        self.gens[self.vm] += 1
        return [rpfs_bin(), "point", "create", f"c{self.vm + 1}", f"g{gen}"], self.env


class Restic(Peer):
    name = "restic"

    def __init__(self, work, disks):
        super().__init__(work, disks)
        self.store = os.path.join(self.work, "repo")
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.path.join(self.work, "cache"))
        run("restic", "-r", self.store, "init", env=self.env)

    def ingest_command(self):
        return ["restic", "-r", self.store, "backup", "--quiet", *self.disks.values()], self.env

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

    def ingest_command(self):
        cmd = ["borg", "create", "--compression", "lz4", f"{self.store}::g{self.gen}", *self.disks.values()]
        self.gen += 1
        return cmd, self.env

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

    def ingest_command(self):
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
        self.gen += 1
        return ["sh", "-c", script], None

    def images(self):
        return {d: ("qcow2", self.image(d, self.gen - 1)) for d in self.disks}


class Qcow2Zstd(Qcow2):
    """A qcow2 chain whose clusters are zstd-compressed. The first image is a compressed copy;
    each later one is made as the plain chain's overlay is (an overlay over the new raw image,
    rebased onto the previous image), then converted with the previous image as its backing
    file, which copies only the overlay's own clusters, compressed."""
    name = "qcow2 zstd chain"
    slug = "qcow2-zstd"

    def ingest_command(self):
        cmds = []
        for d, src in self.disks.items():
            out_img = self.image(d, self.gen)
            convert = ["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd"]
            if self.gen == 0:
                cmds.append(convert + [src, out_img])
            else:
                prev, tmp = self.image(d, self.gen - 1), out_img + ".tmp"
                cmds.append(["qemu-img", "create", "-q", "-f", "qcow2", "-b", src, "-F", "raw", tmp])
                cmds.append(["qemu-img", "rebase", "-q", "-b", prev, "-F", "qcow2", tmp])
                cmds.append(convert + ["-B", prev, "-F", "qcow2", tmp, out_img])
                cmds.append(["rm", tmp])
        cmds.append(["sync"] + [self.image(d, self.gen) for d in self.disks])
        self.gen += 1
        return ["sh", "-c", " && ".join(" ".join(f"'{a}'" for a in c) for c in cmds)], None


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


# The peers that ingest, in the order they take their turns; --only-peer names them by the
# first word of their name (rpfs, qcow2 (both chains), restic, borg).
INGESTING = [Rpfs, RpfsZstd, Qcow2, Qcow2Zstd, Restic, Borg]
if os.environ.get("RPFS_BENCH_FORMAT", "2") != "1":
    INGESTING.insert(1, RpfsFormat1)
