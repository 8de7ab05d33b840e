//! ext2/3/4 through `ext4-view`, which replays the journal in memory and checks metadata
//! checksums.
//!
//! Invariants: inode numbers are the filesystem's own (hard links share one); every read goes
//! through the window, so nothing outside the partition is seen; open files are kept per inode
//! (a few), so a sequential copy does not resolve its path on every request.

use std::num::NonZeroUsize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata, Timestamp};
use lru::LruCache;

use std::sync::Arc;

use super::backend::{
    Backend, DirItem, GuestAttr, GuestError, GuestKind, MAX_DIR_ENTRIES, MAX_LINK, Piece, Source,
    Unreadable,
};

/// Open files (and placements) kept per filesystem.
const OPEN_FILES: usize = 16;
/// Most runs a file's placement may have before its reads go through the parser instead (a
/// run is an extent or a hole; 2^20 runs take 24 MiB).
const MAX_RUNS: usize = 1 << 20;

type Offsets = Box<dyn Iterator<Item = Result<Option<u64>, Ext4Error>>>;

/// Where a file's blocks lie, learnt as far as reads have needed.
struct Placement {
    /// (first block of the file, byte offset in the image or None for a hole, blocks), in order.
    runs: Vec<(u64, Option<u64>, u64)>,
    /// The blocks not yet learnt.
    rest: Offsets,
    /// Blocks learnt so far.
    learnt: u64,
    done: bool,
}

impl Placement {
    fn add(&mut self, at: Option<u64>, block_size: u64) {
        match self.runs.last_mut() {
            Some((_, None, n)) if at.is_none() => *n += 1,
            Some((_, Some(start), n)) if at == Some(*start + *n * block_size) => *n += 1,
            _ => self.runs.push((self.learnt, at, 1)),
        }
        self.learnt += 1;
    }
}

/// The source as `ext4-view`'s reader.
struct Reader(Arc<dyn Source>);

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.0.read_exact_at(start_byte, dst)?)
    }
}

pub struct Ext4Fs {
    fs: Ext4,
    block_size: u64,
    files: LruCache<u64, ext4_view::File>,
    placements: LruCache<u64, Placement>,
}

/// Loads the filesystem in `source` (superblock, group descriptors, journal replay).
pub fn open(source: Arc<dyn Source>) -> Result<Box<dyn Backend>, GuestError> {
    let mut head = [0u8; 4];
    source
        .read_exact_at(1024 + 0x18, &mut head)
        .map_err(|e| GuestError::Damaged(e.to_string()))?;
    let fs = Ext4::load(Box::new(Reader(source))).map_err(damaged)?;
    let open = NonZeroUsize::new(OPEN_FILES).unwrap_or(NonZeroUsize::MIN);
    Ok(Box::new(Ext4Fs {
        fs,
        // ext4-view checked s_log_block_size when it loaded (1 KiB to 64 KiB).
        block_size: 1024 << u32::from_le_bytes(head).min(6),
        files: LruCache::new(open),
        placements: LruCache::new(open),
    }))
}

fn damaged(e: Ext4Error) -> GuestError {
    match e {
        Ext4Error::NotFound => GuestError::NotFound,
        Ext4Error::NotADirectory => GuestError::NotDir,
        Ext4Error::IsADirectory | Ext4Error::IsASpecialFile => GuestError::NotFile,
        e => GuestError::Damaged(e.to_string()),
    }
}

/// Refuses a file that is not inode `ino`: a damaged directory naming two files alike must not
/// serve one file's bytes for the other.
fn same_inode(file: &ext4_view::File, ino: u64) -> Result<(), GuestError> {
    if u64::from(file.metadata().inode()) == ino {
        Ok(())
    } else {
        Err(GuestError::Damaged(format!(
            "the path of inode {ino} leads to inode {}",
            file.metadata().inode()
        )))
    }
}

fn time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanoseconds().min(999_999_999)));
    match u64::try_from(t.seconds()) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s) + nanos,
        Err(_) => UNIX_EPOCH - Duration::from_secs(t.seconds().unsigned_abs()) + nanos,
    }
}

fn kind(t: FileType) -> GuestKind {
    match t {
        FileType::Directory => GuestKind::Directory,
        FileType::Regular => GuestKind::File,
        FileType::Symlink => GuestKind::Symlink,
        FileType::CharacterDevice => GuestKind::CharDevice,
        FileType::BlockDevice => GuestKind::BlockDevice,
        FileType::Fifo => GuestKind::Fifo,
        FileType::Socket => GuestKind::Socket,
    }
}

fn attr(m: &Metadata) -> GuestAttr {
    let kind = kind(m.file_type());
    let (major, minor) = m.device().unwrap_or((0, 0));
    GuestAttr {
        ino: u64::from(m.inode()),
        kind,
        size: m.len(),
        blocks: m.len().div_ceil(512),
        perm: m.mode() & 0o7777,
        nlink: u32::from(m.links()).max(1),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        atime: time(m.accessed()),
        mtime: time(m.modified()),
        ctime: time(m.changed()),
        rdev: (major << 8) | (minor & 0xff) | ((minor & !0xff) << 12),
    }
}

impl Backend for Ext4Fs {
    fn root(&mut self) -> Result<GuestAttr, GuestError> {
        Ok(attr(&self.fs.symlink_metadata("/").map_err(damaged)?))
    }

    fn list(&mut self, path: &[u8], _ino: u64) -> Result<Vec<DirItem>, GuestError> {
        let mut out = Vec::new();
        for entry in self.fs.read_dir(path).map_err(damaged)? {
            let entry = entry.map_err(damaged)?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            if out.len() == MAX_DIR_ENTRIES {
                return Err(GuestError::Damaged(format!(
                    "a directory with more than {MAX_DIR_ENTRIES} entries"
                )));
            }
            // The entry's own inode may be damaged: that fails this entry alone.
            let item = entry.metadata().map(|m| attr(&m)).map_err(|e| Unreadable {
                ino: u64::from(entry.inode()),
                kind: entry.file_type().map_or(GuestKind::File, kind),
                why: e.to_string(),
            });
            out.push((name, item));
        }
        Ok(out)
    }

    fn read_link(&mut self, path: &[u8]) -> Result<Vec<u8>, GuestError> {
        let target = self.fs.read_link(path).map_err(damaged)?;
        let target = target.as_ref().to_vec();
        if target.len() as u64 > MAX_LINK {
            return Err(GuestError::Damaged(
                "a symbolic link longer than 4 KiB".into(),
            ));
        }
        Ok(target)
    }

    fn map(
        &mut self,
        path: &[u8],
        ino: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<Piece>>, GuestError> {
        let bs = self.block_size;
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        let p = match self.placements.get_mut(&ino) {
            Some(p) if p.learnt == u64::MAX => return Ok(None),
            Some(p) => p,
            None => {
                let file = self.fs.open(path).map_err(damaged)?;
                same_inode(&file, ino)?;
                let rest: Offsets = Box::new(file.data_offsets());
                self.placements.get_or_insert_mut(ino, || Placement {
                    runs: Vec::new(),
                    rest,
                    learnt: 0,
                    done: false,
                })
            }
        };
        let end = offset + len as u64;
        let last = (end - 1) / bs;
        while p.learnt <= last && !p.done {
            match p.rest.next() {
                Some(at) => p.add(at.map_err(damaged)?, bs),
                None => p.done = true,
            }
            if p.runs.len() > MAX_RUNS {
                // Too fragmented to map: the parser reads it, now and later.
                p.runs.clear();
                p.done = true;
                p.learnt = u64::MAX;
                return Ok(None);
            }
        }
        let first = p.runs.partition_point(|r| (r.0 + r.2) * bs <= offset);
        let mut pieces = Vec::new();
        for &(block, at, n) in &p.runs[first..] {
            let (run_start, run_end) = (block * bs, (block + n) * bs);
            if run_start >= end {
                break;
            }
            let (s, e) = (run_start.max(offset), run_end.min(end));
            pieces.push(Piece {
                at: (s - offset) as usize,
                len: (e - s) as usize,
                source: at.map(|a| a + (s - run_start)),
            });
        }
        Ok(Some(pieces))
    }

    fn read(
        &mut self,
        path: &[u8],
        ino: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, GuestError> {
        let file = match self.files.get_mut(&ino) {
            Some(f) => f,
            None => {
                let f = self.fs.open(path).map_err(damaged)?;
                same_inode(&f, ino)?;
                self.files.get_or_insert_mut(ino, || f)
            }
        };
        if file.position() != offset {
            file.seek_to(offset.min(file.metadata().len()))
                .map_err(damaged)?;
        }
        super::backend::fill(buf, |b| file.read_bytes(b).map_err(damaged))
    }
}
