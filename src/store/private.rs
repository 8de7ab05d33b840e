//! A local store is private to the user who owns it: it holds whole VM disks and captured
//! configurations (which often hold passwords), so nobody else may read, lock or change any of
//! it.
//!
//! Invariants:
//! - Everything rpfs creates in a store is private from its first instant, whatever the umask:
//!   directories are created [`DIR_MODE`] (0700) and files [`FILE_MODE`] (0600) by the call that
//!   creates them (never opened up, then narrowed).
//! - A store is used only by the user who owns its directory ([`check_owner`]): another user
//!   could have made the directory beforehand, and would then control its records (scripts run
//!   as the caller), its locks and its data.
//! - A store made before stores were private (a 0755 directory of 0644 files) is tightened once,
//!   by its owner's first open ([`make_private`]): every directory 0700, every file 0600, the
//!   store directory last, so an interrupted pass is redone by the next open. A private store
//!   directory is the mark of a private store: no other user can reach anything below it, so
//!   checking it costs one `stat`.
//! - Tightening never follows a symbolic link (each entry is opened with O_NOFOLLOW and changed
//!   through that descriptor) and never opens anything but regular files and directories.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory of a store, the store directory included.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file of a store.
pub const FILE_MODE: u32 = 0o600;
/// Mode bits that give someone other than the owner access.
const OTHERS: u32 = 0o077;

/// What [`make_private`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tightened {
    /// Directories made 0700, the store directory included.
    pub dirs: u64,
    /// Files made 0600.
    pub files: u64,
    /// Why the store could not be made private (a read-only store), when it could not: it is
    /// still open to others, and the next open tries again.
    pub unfinished: Option<String>,
}

impl Tightened {
    /// True when something was changed.
    pub fn any(&self) -> bool {
        self.dirs + self.files > 0
    }
}

/// A user, for messages: "uid 1000 (alice)".
fn user(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Refuses the store directory `root` unless the caller (its effective user) owns it.
pub fn check_owner(root: &Path) -> io::Result<()> {
    let meta = fs::metadata(root)?;
    let caller = nix::unistd::geteuid().as_raw();
    if meta.uid() == caller {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "store {} is owned by {}, not by {}, who runs rpfs: rpfs uses only stores its own \
             user owns, since whoever owns the directory controls what is in it; run rpfs as \
             that user, or give the store to this one (chown -R)",
            root.display(),
            user(meta.uid()),
            user(caller)
        ),
    ))
}

/// Makes the store at `root` private to its owner, who must be the caller (else an error):
/// every directory 0700, every file 0600, the store directory last. Does nothing (one `stat`)
/// when the store directory is private already. Symbolic links and anything but files and
/// directories are left as they are (the store never follows nor opens them). A store that
/// cannot be changed (read-only) is reported in [`Tightened::unfinished`], not as an error.
pub fn make_private(root: &Path) -> io::Result<Tightened> {
    check_owner(root)?;
    let mut done = Tightened::default();
    if fs::metadata(root)?.mode() & OTHERS == 0 {
        return Ok(done);
    }
    if let Err(e) = tighten_all(root, &mut done) {
        done.unfinished = Some(e.to_string());
    }
    Ok(done)
}

fn tighten_all(root: &Path, done: &mut Tightened) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some((file, meta)) = open_entry(&path)? else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
                if tighten(&file, &meta, DIR_MODE)? {
                    done.dirs += 1;
                }
            } else if tighten(&file, &meta, FILE_MODE)? {
                done.files += 1;
            }
        }
    }
    // Last: a private store directory is what says the pass is complete.
    let (file, meta) = open_entry(root)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a directory", root.display()),
        )
    })?;
    if tighten(&file, &meta, DIR_MODE)? {
        done.dirs += 1;
    }
    Ok(())
}

/// Opens a regular file or directory without following a link (and without blocking on a FIFO,
/// which is then left alone); `None` for anything else, or an entry gone meanwhile.
fn open_entry(path: &Path) -> io::Result<Option<(File, fs::Metadata)>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        // A symbolic link (ELOOP), or an entry removed since it was listed.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOENT)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.is_dir() || meta.is_file() {
        Ok(Some((file, meta)))
    } else {
        Ok(None)
    }
}

/// Sets `mode` on `file` if others have any access to it; says whether it did.
fn tighten(file: &File, meta: &fs::Metadata, mode: u32) -> io::Result<bool> {
    if meta.mode() & OTHERS == 0 {
        return Ok(false);
    }
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn an_open_store_is_tightened_once_and_links_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        fs::create_dir_all(root.join("vms/a")).expect("mkdir");
        fs::write(root.join("vms/a/x.pack"), b"x").expect("write");
        fs::write(dir.path().join("outside"), b"o").expect("write");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("vms/link"))
            .expect("symlink");
        for p in ["", "vms", "vms/a"] {
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        fs::set_permissions(root.join("vms/a/x.pack"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        fs::set_permissions(
            dir.path().join("outside"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");

        let done = make_private(&root).expect("make private");
        assert_eq!((done.dirs, done.files, done.unfinished), (3, 1, None));
        for p in ["", "vms", "vms/a"] {
            assert_eq!(mode(&root.join(p)), DIR_MODE, "{p}");
        }
        assert_eq!(mode(&root.join("vms/a/x.pack")), FILE_MODE);
        assert_eq!(mode(&dir.path().join("outside")), 0o644, "followed a link");
        assert!(!make_private(&root).expect("again").any());
    }
}
