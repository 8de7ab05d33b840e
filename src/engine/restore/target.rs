//! The target directory of a restore, reached and written through descriptors (see the
//! restore module's invariants, which this upholds): walked without following links another
//! user could plant, files created private and nameless (or under a locked temporary name),
//! published without ever replacing an entry, leftovers of dead restores removed.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, Flock, FlockArg, OFlag, RenameFlags, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, geteuid, linkat, unlinkat};

use crate::engine::error::{Error, Result};

/// Start of the names of temporaries, on filesystems that cannot create a nameless file.
pub const TEMP_PREFIX: &str = ".rpfs-restore-";

/// Symbolic links followed while reaching the target, at most (as the kernel's `ELOOP`).
const MAX_LINKS: usize = 40;

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

/// A restore's target directory, held open.
pub(super) struct Target {
    dir: OwnedFd,
    /// As the caller named it, for messages.
    path: PathBuf,
    uid: u32,
}

/// A file written but not yet published. Dropping it removes its temporary name (published or
/// not, failed or not), before its lock is released.
pub(super) struct Staged<'t> {
    dir: &'t OwnedFd,
    pub(super) file: File,
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
    pub(super) fn open(to: &Path, new_dir_mode: u32) -> Result<Target> {
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
    pub(super) fn entry_exists(&self, name: &str) -> bool {
        fstatat(&self.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) != Err(Errno::ENOENT)
    }

    /// Creates a file to be published as `name`, 0600, nameless where the filesystem allows.
    pub(super) fn stage(&self, name: &str) -> Result<Staged<'_>> {
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
    pub(super) fn remove_leftovers(&self) -> Vec<String> {
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
    pub(super) fn publish_all(&self, staged: Vec<Staged>) -> Result<()> {
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
pub(super) fn set_mode(file: &File, mode: u32, path: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{PermissionsExt, symlink};

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
