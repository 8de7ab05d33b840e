//! Mounting the tree, waiting for the end of the mount, and unmounting.
//!
//! Invariants: a mount is ready (the FUSE handshake done, requests served) when [`mount`]
//! returns; [`Mounted::wait`] returns only after the mount is gone, whether it was unmounted
//! from outside (`umount`, `fusermount3 -u`, `rpfs umount`) or asked to stop; [`unmount`] also
//! clears the mount of a daemon that died.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use super::adapter::RpfsFs;
use crate::vfs::Vfs;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Let other users in (`allow_other`); the kernel then enforces the mode bits
    /// (`default_permissions`), which keep raw views of VM data private (see `vfs`).
    pub allow_other: bool,
    /// Threads serving kernel requests.
    pub threads: usize,
    /// Kernel readahead for the mount, in KiB (raised after mounting; root only).
    pub readahead_kb: u32,
}

/// A live mount.
pub struct Mounted {
    session: fuser::BackgroundSession,
    mountpoint: PathBuf,
}

/// Mounts `vfs` at `opts.mountpoint` and serves it on background threads.
pub fn mount(vfs: Arc<Vfs>, opts: &MountOptions) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("rpfs".into()),
        MountOption::Subtype("rpfs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.allow_other {
        config.mount_options.push(MountOption::DefaultPermissions);
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    raise_open_file_limit();
    let session = fuser::Session::new(RpfsFs::new(vfs), &opts.mountpoint, &config)?;
    let session = session.spawn()?;
    if let Err(e) = raise_readahead(&opts.mountpoint, opts.readahead_kb) {
        tracing::debug!("kernel readahead left as it was: {e}");
    }
    Ok(Mounted {
        session,
        mountpoint: opts.mountpoint.clone(),
    })
}

/// An image of a deep point holds a descriptor per pack it references (up to 500 per disk):
/// let the daemon use all the descriptors the system allows it.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("open file limit stays at {soft}: {e}");
    }
}

/// The kernel offers FUSE 128 KiB of readahead and fuser can only lower it; raising the mount's
/// backing device setting lets sequential reads arrive in requests of up to 1 MiB.
fn raise_readahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    let st = nix::sys::stat::stat(mountpoint).map_err(io::Error::from)?;
    let (major, minor) = (
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
    );
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    std::fs::write(&path, format!("{kb}\n"))?;
    tracing::debug!("set {path} to {kb}");
    Ok(())
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serves until the mount goes away. Each message on `stop` asks to unmount: a busy mount
    /// (open files, a request in flight) is not torn down but keeps being served, and the
    /// refusal is logged; the next message tries again.
    pub fn wait(self, stop: &crossbeam_channel::Receiver<()>) -> io::Result<()> {
        let Mounted {
            session,
            mountpoint,
        } = self;
        loop {
            if session.guard.is_finished() {
                // The kernel ended the session (the mount is gone). Dropping the session would
                // make fuser unmount the mount point once more, and so whatever was mounted
                // there since: forget it instead. The process is about to exit.
                std::mem::forget(session);
                return Ok(());
            }
            match stop.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => match unmount(&mountpoint) {
                    Ok(()) => tracing::info!("unmounting {}", mountpoint.display()),
                    Err(e) => tracing::warn!("still serving: {e}"),
                },
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// A mount listed in /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes the octal escapes mountinfo uses for spaces and the like.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rpfs mount at `mountpoint`, if there is one.
pub fn find_mount(mountpoint: &Path) -> io::Result<Option<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Symlinks and `..` resolve to the directory the kernel mounted on.
    let want = std::fs::canonicalize(mountpoint).or_else(|_| std::path::absolute(mountpoint))?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let theirs: Vec<&str> = right.split(' ').collect();
        let (Some(mp), Some(fstype), Some(source)) = (fields.get(4), theirs.first(), theirs.get(1))
        else {
            continue;
        };
        let entry = MountEntry {
            mountpoint: PathBuf::from(unescape(mp)),
            fstype: fstype.to_string(),
            source: unescape(source),
        };
        if entry.mountpoint == want && entry.fstype.starts_with("fuse") && entry.source == "rpfs" {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Unmounts the rpfs mount at `mountpoint`, also when its daemon died.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    if find_mount(mountpoint)?.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not an rpfs mount", mountpoint.display()),
        ));
    }
    if nix::unistd::geteuid().is_root() {
        return nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()).map_err(|e| {
            if e == nix::errno::Errno::EBUSY {
                io::Error::other(format!(
                    "{} is busy: a process has a file open or its working directory inside it",
                    mountpoint.display()
                ))
            } else {
                io::Error::from(e)
            }
        });
    }
    // Without root, only fusermount may unmount a FUSE mount.
    for tool in ["fusermount3", "fusermount"] {
        match Command::new(tool).arg("-u").arg(mountpoint).status() {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => return Err(io::Error::other(format!("{tool} -u failed ({s})"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "unmounting as a non-root user needs fusermount3 (Debian package fuse3)",
    ))
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
