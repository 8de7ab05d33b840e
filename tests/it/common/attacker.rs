//! The hostile local user of the security tests: an unprivileged account (`nobody`, uid and gid
//! 65534, no supplementary groups) on the same host as root's rpfs, which runs with the default
//! umask 022.
//!
//! The temporary directories the tests work in are private (tempfile makes them 0700), which
//! would hide everything from the attacker whatever rpfs does. [`open_up`] makes a directory and
//! those above it 0755, as `/var/lib` or a home directory are, so that what the attacker can
//! reach is decided by the modes rpfs gives its own files and nothing else.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use super::sys::require_tool;

/// The attacker's uid and gid.
pub const NOBODY: u32 = 65534;

/// Sets this test process's umask to 022, root's default, which every rpfs child inherits.
/// (The umask is per process: every test of this binary shares it, and 022 is what they all
/// assume anyway.)
pub fn umask_022() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    });
}

/// Makes `dir` and every directory above it listable and traversable by everyone (adds
/// `go+rx`), as the directories above a real store, image or restore target are. Only adds
/// bits: `/tmp` keeps its 1777 (taking its sticky bit or write bits away would break every
/// other user of the machine).
pub fn open_up(dir: &Path) {
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == Path::new("/") || p.as_os_str().is_empty() {
            break;
        }
        let mode = fs::metadata(p)
            .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
            .permissions()
            .mode();
        if mode & 0o755 != 0o755 {
            fs::set_permissions(p, fs::Permissions::from_mode((mode & 0o7777) | 0o755))
                .unwrap_or_else(|e| panic!("chmod go+rx {}: {e}", p.display()));
        }
        d = p.parent();
    }
}

/// Runs `cmd` with `sh -c` as the attacker, in `cwd`.
pub fn as_nobody(cwd: &Path, cmd: &str) -> Output {
    require_tool("setpriv");
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .current_dir(cwd)
        .output()
        .expect("setpriv")
}

/// The rpfs binary under test (for the attacker's own runs of it).
pub fn rpfs_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("rpfs")
}

/// Runs `rpfs --store STORE ARGS…` as the attacker.
pub fn rpfs_as_nobody(store: &Path, args: &[&str]) -> Output {
    let mut cmd = format!(
        "RPFS_LOG= exec {} --store '{}'",
        rpfs_bin().display(),
        store.display()
    );
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    as_nobody(Path::new("/"), &cmd)
}

/// The mode bits (permissions only) of `path`, not following a final symbolic link.
pub fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file and directory under `root` (itself included) whose mode lets someone other than
/// its owner read, write or search it, as `path mode` lines; empty when all are private.
pub fn exposed_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = mode_of(&p);
        if m & 0o077 != 0 {
            out.push(format!("{} {m:04o}", p.display()));
        }
        if fs::symlink_metadata(&p).is_ok_and(|md| md.is_dir()) {
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out.sort();
    out
}
