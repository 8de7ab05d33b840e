//! What every guest filesystem parser is given and gives back: the bytes it reads
//! ([`Source`]), the interface it implements ([`Backend`]), and the attributes, kinds and errors
//! of guest files.
//!
//! Invariants: a [`Source`] read is exact or fails (never short, never padded), so a parser can
//! never mistake missing bytes for zeros; the limits here ([`MAX_DIR_ENTRIES`], [`MAX_LINK`],
//! [`MAX_PATH`]) bound what any parser returns.

use std::sync::Arc;
use std::time::SystemTime;

use crate::inspect::{Image, Window};

/// Bytes a guest filesystem is read from: a window of a disk restore point, or (in tests and
/// fuzzing) memory.
pub trait Source: Send + Sync + 'static {
    /// Bytes in the source.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`, or fails naming the range.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl<I: Image> Source for Window<I> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        Window::read_exact_at(self, offset, buf)
    }
}

impl Source for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Most entries a directory may list before it is refused as damaged.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;
/// Longest symbolic link target read.
pub const MAX_LINK: u64 = 4096;
/// Longest path inside a guest filesystem (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// A source as a seekable stream, for parsers that want `Read + Seek`.
pub struct Stream {
    source: Arc<dyn Source>,
    pos: u64,
}

impl Stream {
    pub fn new(source: Arc<dyn Source>) -> Stream {
        Stream { source, pos: 0 }
    }
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.source.size().saturating_sub(self.pos)) as usize;
        self.source.read_exact_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Stream {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        use std::io::SeekFrom;
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.source.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

/// A filesystem rpfs reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Fat,
    Ntfs,
}

impl FsType {
    /// The filesystem whose signature `source` starts with, if rpfs reads it.
    pub fn probe(source: &dyn Source) -> Option<FsType> {
        let mut head = [0u8; 2048];
        // Too short for a superblock: no filesystem rpfs reads.
        source.read_exact_at(0, &mut head).ok()?;
        if head[1024 + 56..1024 + 58] == [0x53, 0xEF] {
            return Some(FsType::Ext4);
        }
        // A FAT boot sector: a jump, the boot signature and a type string (FAT12/16 at 54,
        // FAT32 at 82).
        let boot = matches!(head[0], 0xEB | 0xE9) && head[510..512] == [0x55, 0xAA];
        if boot && (head[54..57] == *b"FAT" || head[82..87] == *b"FAT32") {
            return Some(FsType::Fat);
        }
        if boot && head[3..11] == *b"NTFS    " {
            return Some(FsType::Ntfs);
        }
        None
    }

    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Fat => "FAT",
            FsType::Ntfs => "NTFS",
        }
    }
}

/// What a guest file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    Directory,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// A guest file's attributes, as its filesystem records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestAttr {
    pub ino: u64,
    pub kind: GuestKind,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Permission bits with setuid, setgid and sticky (0o7777).
    pub perm: u16,
    pub nlink: u32,
    /// None where the filesystem has no owners (FAT): the mount's owner then.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Device number (Linux encoding) of a device file.
    pub rdev: u32,
}

impl GuestAttr {
    /// A directory of a filesystem without inodes.
    pub fn synthetic_dir(time: SystemTime) -> GuestAttr {
        GuestAttr {
            ino: 0,
            kind: GuestKind::Directory,
            size: 0,
            blocks: 0,
            perm: 0o755,
            nlink: 2,
            uid: None,
            gid: None,
            atime: time,
            mtime: time,
            ctime: time,
            rdev: 0,
        }
    }
}

/// A directory entry whose own inode cannot be read (damaged, or what the parser refuses): the
/// directory still names it, with the number and kind its entry records, and the file fails
/// alone when it is looked up, as the kernel's readdir lists names without reading inodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub ino: u64,
    pub kind: GuestKind,
    pub why: String,
}

/// One entry of a directory as a parser lists it: its name, and its attributes or why they
/// cannot be read.
pub type DirItem = (Vec<u8>, Result<GuestAttr, Unreadable>);

/// Why a guest filesystem request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("not a regular file")]
    NotFile,
    /// The filesystem cannot be read here: damaged, or using what the parser does not support.
    #[error("{0}")]
    Damaged(String),
}

/// Part of a read: `len` bytes at `at` within the requested range, found at byte `source` of
/// the filesystem's image, or zeros (a hole) when `source` is None.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub at: usize,
    pub len: usize,
    pub source: Option<u64>,
}

/// A filesystem parser; lives on its worker thread. Paths are absolute, `/`-separated bytes.
pub trait Backend {
    /// Attributes of the root directory.
    fn root(&mut self) -> Result<GuestAttr, GuestError>;
    /// The entries of directory `path` (inode `ino`) without `.` and `..`; an entry's `ino` of
    /// 0 asks for one. An entry whose inode cannot be read is [`Unreadable`], not an error of
    /// the whole directory.
    fn list(&mut self, path: &[u8], ino: u64) -> Result<Vec<DirItem>, GuestError>;
    fn read_link(&mut self, path: &[u8]) -> Result<Vec<u8>, GuestError>;
    /// Where `len` bytes of file `path` (inode `ino`) from `offset` lie in the image, so the
    /// caller can read them itself (on its own thread); None where the parser must read them.
    fn map(
        &mut self,
        _path: &[u8],
        _ino: u64,
        _offset: u64,
        _len: usize,
    ) -> Result<Option<Vec<Piece>>, GuestError> {
        Ok(None)
    }
    /// Reads file `path` (inode `ino`) at `offset`; short only at the end of the file.
    fn read(
        &mut self,
        path: &[u8],
        ino: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, GuestError>;
}

/// Fills `buf` with `read` (a reader's `read`) until it is full or the reader ends; returns the
/// bytes read.
pub fn fill(
    buf: &mut [u8],
    mut read: impl FnMut(&mut [u8]) -> Result<usize, GuestError>,
) -> Result<usize, GuestError> {
    let mut done = 0;
    while done < buf.len() {
        match read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_knows_ext4_and_fat_by_their_signatures_only() {
        let mut ext = vec![0u8; 4096];
        ext[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(FsType::probe(&ext), Some(FsType::Ext4));
        let mut fat = vec![0u8; 4096];
        fat[0] = 0xEB;
        fat[510..512].copy_from_slice(&[0x55, 0xAA]);
        fat[54..59].copy_from_slice(b"FAT16");
        assert_eq!(FsType::probe(&fat), Some(FsType::Fat));
        fat[54..59].copy_from_slice(b"EXFAT");
        assert_eq!(FsType::probe(&fat), None, "a boot sector is not enough");
        fat[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(FsType::probe(&fat), Some(FsType::Ntfs));
        // An MBR has the boot signature but no jump.
        let mut mbr = vec![0u8; 4096];
        mbr[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(FsType::probe(&mbr), None);
        assert_eq!(FsType::probe(&vec![0u8; 1500]), None, "too short");
        assert_eq!(FsType::probe(&Vec::new()), None);
    }

    #[test]
    fn memory_sources_read_exactly_or_fail() {
        let src: Vec<u8> = (0..100u8).collect();
        let mut buf = [0u8; 10];
        src.read_exact_at(90, &mut buf).expect("last ten");
        assert_eq!(buf[0], 90);
        assert!(src.read_exact_at(91, &mut buf).is_err());
        assert!(src.read_exact_at(u64::MAX, &mut buf).is_err());
    }
}
