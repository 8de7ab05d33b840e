"""The workloads: the disk images the sections ingest and read, and the writes that age them
between points. Everything random comes from the `rng` the caller seeds, so a run's images are
the same from one run to the next (the real files copied from /usr depend on the machine)."""

import os
import shutil

from .common import MIB, run


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


def mkfs_ext4(image, size, tree, *options):
    """An ext4 filesystem of `size` bytes in `image`, holding the files of `tree`."""
    run("mkfs.ext4", "-q", "-F", "-b", "4096", *options, "-d", tree, image, f"{size // 1024}k")


def make_os_disk(image, size, tree, *mkfs_options):
    """An ext4 disk ~35% full of real files, staged in `tree` (removed afterwards)."""
    real_files(tree, int(size * 0.35))
    mkfs_ext4(image, size, tree, *mkfs_options)
    shutil.rmtree(tree)


def make_data_disk(path, size, rng):
    """Half random data, half holes, in 1 MiB extents."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, MIB):
            if rng.random() < 0.5:
                f.seek(off)
                f.write(rng.randbytes(min(MIB, size - off)))


PAGE = 4096


def scribble(path, size, fraction, rng):
    """Random 64 KiB writes at 4 KiB-aligned offsets over `fraction` of the disk; returns how
    many distinct 4 KiB pages they changed (what truly changed: the writes are random bytes, so
    every page written differs from what it held)."""
    writes = int(size * fraction / (64 * 1024))
    pages = set()
    with open(path, "r+b") as f:
        for _ in range(writes):
            first = rng.randrange(0, (size - 64 * 1024) // PAGE)
            f.seek(first * PAGE)
            f.write(rng.randbytes(64 * 1024))
            pages.update(range(first, first + 64 * 1024 // PAGE))
        f.flush()
        os.fsync(f.fileno())
    return len(pages)


def make_chain_disk(path, size, block, rng):
    """The chain's disk: 60% random blocks, the others a repeated text line."""
    with open(path, "wb") as f:
        for _ in range(size // block):
            f.write(rng.randbytes(block) if rng.random() < 0.6 else
                    ((b"rpfs benchmark text line %012d\n" % rng.randrange(10**12)) * 2000)[:block])


def change_blocks(f, size, block, count, rng):
    """Overwrites `count` random `block`-aligned blocks of the open disk `f` with random data."""
    for _ in range(count):
        f.seek(rng.randrange(size // block) * block)
        f.write(rng.randbytes(block))
    f.flush()


def make_files_tree(tree, size, rng, entries=10000):
    """The guest files of the file-level restore: large.bin, `size` bytes of random data, and
    many/, a directory of `entries` empty files."""
    os.makedirs(os.path.join(tree, "many"))
    with open(os.path.join(tree, "large.bin"), "wb") as f:
        for _ in range(size // (4 * MIB)):
            f.write(rng.randbytes(4 * MIB))
    for i in range(entries):
        open(os.path.join(tree, "many", f"f{i:05}"), "w").close()
