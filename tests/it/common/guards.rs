//! Guards that undo what a test set up on the machine when they drop, also when the test panics:
//! [`Mounted`] for every mount (tmpfs, loop-mounted images, bind mounts, the rpfs FUSE mount
//! inside [`super::mount::MountGuard`]), all released by one routine, [`unmount`];
//! [`LoopDevice`] for loop devices; [`KillOnDrop`] for child processes and [`KillGroupOnDrop`]
//! for the process group of a script rpfs started.
//!
//! Declare a guard after whatever must outlive it (a temporary directory holding the mount
//! point): locals drop in reverse order, struct fields in declaration order.

use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sys::{require_tool, sh};

/// Whatever is mounted on a directory, unmounted by [`unmount`] when the guard drops.
#[must_use = "the mount is released when the guard drops"]
pub struct Mounted {
    target: PathBuf,
}

impl Mounted {
    /// Guards `target` for a mount the test makes itself (`rpfs mount`, a daemon it spawns).
    /// Take the guard before making the mount, so a step that fails after it is covered too.
    pub fn adopt(target: &Path) -> Mounted {
        Mounted {
            target: target.to_path_buf(),
        }
    }

    /// Runs the shell command `cmd`, which mounts something on `target`, and guards that mount.
    /// The guard exists before the command runs: a command that fails half way (a bind mount
    /// made, its remount refused) leaves nothing mounted either.
    pub fn run(target: &Path, cmd: &str) -> Mounted {
        let guard = Mounted::adopt(target);
        sh(cmd);
        guard
    }

    /// Makes an XFS filesystem with reflinks of `size` (as `truncate` reads it) in the file
    /// `image`, and loop-mounts it on `target`, which it creates; the loop device goes with
    /// the mount.
    pub fn xfs_with_reflinks(image: &Path, target: &Path, size: &str) -> Mounted {
        require_tool("mkfs.xfs");
        fs::create_dir(target).expect("mountpoint");
        sh(&format!(
            "truncate -s {size} '{0}' && mkfs.xfs -q -m reflink=1 '{0}'",
            image.display()
        ));
        Mounted::run(
            target,
            &format!("mount -o loop '{}' '{}'", image.display(), target.display()),
        )
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        unmount(&self.target);
    }
}

/// Unmounts what is mounted on `target`: `umount` (without root, `fusermount3 -u`, the only
/// way for a user's FUSE mount), and if it is still mounted because it is busy, a lazy
/// `umount -l` (`fusermount3 -u -z`) so that a failed test never leaves a mount behind.
fn unmount(target: &Path) {
    let root = nix::unistd::geteuid().is_root();
    let (plain, lazy): (&[&[&str]], &[&[&str]]) = if root {
        (&[&["umount"]], &[&["umount", "-l"]])
    } else {
        (
            &[&["umount"], &["fusermount3", "-u"]],
            &[&["umount", "-l"], &["fusermount3", "-u", "-z"]],
        )
    };
    let attempt = |argv: &[&str]| {
        let _ = Command::new(argv[0])
            .args(&argv[1..])
            .arg(target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    for argv in plain {
        if !is_mountpoint(target) {
            return;
        }
        attempt(argv);
    }
    if !is_mountpoint(target) {
        return;
    }
    eprintln!("note: {} is busy; detaching it lazily", target.display());
    for argv in lazy {
        if !is_mountpoint(target) {
            return;
        }
        attempt(argv);
    }
    if is_mountpoint(target) {
        eprintln!("warning: {} is still mounted", target.display());
    }
}

/// Whether something is mounted on `target` (per `/proc/self/mountinfo`).
fn is_mountpoint(target: &Path) -> bool {
    // mountinfo names mount points by their real path; a dead FUSE mount cannot be
    // canonicalized itself, its parent can.
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return false;
    };
    let Ok(parent) = parent.canonicalize() else {
        return false;
    };
    let want = parent.join(name);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(&unescape(mp)) == want)
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A loop device over a file, detached (`losetup -d`) when the guard drops. `.0` is the
/// device's path, `/dev/loopN`.
pub struct LoopDevice(pub String);

impl LoopDevice {
    /// Attaches `file` read-write.
    pub fn attach(file: &Path) -> LoopDevice {
        Self::losetup(file, "")
    }

    /// Attaches `file` read-only.
    pub fn attach_read_only(file: &Path) -> LoopDevice {
        Self::losetup(file, "-r ")
    }

    fn losetup(file: &Path, flags: &str) -> LoopDevice {
        require_tool("losetup");
        let dev = sh(&format!(
            "losetup --find --show {flags}'{}'",
            file.display()
        ));
        let dev = dev.trim().to_string();
        assert!(dev.starts_with("/dev/"), "losetup printed {dev:?}");
        LoopDevice(dev)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A child process, killed (SIGKILL) and reaped when the guard drops so that none outlives its
/// test. The guard is the `Option<Child>` it holds: `take()` the child back to wait for it
/// yourself, or set it to `None` once it has ended.
pub struct KillOnDrop {
    child: Option<Child>,
    grace: Duration,
}

impl KillOnDrop {
    pub fn new(child: Child) -> KillOnDrop {
        Self::with_grace(child, Duration::ZERO)
    }

    /// Lets the child run up to `grace` after the guard drops, to end by itself (a mount daemon
    /// whose mount was just released), before it is killed.
    pub fn with_grace(child: Child, grace: Duration) -> KillOnDrop {
        KillOnDrop {
            child: Some(child),
            grace,
        }
    }
}

impl Deref for KillOnDrop {
    type Target = Option<Child>;

    fn deref(&self) -> &Option<Child> {
        &self.child
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Option<Child> {
        &mut self.child
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills (SIGKILL), when the guard drops, the process group whose id a script wrote to a file:
/// rpfs runs pre-scripts in groups of their own, which outlive an rpfs that was killed. Nothing
/// happens if the file does not exist (yet, or any more).
pub struct KillGroupOnDrop {
    pgid_file: PathBuf,
}

impl KillGroupOnDrop {
    pub fn from_file(pgid_file: &Path) -> KillGroupOnDrop {
        KillGroupOnDrop {
            pgid_file: pgid_file.to_path_buf(),
        }
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Ok(pgid) = fs::read_to_string(&self.pgid_file)
            && let Ok(pgid) = pgid.trim().parse::<i32>()
            && pgid > 1
        {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}
