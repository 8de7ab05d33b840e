//! Open files and directories: opening (any write access refused), reading, seeking over
//! holes, listing an open directory, closing.
//!
//! Invariants: a read returns exactly the bytes asked for unless the file ends first; a handle
//! reads what it opened whatever happens to the store meanwhile (see `handles.rs`); generated
//! documents and guest files are all data to `lseek`, disk and partition images follow their
//! holes.

use std::sync::Arc;

use super::handles::Handle;
use super::node::{DirEntry, Node};
use super::{FsError, Opened, Vfs};

const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;

impl Vfs {
    /// Opens file `ino` for reading; any write access is refused.
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly("open for writing"));
        }
        let node = self.node(ino)?;
        let snap = self.snapshot()?;
        let media = &self.media;
        let (handle, keep_cache, direct_io) = match node {
            Node::DiskImage(p, d) => {
                let window = media.window(&snap, snap.point(p)?, d, 0)?;
                (Handle::Image(window), true, false)
            }
            Node::PartitionImage(p, d, n) => {
                let window = media.window(&snap, snap.point(p)?, d, n)?;
                (Handle::Image(window), true, false)
            }
            Node::VmConfig(p) => {
                let config = self.engine.point_config(snap.point(p)?)?;
                (Handle::Bytes(Arc::new(config)), true, false)
            }
            Node::PointJson(p) => (
                Handle::Bytes(self.point_json(&snap, snap.point(p)?)?),
                false,
                true,
            ),
            Node::CollectionJson(c) => (
                Handle::Bytes(self.collection_json(&snap, snap.collection(c)?)?),
                false,
                true,
            ),
            Node::Guest(p, d, n, ino) => {
                let g = self.guest_file(&snap, (p, d, n), ino)?;
                (Handle::Guest(g, ino), true, false)
            }
            Node::Root
            | Node::Collection(_)
            | Node::Point(_)
            | Node::Disks(_)
            | Node::Partitions(_)
            | Node::PartitionDisk(..)
            | Node::Files(_)
            | Node::FilesDisk(..) => {
                return Err(FsError::IsDir);
            }
            Node::Latest(_) => {
                return Err(FsError::Invalid("a symbolic link cannot be opened".into()));
            }
        };
        Ok(Opened {
            fh: self.handles.insert(handle),
            keep_cache,
            direct_io,
        })
    }

    /// Opens directory `ino`: its listing is taken now and served from this handle, so
    /// offsets stay valid however the directory changes meanwhile.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let listing = self.readdir(ino)?;
        Ok(self.handles.insert(Handle::Dir(Arc::new(listing))))
    }

    /// The listing of an open directory, from position `offset` on.
    pub fn readdir_at(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>, FsError> {
        match self.handles.get(fh)? {
            Handle::Dir(listing) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                // Each entry carries the offset of the entry after it.
                Ok(listing
                    .iter()
                    .enumerate()
                    .skip(start)
                    .map(|(i, e)| (i as u64 + 1, e.clone()))
                    .collect())
            }
            Handle::Image(_) | Handle::Bytes(_) | Handle::Guest(..) => Err(FsError::NotDir),
        }
    }

    /// Reads up to `size` bytes at `offset`: exactly `size` unless the file ends first.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        match self.handles.get(fh)? {
            Handle::Image(view) => {
                let len = (size as u64).min(view.len.saturating_sub(offset)) as usize;
                let mut buf = vec![0u8; len];
                let n = view.read_at(offset, &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }
            Handle::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b[start..end].to_vec())
            }
            Handle::Guest(g, ino) => {
                g.fs.read(ino, offset, size)
                    .map_err(|e| super::guests::guest_error(&g, e))
            }
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    /// SEEK_DATA / SEEK_HOLE over the image's real holes (generated files have none).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, FsError> {
        if whence != SEEK_DATA && whence != SEEK_HOLE {
            return Err(FsError::Invalid(format!("lseek whence {whence}")));
        }
        let offset =
            u64::try_from(offset).map_err(|_| FsError::Invalid("negative offset".into()))?;
        let handle = self.handles.get(fh)?;
        let size = match &handle {
            Handle::Image(view) => view.len,
            Handle::Bytes(b) => b.len() as u64,
            Handle::Guest(g, ino) => {
                g.fs.attr(*ino)
                    .map_err(|e| super::guests::guest_error(g, e))?
                    .size
            }
            Handle::Dir(_) => return Err(FsError::IsDir),
        };
        if offset >= size {
            return Err(FsError::NoData(offset));
        }
        let at = match (&handle, whence == SEEK_DATA) {
            (Handle::Image(view), true) => view.next_data(offset).ok_or(FsError::NoData(offset))?,
            (Handle::Image(view), false) => view.next_hole(offset),
            // Generated files and guest files are all data.
            (_, true) => offset,
            (_, false) => size,
        };
        i64::try_from(at).map_err(|_| FsError::Invalid("offset too large".into()))
    }
}
