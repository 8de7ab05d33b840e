//! Restoring a point to a directory: each disk as a sparse raw image, the captured configuration
//! verbatim, and whatever documents the caller adds (the CLI adds the point's resource JSON).
//!
//! The target directory may be one another user can write (a shared `/srv/restore`, a 1777
//! scratch directory), and root runs this; so:
//!
//! - **Judged before anything is written.** The disks exist; no two files of the restore share
//!   a name (compared ignoring case, as a case-folding target would: two disks `os` and `OS`, or
//!   a crafted record naming one disk twice, are refused naming both); no final name exists in
//!   the target (any entry counts, a dangling symbolic link too).
//! - **Reached through descriptors.** `to` is walked component by component from `/` (or the
//!   working directory) with `O_NOFOLLOW`; missing directories are created with `mkdirat`, born
//!   at most 0700 and then given [`dir_mode`]. `to` itself must not be a symbolic link. An
//!   intermediate symbolic link is followed only when root or the caller owns it and its
//!   directory, and nobody else can replace it (the directory is not writable by group or
//!   others, or is sticky): `/var/run → /run` is followed, a link another user planted in
//!   `/tmp` or in their home is refused, naming it. Every later call is relative to the target's
//!   descriptor, so renaming or swapping a path component during the restore changes nothing.
//! - **Private from the first instant.** Each file is created 0600 without a name
//!   (`O_TMPFILE`), or, where the filesystem cannot, under a temporary name
//!   ([`TEMP_PREFIX`]`…`) with `O_CREAT|O_EXCL|O_NOFOLLOW`, then locked (`flock`) for as long as
//!   this restore lives. Its final mode (0600 unless the request asks otherwise) is set with
//!   `fchmod` on the descriptor before it is published; whatever the umask.
//! - **Verified, then published without replacing.** Images are written sparsely (holes and
//!   all-zero blocks are not written), fsynced, re-read through the descriptor and compared block
//!   by block with the hashes of what was meant to be written. Only when every file is written
//!   are they published, in order, by `linkat` of the descriptor (`renameat2(RENAME_NOREPLACE)`
//!   of the temporary name where the filesystem has no hard links): neither ever replaces an
//!   entry, so a file or link planted at a final name during the restore stays as it is, and the
//!   restore fails naming it. A failed restore removes what it published (each checked to still
//!   be its own file) and its temporaries: it leaves no file behind (directories it created
//!   stay, empty).
//! - **A killed restore stops no other.** Nameless files vanish with the process. Named
//!   temporaries of a restore that no longer runs (regular files the caller owns, named
//!   [`TEMP_PREFIX`]`…`, whose lock nobody holds) are removed by the next restore into the same
//!   directory; those of a running one are locked and left alone.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, Flock, FlockArg, OFlag, RenameFlags, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, geteuid, linkat, unlinkat};
use rayon::prelude::*;

use super::error::{Error, Result};
use super::progress::Progress;
use super::{DiskImage, Engine};
use crate::store::block;
use crate::store::corrupt::{Corrupt, CorruptKind};
use crate::store::layout;
use crate::store::records::safe_name;

/// Blocks read (and decoded on all cores) per batch while restoring.
const BATCH_BLOCKS: u64 = 64;

/// Mode of restored files unless the request asks otherwise: the owner's only.
pub const DEFAULT_MODE: u32 = 0o600;

/// Start of the names of temporaries, on filesystems that cannot create a nameless file.
pub const TEMP_PREFIX: &str = ".rpfs-restore-";

/// Symbolic links followed while reaching the target, at most (as the kernel's `ELOOP`).
const MAX_LINKS: usize = 40;

/// What to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub collection: String,
    pub name: String,
    pub to: PathBuf,
    /// Only this disk; `None` for every disk in the point.
    pub disk: Option<String>,
    /// Files written beside the images and the configuration: (file name, content).
    pub documents: Vec<(String, Vec<u8>)>,
    /// Permission bits of every file written ([`DEFAULT_MODE`] unless asked otherwise); the
    /// directories the restore creates get [`dir_mode`] of it.
    pub mode: u32,
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    pub files: Vec<PathBuf>,
    /// Bytes of disk data written (holes excluded).
    pub bytes_written: u64,
    /// Total size of the restored images.
    pub image_bytes: u64,
    pub elapsed: Duration,
    /// Temporaries of an earlier, killed restore that were removed from the target.
    pub leftovers_removed: Vec<String>,
}

/// The file name a disk is restored to.
pub fn image_file_name(disk: &str) -> String {
    format!("{disk}.img")
}

/// File name of the restored configuration.
pub const CONFIG_FILE: &str = "vm-config";

/// Parses a mode given in octal (`0640`, `640`, `0o640`): permission bits only, at most 0777.
pub fn parse_mode(text: &str) -> Result<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let refuse = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "invalid mode {text:?}: {why}"
        )))
    };
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return refuse("give permission bits in octal, e.g. 0600 or 0640");
    }
    let mode = u32::from_str_radix(digits, 8)
        .or_else(|_| refuse("give permission bits in octal, e.g. 0600 or 0640"))?;
    if mode & !0o777 != 0 {
        return refuse(
            "setuid, setgid and sticky bits are refused: give permission bits only (at most 0777)",
        );
    }
    Ok(mode)
}

/// Mode of the directories a restore creates for files of `mode`: the owner's always, and
/// read and search for whoever may read the files (0600 → 0700, 0640 → 0750); never write.
pub fn dir_mode(mode: u32) -> u32 {
    let read = mode & 0o044;
    0o700 | read | (read >> 2)
}

fn io_error(context: String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::Io {
        context,
        source: std::io::Error::from(e),
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        context: format!("writing {}", path.display()),
        source: e,
    }
}

impl Engine {
    /// Restores a point into `req.to`.
    pub fn restore(&self, req: &RestoreRequest, progress: &dyn Progress) -> Result<RestoreOutcome> {
        let started = Instant::now();
        if req.mode & !0o777 != 0 {
            return Err(Error::InvalidArgument(format!(
                "invalid mode {:o}: permission bits only (at most 0777)",
                req.mode
            )));
        }
        let cat = self.catalog()?;
        let (coll, point) = cat.point(&req.collection, &req.name)?;
        let disks: Vec<&str> = match &req.disk {
            Some(d) => {
                if !point.disks.iter().any(|x| &x.name == d) {
                    let why = if point.excluded.iter().any(|x| &x.name == d) {
                        "was excluded from this point"
                    } else {
                        "is not a disk of this point"
                    };
                    return Err(Error::NotFound {
                        what: "disk",
                        name: d.clone(),
                        hint: format!("; it {why}"),
                    });
                }
                vec![d.as_str()]
            }
            None => point.disks.iter().map(|d| d.name.as_str()).collect(),
        };
        let names = file_names(&disks, &req.documents).map_err(|c| match c {
            Collision::SameName { first, second } => Error::Corrupt(Corrupt::new(
                &layout::point(point.vm_id, point.id),
                CorruptKind::Entry,
                format!(
                    "restore point {}/{}: {first} and {second} would both be written to one file; \
                     rpfs restore never writes two disks to one file (run `rpfs check`)",
                    coll.name, point.name
                ),
            )),
            Collision::Case { first, second } => Error::Unsupported(format!(
                "restore point {}/{}: {first} and {second} would be written to one file on a \
                 filesystem that ignores case; restore them one at a time with --disk, into \
                 different directories",
                coll.name, point.name
            )),
            Collision::Unsafe(name) => Error::InvalidArgument(format!(
                "{name:?} cannot be restored: it is not a plain file name"
            )),
        })?;
        let images: Vec<DiskImage> = disks
            .iter()
            .map(|d| self.open_disk(&coll.name, point, d))
            .collect::<Result<_>>()?;
        let config = self.point_config(point)?;

        let target = Target::open(&req.to, dir_mode(req.mode))?;
        let leftovers_removed = target.remove_leftovers();
        if let Some(existing) = names.iter().find(|n| target.entry_exists(n)) {
            return Err(Error::Exists {
                what: "file",
                name: format!(
                    "{} (rpfs restore never overwrites)",
                    req.to.join(existing).display()
                ),
            });
        }

        let total: u64 = images.iter().map(|i| i.size()).sum();
        progress.begin(&format!("{}/{}", coll.name, point.name), total);
        let mut staged = Vec::with_capacity(names.len());
        let mut bytes_written = 0;
        for (image, name) in images.iter().zip(&names) {
            let path = req.to.join(name);
            let file = target.stage(name)?;
            bytes_written += write_and_verify(image, &file.file, &path, req.mode, progress)?;
            staged.push(file);
        }
        progress.end();
        let files = [(CONFIG_FILE, &config)]
            .into_iter()
            .chain(req.documents.iter().map(|(n, b)| (n.as_str(), b)));
        for (name, bytes) in files {
            let path = req.to.join(name);
            let mut file = target.stage(name)?;
            file.file.write_all(bytes).map_err(write_error(&path))?;
            set_mode(&file.file, req.mode, &path)?;
            file.file.sync_all().map_err(write_error(&path))?;
            staged.push(file);
        }
        target.publish_all(staged)?;
        Ok(RestoreOutcome {
            files: names.iter().map(|n| req.to.join(n)).collect(),
            bytes_written,
            image_bytes: total,
            elapsed: started.elapsed(),
            leftovers_removed,
        })
    }
}

/// Why the files of a restore cannot all be written.
#[derive(Debug, PartialEq, Eq)]
enum Collision {
    /// Two files of one name (a record naming a disk twice).
    SameName { first: String, second: String },
    /// Two names that differ only in case.
    Case { first: String, second: String },
    /// A name that is not one path component.
    Unsafe(String),
}

/// The final names of a restore's files, in the order they are written (images, then the
/// configuration, then the documents), refused when two would be one file.
fn file_names(
    disks: &[&str],
    documents: &[(String, Vec<u8>)],
) -> std::result::Result<Vec<String>, Collision> {
    let files: Vec<(String, String)> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| (image_file_name(d), format!("disk '{d}' (disk {})", i + 1)))
        .chain([(CONFIG_FILE.to_string(), "the configuration".to_string())])
        .chain(
            documents
                .iter()
                .map(|(n, _)| (n.clone(), format!("document {n}"))),
        )
        .collect();
    for (i, (name, what)) in files.iter().enumerate() {
        if !safe_name(name) || name.starts_with(TEMP_PREFIX) {
            return Err(Collision::Unsafe(name.clone()));
        }
        if let Some((other, first)) = files[..i]
            .iter()
            .find(|(o, _)| o.to_lowercase() == name.to_lowercase())
        {
            let (first, second) = (first.clone(), format!("{what}, to {name}"));
            return Err(if other == name {
                Collision::SameName { first, second }
            } else {
                Collision::Case { first, second }
            });
        }
    }
    Ok(files.into_iter().map(|(n, _)| n).collect())
}

/// A restore's target directory, held open.
struct Target {
    dir: OwnedFd,
    /// As the caller named it, for messages.
    path: PathBuf,
    uid: u32,
}

/// A file written but not yet published. Dropping it removes its temporary name (published or
/// not, failed or not), before its lock is released.
struct Staged<'t> {
    dir: &'t OwnedFd,
    file: File,
    /// Its temporary name, where the filesystem could not create it without one.
    temp: Option<OsString>,
    /// Held while this restore lives: tells a later one that the temporary is not a leftover.
    _lock: Option<Flock<File>>,
    name: String,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            // Best effort: after a rename the name is gone already.
            let _ = unlinkat(self.dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Whether `a` and `b` are the same file.
fn same_file(a: &FileStat, b: &FileStat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

impl Target {
    /// Opens `to`, creating what is missing (see the module's invariants).
    fn open(to: &Path, new_dir_mode: u32) -> Result<Target> {
        let uid = geteuid().as_raw();
        let refuse = |why: String| Error::InvalidArgument(format!("--to {}: {why}", to.display()));
        let o_path = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let start = if to.is_absolute() { "/" } else { "." };
        let mut dir = openat(AT_FDCWD, start, o_path, Mode::empty())
            .map_err(io_error(format!("opening {start}")))?;
        // Components still to walk, nearest first; where the walk is, for messages.
        let mut rest: Vec<OsString> = components(to);
        rest.reverse();
        let mut here = PathBuf::from(start);
        let mut links = 0;
        while let Some(name) = rest.pop() {
            let last = rest.is_empty();
            let shown = here.join(&name);
            if name == ".." {
                dir = openat(&dir, "..", o_path, Mode::empty())
                    .map_err(io_error(format!("opening {}", shown.display())))?;
                here = shown;
                continue;
            }
            match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) => {
                    match mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                        Ok(()) => {
                            let created = openat(
                                &dir,
                                name.as_os_str(),
                                OFlag::O_RDONLY
                                    | OFlag::O_DIRECTORY
                                    | OFlag::O_NOFOLLOW
                                    | OFlag::O_CLOEXEC,
                                Mode::empty(),
                            )
                            .map_err(io_error(format!("opening {}", shown.display())))?;
                            fchmod(&created, Mode::from_bits_truncate(new_dir_mode)).map_err(
                                io_error(format!("setting the mode of {}", shown.display())),
                            )?;
                            dir = created;
                            here = shown;
                            continue;
                        }
                        // Someone made it meanwhile: look again.
                        Err(Errno::EEXIST) => {
                            rest.push(name);
                            continue;
                        }
                        Err(e) => {
                            return Err(io_error(format!("creating {}", shown.display()))(e));
                        }
                    }
                }
                Err(e) => return Err(io_error(format!("looking up {}", shown.display()))(e)),
                Ok(st) if file_type(&st) == SFlag::S_IFLNK => {
                    let target = readlinkat(&dir, name.as_os_str()).unwrap_or_default();
                    if last {
                        return Err(refuse(format!(
                            "is a symbolic link (to {}); give the directory itself",
                            Path::new(&target).display()
                        )));
                    }
                    let parent =
                        fstat(&dir).map_err(io_error(format!("looking up {}", here.display())))?;
                    if !trusted_link(&parent, &st, uid) {
                        return Err(refuse(format!(
                            "{} is a symbolic link (owned by uid {}, in a directory owned by \
                             uid {}, mode {:04o}) that another user made or can replace; \
                             rpfs follows only links that root or you own, in directories \
                             only root or you can change: give a path without it",
                            shown.display(),
                            st.st_uid,
                            parent.st_uid,
                            parent.st_mode & 0o7777
                        )));
                    }
                    links += 1;
                    if links > MAX_LINKS || target.is_empty() {
                        return Err(refuse(format!(
                            "too many symbolic links, or an empty one, at {}",
                            shown.display()
                        )));
                    }
                    let target = PathBuf::from(target);
                    let mut more = components(&target);
                    more.reverse();
                    rest.extend(more);
                    if target.is_absolute() {
                        dir = openat(AT_FDCWD, "/", o_path, Mode::empty())
                            .map_err(io_error("opening /".to_string()))?;
                        here = PathBuf::from("/");
                    }
                    continue;
                }
                Ok(st) if file_type(&st) != SFlag::S_IFDIR => {
                    return Err(refuse(format!("{} is not a directory", shown.display())));
                }
                Ok(_) => {}
            }
            // O_NOFOLLOW: a directory swapped for a link since the look-up is refused, not
            // followed.
            dir = openat(
                &dir,
                name.as_os_str(),
                o_path | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    refuse(format!("{} changed while it was opened", shown.display()))
                }
                e => io_error(format!("opening {}", shown.display()))(e),
            })?;
            here = shown;
        }
        let dir = openat(
            &dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_error(format!("opening {}", to.display())))?;
        Ok(Target {
            dir,
            path: to.to_path_buf(),
            uid,
        })
    }

    fn shown(&self, name: &OsStr) -> String {
        self.path.join(name).display().to_string()
    }

    /// Whether anything (a dangling link too) has `name` in the target.
    fn entry_exists(&self, name: &str) -> bool {
        fstatat(&self.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) != Err(Errno::ENOENT)
    }

    /// Creates a file to be published as `name`, 0600, nameless where the filesystem allows.
    fn stage(&self, name: &str) -> Result<Staged<'_>> {
        let private = Mode::from_bits_truncate(0o600);
        let create = |e| io_error(format!("creating a file for {}", self.shown(name.as_ref())))(e);
        match openat(
            &self.dir,
            ".",
            OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            private,
        ) {
            Ok(fd) => Ok(Staged {
                dir: &self.dir,
                file: File::from(fd),
                temp: None,
                _lock: None,
                name: name.to_string(),
            }),
            // A filesystem (or kernel) without nameless files.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => self.stage_named(name),
            Err(e) => Err(create(e)),
        }
    }

    /// Creates a file to be published as `name` under a temporary name, 0600, locked.
    fn stage_named(&self, name: &str) -> Result<Staged<'_>> {
        let private = Mode::from_bits_truncate(0o600);
        let create = |e| io_error(format!("creating a file for {}", self.shown(name.as_ref())))(e);
        for _ in 0..8 {
            let temp = OsString::from(format!(
                "{TEMP_PREFIX}{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            let fd = match openat(
                &self.dir,
                temp.as_os_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_RDWR
                    | OFlag::O_CLOEXEC,
                private,
            ) {
                Ok(fd) => File::from(fd),
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(create(e)),
            };
            let lock = fd.try_clone().map_err(|e| Error::Io {
                context: format!("creating a file for {}", self.shown(name.as_ref())),
                source: e,
            })?;
            // Blocking: another restore's clean-up holds it a moment only.
            let lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| create(e))?;
            // That clean-up may have taken it for a leftover before the lock: then try again.
            let ours = fstat(&fd).map_err(create)?;
            match fstatat(&self.dir, temp.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if same_file(&st, &ours) => {
                    return Ok(Staged {
                        dir: &self.dir,
                        file: fd,
                        temp: Some(temp),
                        _lock: Some(lock),
                        name: name.to_string(),
                    });
                }
                _ => continue,
            }
        }
        Err(create(Errno::EEXIST))
    }

    /// Removes the temporaries of restores that no longer run; returns their names. Best
    /// effort: a leftover that cannot be judged is left alone.
    fn remove_leftovers(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd())) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                continue;
            }
            let Ok(st) = fstatat(&self.dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if file_type(&st) != SFlag::S_IFREG || st.st_uid != self.uid {
                continue;
            }
            let Ok(fd) = openat(
                &self.dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            // Locked: its restore still runs.
            let Ok(lock) = Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let still = fstat(lock.as_fd()).is_ok_and(|held| same_file(&held, &st))
                && fstatat(&self.dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|now| same_file(&now, &st));
            if still && unlinkat(&self.dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir).is_ok() {
                removed.push(name.to_string_lossy().into_owned());
            }
        }
        removed
    }

    /// Publishes every staged file under its final name, in order; on a failure removes those
    /// already published (when still this restore's) and every temporary.
    fn publish_all(&self, staged: Vec<Staged>) -> Result<()> {
        let mut published: Vec<(String, FileStat)> = Vec::new();
        let mut failure = None;
        for s in &staged {
            match self.publish(s) {
                Ok(st) => published.push((s.name.clone(), st)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(staged);
        if failure.is_some() {
            for (name, st) in &published {
                let ours = fstatat(&self.dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|now| same_file(&now, st));
                if ours {
                    let _ = unlinkat(&self.dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
                }
            }
        }
        let synced = File::from(self.dir.try_clone().map_err(write_error(&self.path))?)
            .sync_all()
            .map_err(write_error(&self.path));
        match failure {
            Some(e) => Err(e),
            None => synced,
        }
    }

    /// Gives `s` its final name, never replacing an entry. Returns the file's identity.
    fn publish(&self, s: &Staged) -> Result<FileStat> {
        let shown = self.shown(s.name.as_ref());
        let planted = || Error::Exists {
            what: "file",
            name: format!(
                "{shown} (it appeared during the restore; rpfs restore never overwrites)"
            ),
        };
        let fail = |e| io_error(format!("publishing {shown}"))(e);
        let ours = fstat(&s.file).map_err(fail)?;
        // By descriptor: what is linked is this file, whatever the temporary name holds now.
        let linked = match linkat(
            &s.file,
            "",
            &self.dir,
            s.name.as_str(),
            AtFlags::AT_EMPTY_PATH,
        ) {
            // Without CAP_DAC_READ_SEARCH, through /proc.
            Err(Errno::ENOENT) => linkat(
                AT_FDCWD,
                format!("/proc/self/fd/{}", s.file.as_raw_fd()).as_str(),
                &self.dir,
                s.name.as_str(),
                AtFlags::AT_SYMLINK_FOLLOW,
            ),
            r => r,
        };
        match linked {
            Ok(()) => return Ok(ours),
            Err(Errno::EEXIST) => return Err(planted()),
            // No hard links here: rename the temporary, never replacing.
            Err(Errno::EPERM | Errno::EOPNOTSUPP | Errno::EMLINK | Errno::ENOENT)
                if s.temp.is_some() => {}
            Err(e) => return Err(fail(e)),
        }
        let Some(temp) = &s.temp else {
            return Err(fail(Errno::EOPNOTSUPP));
        };
        let still = fstatat(&self.dir, temp.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|now| same_file(&now, &ours));
        if !still {
            return Err(Error::Io {
                context: format!("publishing {shown}"),
                source: std::io::Error::other(format!(
                    "its temporary {} was replaced during the restore",
                    self.shown(temp)
                )),
            });
        }
        match nix::fcntl::renameat2(
            &self.dir,
            temp.as_os_str(),
            &self.dir,
            s.name.as_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(ours),
            Err(Errno::EEXIST) => Err(planted()),
            Err(Errno::EINVAL) => Err(Error::Unsupported(format!(
                "cannot publish {shown}: its filesystem has neither hard links nor renames that \
                 never replace, and rpfs restore never overwrites; restore elsewhere"
            ))),
            Err(e) => Err(fail(e)),
        }
    }
}

/// Whether a symbolic link met on the way to the target may be followed: only root or the
/// caller made it, and only they can replace it.
fn trusted_link(parent: &FileStat, link: &FileStat, uid: u32) -> bool {
    let trusted = |owner: u32| owner == 0 || owner == uid;
    let others_write = parent.st_mode & 0o022 != 0;
    let sticky = parent.st_mode & 0o1000 != 0;
    trusted(link.st_uid) && trusted(parent.st_uid) && (!others_write || sticky)
}

/// The components of `path` to walk, `.` left out.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Gives `file` the permission bits `mode`. A filesystem that cannot store modes (FAT) is
/// accepted only when what it shows grants nothing beyond `mode`.
fn set_mode(file: &File, mode: u32, path: &Path) -> Result<()> {
    let Err(e) = fchmod(file, Mode::from_bits_truncate(mode)) else {
        return Ok(());
    };
    match fstat(file) {
        Ok(st) if st.st_mode & 0o7777 & !mode == 0 => Ok(()),
        _ => Err(Error::Io {
            context: format!("setting mode {mode:04o} on {}", path.display()),
            source: std::io::Error::from(e),
        }),
    }
}

/// Writes one image sparsely into `file`, gives it `mode` and verifies it through the
/// descriptor. Returns data bytes written.
fn write_and_verify(
    image: &DiskImage,
    file: &File,
    path: &Path,
    mode: u32,
    progress: &dyn Progress,
) -> Result<u64> {
    let size = image.size();
    let bs = u64::from(image.block_size());
    file.set_len(size).map_err(write_error(path))?;
    let blocks = image.map().entries.len() as u64;
    // Hash of what each block of the file must hold, for the verification pass.
    let mut expected = Vec::with_capacity(blocks as usize);
    let mut buf = vec![0u8; (BATCH_BLOCKS * bs) as usize];
    let mut written = 0;
    let mut first = 0;
    while first < blocks {
        let count = BATCH_BLOCKS.min(blocks - first);
        let start = first * bs;
        let n = image.read_at(start, &mut buf[..(count * bs).min(size - start) as usize])?;
        for (i, bytes) in buf[..n].chunks(bs as usize).enumerate() {
            expected.push(block::hash(bytes));
            if !block::is_zero(bytes) {
                let offset = start + i as u64 * bs;
                file.write_all_at(bytes, offset)
                    .map_err(write_error(path))?;
                written += bytes.len() as u64;
            }
        }
        progress.advance(n as u64);
        first += count;
    }
    set_mode(file, mode, path)?;
    file.sync_all().map_err(write_error(path))?;

    let mismatch = (0..blocks).into_par_iter().find_map_any(|b| {
        let offset = b * bs;
        let mut buf = vec![0u8; bs.min(size - offset) as usize];
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) if block::hash(&buf) == expected[b as usize] => None,
            Ok(()) => Some(format!(
                "block {b} reads back different from what was written"
            )),
            Err(e) => Some(format!("block {b} cannot be read back: {e}")),
        }
    });
    if let Some(why) = mismatch {
        return Err(Error::Io {
            context: format!("verifying {}", path.display()),
            source: std::io::Error::other(why),
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn docs(names: &[&str]) -> Vec<(String, Vec<u8>)> {
        names.iter().map(|n| (n.to_string(), Vec::new())).collect()
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        for (text, mode) in [("0640", 0o640), ("640", 0o640), ("0o600", 0o600), ("0", 0)] {
            assert_eq!(parse_mode(text).unwrap_or(u32::MAX), mode, "{text}");
        }
        for bad in [
            "4755", "01777", "2750", "0999", "", "rw", "0o", "00600", "-600", "+600",
        ] {
            assert!(parse_mode(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_mode("4755").is_err_and(|e| e.to_string().contains("setuid")));
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o664), 0o755);
        assert_eq!(dir_mode(0o400), 0o700);
    }

    #[test]
    fn two_files_of_one_name_are_refused_naming_both() {
        let ok = file_names(&["os", "data"], &docs(&["restore-point.json"]));
        assert_eq!(
            ok,
            Ok(vec![
                "os.img".to_string(),
                "data.img".into(),
                "vm-config".into(),
                "restore-point.json".into()
            ])
        );
        assert_eq!(
            file_names(&["os", "data", "os"], &[]),
            Err(Collision::SameName {
                first: "disk 'os' (disk 1)".into(),
                second: "disk 'os' (disk 3), to os.img".into()
            })
        );
        assert!(matches!(
            file_names(&["os", "OS"], &[]),
            Err(Collision::Case { first, second }) if first.contains("'os'") && second.contains("'OS'")
        ));
        assert!(matches!(
            file_names(&["os"], &docs(&["OS.img"])),
            Err(Collision::Case { .. })
        ));
        for bad in ["a/b", "..", ".rpfs-restore-1-x"] {
            assert!(
                matches!(file_names(&[], &docs(&[bad])), Err(Collision::Unsafe(_))),
                "{bad}"
            );
        }
    }

    fn target(dir: &Path) -> Target {
        Target::open(dir, 0o700).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_target_is_created_private_and_never_a_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let made = tmp.path().join("a/b");
        target(&made);
        for d in [tmp.path().join("a"), made.clone()] {
            let mode = fs::metadata(&d).expect("made").permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let link = tmp.path().join("link");
        symlink(&made, &link).expect("symlink");
        let err = Target::open(&link, 0o700).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("symbolic link")));
        // A link of the caller's own, in a directory only it can change, is followed.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        target(&link.join("c"));
        assert!(made.join("c").is_dir());
        fs::write(tmp.path().join("file"), "").expect("file");
        assert!(Target::open(&tmp.path().join("file"), 0o700).is_err());
    }

    #[test]
    fn named_temporaries_are_published_by_descriptor_and_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = target(tmp.path());
        let mut a = t.stage_named("a.img").unwrap_or_else(|e| panic!("{e}"));
        a.file.write_all(b"a").expect("write");
        let temp = a.temp.clone().expect("named");
        let nameless = t.stage("b").unwrap_or_else(|e| panic!("{e}"));
        t.publish_all(vec![a, nameless])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(tmp.path().join("a.img")).expect("a"), b"a");
        assert!(tmp.path().join("b").is_file());
        assert!(!tmp.path().join(&temp).exists());
        let mode = fs::metadata(tmp.path().join("a.img"))
            .expect("a")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_planted_name_fails_the_publication_and_leaves_nothing_of_ours() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = target(tmp.path());
        let first = t.stage("first").unwrap_or_else(|e| panic!("{e}"));
        let second = t.stage_named("second").unwrap_or_else(|e| panic!("{e}"));
        fs::write(tmp.path().join("second"), "planted").expect("plant");
        let err = t
            .publish_all(vec![first, second])
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("second") && e.contains("never overwrites")));
        let mut left: Vec<_> = fs::read_dir(tmp.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        left.sort();
        assert_eq!(left, vec![OsString::from("second")]);
        assert_eq!(
            fs::read(tmp.path().join("second")).expect("planted"),
            b"planted"
        );
    }

    #[test]
    fn leftovers_of_dead_restores_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = target(tmp.path());
        let live = t.stage_named("live").unwrap_or_else(|e| panic!("{e}"));
        let dead = format!("{TEMP_PREFIX}1-dead");
        fs::write(tmp.path().join(&dead), "half an image").expect("dead");
        let not_a_file = format!("{TEMP_PREFIX}1-link");
        symlink("/etc/passwd", tmp.path().join(&not_a_file)).expect("symlink");
        fs::create_dir(tmp.path().join(format!("{TEMP_PREFIX}1-dir"))).expect("dir");
        fs::write(tmp.path().join("unrelated"), "").expect("unrelated");

        assert_eq!(t.remove_leftovers(), vec![dead.clone()]);
        assert!(!tmp.path().join(&dead).exists());
        let live_temp = live.temp.clone().expect("named");
        for kept in [
            &live_temp,
            &OsString::from(&not_a_file),
            &OsString::from("unrelated"),
        ] {
            assert!(tmp.path().join(kept).symlink_metadata().is_ok(), "{kept:?}");
        }
        // A staged file dropped unpublished (its restore failed) takes its temporary with it.
        drop(live);
        assert!(tmp.path().join(&live_temp).symlink_metadata().is_err());
        assert_eq!(t.remove_leftovers(), Vec::<String>::new());
    }
}
