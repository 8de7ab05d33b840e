//! FAT12/16/32 (EFI system partitions) through `fatfs`, read-only.
//!
//! Invariants: the filesystem is opened without access-date updates and its writer always
//! fails, so nothing is ever written; FAT has no inode numbers, owners or modes, so entries get
//! none here (the caller assigns numbers, the mount owner owns them, directories are 0755 and
//! files 0644, or 0444 when marked read-only); FAT times carry no zone and are read as UTC.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::SystemTime;

use fatfs::{Date, DateTime, FileSystem, FsOptions};

use std::sync::Arc;

use super::backend::{
    Backend, DirItem, GuestAttr, GuestError, GuestKind, MAX_DIR_ENTRIES, Source, Stream,
};

/// `fatfs` wants a writable device; every write fails.
impl Write for Stream {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "restore points are read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct FatFs {
    fs: FileSystem<Stream>,
}

/// Loads the FAT filesystem in `source` (its boot sector).
pub fn open(source: Arc<dyn Source>) -> Result<Box<dyn Backend>, GuestError> {
    let fs = FileSystem::new(
        Stream::new(source),
        FsOptions::new().update_accessed_date(false),
    )
    .map_err(damaged)?;
    Ok(Box::new(FatFs { fs }))
}

fn damaged(e: io::Error) -> GuestError {
    match e.kind() {
        io::ErrorKind::NotFound => GuestError::NotFound,
        _ => GuestError::Damaged(format!("FAT: {e}")),
    }
}

/// `fatfs` paths are relative to the root and must be UTF-8 (FAT names are UTF-16).
fn relative(path: &[u8]) -> Result<&str, GuestError> {
    let path = std::str::from_utf8(path).map_err(|_| GuestError::NotFound)?;
    Ok(path.trim_start_matches('/'))
}

fn time(date: Date, hour: u16, min: u16, sec: u16) -> SystemTime {
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        date.year, date.month, date.day, hour, min, sec
    );
    // An impossible date (damage) shows as the epoch rather than failing the entry.
    humantime::parse_rfc3339(&text).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn date_time(t: DateTime) -> SystemTime {
    time(t.date, t.time.hour, t.time.min, t.time.sec)
}

impl Backend for FatFs {
    fn root(&mut self) -> Result<GuestAttr, GuestError> {
        Ok(GuestAttr::synthetic_dir(SystemTime::UNIX_EPOCH))
    }

    fn list(&mut self, path: &[u8], _ino: u64) -> Result<Vec<DirItem>, GuestError> {
        let rel = relative(path)?;
        let root = self.fs.root_dir();
        let dir = if rel.is_empty() {
            root
        } else {
            root.open_dir(rel).map_err(damaged)?
        };
        let mut out = Vec::new();
        for entry in dir.iter() {
            let e = entry.map_err(damaged)?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() == MAX_DIR_ENTRIES {
                return Err(GuestError::Damaged(format!(
                    "FAT: a directory with more than {MAX_DIR_ENTRIES} entries"
                )));
            }
            let mtime = date_time(e.modified());
            let attr = if e.is_dir() {
                GuestAttr::synthetic_dir(mtime)
            } else {
                let read_only = e.attributes().contains(fatfs::FileAttributes::READ_ONLY);
                GuestAttr {
                    ino: 0,
                    kind: GuestKind::File,
                    size: e.len(),
                    blocks: e.len().div_ceil(512),
                    perm: if read_only { 0o444 } else { 0o644 },
                    nlink: 1,
                    uid: None,
                    gid: None,
                    atime: time(e.accessed(), 0, 0, 0),
                    mtime,
                    ctime: mtime,
                    rdev: 0,
                }
            };
            // A FAT entry holds its own attributes: it is readable whenever it is listed.
            out.push((name.into_bytes(), Ok(attr)));
        }
        Ok(out)
    }

    fn read_link(&mut self, _: &[u8]) -> Result<Vec<u8>, GuestError> {
        Err(GuestError::NotFile)
    }

    fn read(
        &mut self,
        path: &[u8],
        _ino: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, GuestError> {
        let mut file = self
            .fs
            .root_dir()
            .open_file(relative(path)?)
            .map_err(damaged)?;
        file.seek(SeekFrom::Start(offset)).map_err(damaged)?;
        super::backend::fill(buf, |b| file.read(b).map_err(damaged))
    }
}
