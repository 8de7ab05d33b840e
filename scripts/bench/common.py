"""What every part of the bench shares: sizes, the repository, where the rpfs binaries are, and
running commands (the subprocess plumbing, logging, waiting for mounts)."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BIN_DIR = os.path.join(ROOT, "target", "release")
MIB = 1 << 20
GIB = 1 << 30
CACHE_SIZE = "256M"

# Where the rpfs binaries are: `--bin-dir`, set once by the driver before anything runs. Read it
# through rpfs_bin() / read_passes_bin(), at call time.
_bin_dir = DEFAULT_BIN_DIR


def set_bin_dir(path):
    global _bin_dir
    _bin_dir = os.path.abspath(path)


def bin_dir():
    return _bin_dir


def rpfs_bin():
    return os.path.join(_bin_dir, "rpfs")


def read_passes_bin():
    return os.path.join(_bin_dir, "examples", "read_passes")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*args, env=None, quiet=True, check=True):
    return subprocess.run(args, env=env, check=check,
                          stdout=subprocess.DEVNULL if quiet else None)


def out(*args, env=None):
    return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout


def du(path):
    return int(out("du", "-sb", path).split()[0])


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


def wait_for(cond, what, timeout=60):
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
