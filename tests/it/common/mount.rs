//! Real rpfs mounts for tests: whether FUSE mounts can run here, a guard that mounts a store in
//! the foreground and unmounts it (and reaps the daemon) when dropped, even when the test fails,
//! and what tests do with a mount (run a command as `nobody`, list a directory).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::attacker;
use super::guards::{KillOnDrop, Mounted};
use super::sys::is_root;

/// True when FUSE mounts can run here. Without them the test is skipped with a note, unless
/// `RPFS_REQUIRE_FUSE=1` (set by CI), which makes it fail instead.
pub fn fuse_or_skip(test: &str) -> bool {
    let root = is_root();
    let fusermount = Command::new("sh")
        .arg("-c")
        .arg("command -v fusermount3")
        .output()
        .is_ok_and(|o| o.status.success());
    let ok = Path::new("/dev/fuse").exists() && (root || fusermount);
    if ok {
        return true;
    }
    if std::env::var("RPFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!(
            "{test} needs FUSE (/dev/fuse, and root or fusermount3), and RPFS_REQUIRE_FUSE=1 forbids skipping it"
        );
    }
    eprintln!("note: {test} skipped: FUSE mounts are not available here");
    false
}

/// Whether `mountpoint` is currently an rpfs mount.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mp = mountpoint.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(&*mp) && l.contains(" - fuse") && l.contains(" rpfs "))
}

/// A store mounted by `rpfs mount --foreground` in a child process. Dropping it unmounts the
/// store, gives the daemon 10 s to end by itself, then kills it and removes the mount point.
pub struct MountGuard {
    // Fields drop in this order: the mount, then the daemon, then the directory.
    _mounted: Mounted,
    pub mountpoint: PathBuf,
    /// The daemon, while the guard owns it: `m.child.take()` to wait for it in the test.
    pub child: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl MountGuard {
    /// Mounts `store` on a fresh directory with `extra` mount flags, waiting until it is ready.
    pub fn new(store: &Path, extra: &[&str]) -> MountGuard {
        Self::wrapped(store, extra, "")
    }

    /// Like [`MountGuard::new`], with a shell prelude run first in the daemon's shell (for
    /// example `ulimit -Sn 64;`).
    pub fn wrapped(store: &Path, extra: &[&str], prelude: &str) -> MountGuard {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        let mut script = format!("{prelude} exec \"$0\" mount \"$1\" --foreground");
        for (i, _) in extra.iter().enumerate() {
            script.push_str(&format!(" \"${}\"", i + 2));
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_rpfs"))
            .arg(&mountpoint)
            .args(extra)
            .env("RPFS_STORE", store)
            .env(
                "RPFS_LOG",
                std::env::var("RPFS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn rpfs mount");
        let mut guard = MountGuard {
            _mounted: Mounted::adopt(&mountpoint),
            mountpoint,
            child: KillOnDrop::with_grace(child, Duration::from_secs(10)),
            _dir: dir,
        };
        let start = Instant::now();
        while !is_mounted(&guard.mountpoint) {
            if let Some(c) = guard.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("rpfs mount exited before mounting: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }
}

/// Runs `cmd` with `sh` as the attacker (`nobody`) in the mount's root, after opening the
/// temporary directories above it (they are private, 0700).
pub fn as_nobody(m: &MountGuard, cmd: &str) -> std::process::Output {
    if let Some(parent) = m.mountpoint.parent() {
        attacker::open_up(parent);
    }
    attacker::as_nobody(&m.mountpoint, cmd)
}

/// The names in directory `dir` (of a mount, typically), sorted.
#[track_caller]
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The resident memory of process `pid` (a mount's daemon: [`MountGuard::pid`]), in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}
