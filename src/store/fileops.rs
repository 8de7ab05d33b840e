//! The file system calls a local store makes, behind one small trait: [`LocalStorage`] performs
//! every change to its directory through a [`FileOps`], so a test can record the calls (to build
//! the states a power cut could leave) or break the durability protocol on purpose, without the
//! store's own write path knowing. [`Syscalls`] is the real thing.
//!
//! Invariants every implementation keeps: a call that returns `Ok` did its work; a call that
//! fails may have done some of it, and the caller never trusts it. Nothing here decides *when*
//! to sync or rename: that is the store's protocol (write a temporary, fsync it, rename it into
//! place, fsync the directory), and it lives in [`LocalStorage`] alone.
//!
//! [`LocalStorage`]: super::local::LocalStorage

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::layout;
use super::private::{DIR_MODE, FILE_MODE};

/// The calls that change a local store.
pub trait FileOps: Send + Sync + fmt::Debug {
    /// Creates a new temporary file for an object to be published at `dest` (never an existing
    /// file), open for writing, private (0600) from its creation; returns it with its path.
    fn create_temp(&self, dest: &Path) -> io::Result<(File, PathBuf)>;
    /// Writes all of `data` at `offset` of `file`, which lives at `path`.
    fn write_at(&self, file: &File, path: &Path, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the data of `file` (at `path`) durable.
    fn sync_file(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Renames `from` over `to`, atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of directory `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates one directory, private (0700) from its creation.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes one file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything below it.
    fn remove_tree(&self, path: &Path) -> io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Syscalls;

/// The temporary name of an object being written to `dest`: `<name>.<random>.tmp` beside it.
fn temp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(layout::temp_name(&name))
}

impl FileOps for Syscalls {
    fn create_temp(&self, dest: &Path) -> io::Result<(File, PathBuf)> {
        let temp = temp_path(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        Ok((file, temp))
    }

    fn write_at(&self, file: &File, _path: &Path, data: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(data, offset)
    }

    fn sync_file(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(DIR_MODE).create(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }
}
