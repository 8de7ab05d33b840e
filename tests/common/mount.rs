//! Real mounts for tests: a guard that mounts a store in the foreground and unmounts it (and
//! reaps the daemon) when dropped, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when FUSE mounts can run here. Without them the test is skipped with a note, unless
/// `RPFS_REQUIRE_FUSE=1` (set by CI), which makes it fail instead.
pub fn fuse_or_skip(test: &str) -> bool {
    let root = super::is_root();
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
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mp = mountpoint.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(&*mp) && l.contains(" - fuse") && l.contains(" rpfs "))
}

/// A store mounted by `rpfs mount --foreground` in a child process.
pub struct MountGuard {
    pub mountpoint: PathBuf,
    pub child: Option<Child>,
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
        std::fs::create_dir(&mountpoint).expect("mkdir mountpoint");
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
            mountpoint,
            child: Some(child),
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

/// Runs `cmd` with `sh` as user and group `nobody` (65534, no supplementary groups) in the
/// mount's root, after opening the temporary directories above it (they are private, 0700).
pub fn as_nobody(m: &MountGuard, cmd: &str) -> std::process::Output {
    super::require_tool("setpriv");
    let mut dir = m.mountpoint.parent();
    while let Some(d) = dir {
        if d == Path::new("/") {
            break;
        }
        let _ = std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        dir = d.parent();
    }
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .current_dir(&m.mountpoint)
        .output()
        .expect("setpriv")
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new(env!("CARGO_BIN_EXE_rpfs"))
                .arg("umount")
                .arg(&self.mountpoint)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if is_mounted(&self.mountpoint) {
            // Still busy: detach it so the test cannot leave a mount behind.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
