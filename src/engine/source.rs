//! Source disks: raw image files (sparse or not) and block devices, nothing else.
//!
//! Invariants: [`inspect`] refuses every other kind of file (image formats by their magic,
//! directories, FIFOs, sockets, character devices, empty files) with a message naming the disk
//! and the reason, and is called both when a VM is added and again when each point is created.
//! Sources are only ever opened read-only.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Whence, lseek};

use super::error::{Error, Result, SourceProblem};
use crate::store::storage::DIRECT_ALIGN;

/// What kind of source a disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A regular file holding a raw image; may be sparse.
    File,
    /// A block device.
    BlockDevice,
}

/// An inspected source disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub kind: SourceKind,
    pub size: u64,
    /// Bytes the file has allocated (at most `size`); a block device's whole size.
    pub allocated: u64,
}

/// Image formats recognised (and refused) by their magic: (name, offset, magic).
const FOREIGN_FORMATS: &[(&str, u64, &[u8])] = &[
    ("qcow2", 0, b"QFI\xfb"),
    ("QED", 0, b"QED\0"),
    ("VMDK", 0, b"KDMV"),
    ("VMDK", 0, b"COWD"),
    ("VMDK descriptor", 0, b"# Disk DescriptorFile"),
    ("VHDX", 0, b"vhdxfile"),
    ("VHD (dynamic)", 0, b"conectix"),
    ("VDI", 0x40, &[0x7f, 0x10, 0xda, 0xbe]),
];

fn source_error(
    disk: &str,
    path: &Path,
    problem: SourceProblem,
    reason: impl Into<String>,
) -> Error {
    Error::Source {
        disk: disk.to_string(),
        path: path.to_path_buf(),
        reason: reason.into(),
        problem,
    }
}

/// Checks that `path` is a raw image or block device and returns its kind and size.
pub fn inspect(disk: &str, path: &Path) -> Result<SourceInfo> {
    let unsupported = |reason: String| source_error(disk, path, SourceProblem::Unsupported, reason);
    let unreadable = |e: io::Error| {
        source_error(
            disk,
            path,
            SourceProblem::Unreadable,
            format!("cannot be read: {e}"),
        )
    };
    let meta = fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            source_error(disk, path, SourceProblem::Unreadable, "does not exist")
        } else {
            unreadable(e)
        }
    })?;
    let ft = meta.file_type();
    let what = if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() {
        Some("a character device")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(unsupported(format!(
            "is {what}; a source must be a raw disk image file or a block device"
        )));
    }
    let mut file = File::open(path).map_err(unreadable)?;
    let (kind, size) = if ft.is_block_device() {
        let size = file.seek(SeekFrom::End(0)).map_err(unreadable)?;
        (SourceKind::BlockDevice, size)
    } else {
        (SourceKind::File, meta.len())
    };
    if size == 0 {
        return Err(unsupported(
            "is empty (0 bytes); a disk needs a size".into(),
        ));
    }
    let mut head = [0u8; 0x48];
    let n = read_up_to(&file, &mut head, 0).map_err(unreadable)?;
    for (format, at, magic) in FOREIGN_FORMATS {
        let at = *at as usize;
        if n >= at + magic.len() && head[at..at + magic.len()] == **magic {
            return Err(unsupported(format!(
                "is a {format} image, not a raw image; convert it first \
                 (qemu-img convert -O raw SOURCE DISK.img)"
            )));
        }
    }
    let allocated = match kind {
        SourceKind::File => (meta.blocks() * 512).min(size),
        SourceKind::BlockDevice => size,
    };
    Ok(SourceInfo {
        kind,
        size,
        allocated,
    })
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A source opened for capture.
///
/// Data is read with O_DIRECT where the source allows it: reads then bypass the host's page
/// cache (no copy through it, no eviction of the VM's cached data, and many reads in flight from
/// several threads). The kernel writes back dirty cached pages of a range before reading it
/// directly, so a direct read sees the same bytes a buffered one would.
#[derive(Debug)]
pub struct Source {
    pub disk: String,
    pub path: PathBuf,
    pub info: SourceInfo,
    file: File,
    direct: Option<File>,
}

impl Source {
    /// Inspects and opens `path` (read-only).
    pub fn open(disk: &str, path: &Path) -> Result<Source> {
        let info = inspect(disk, path)?;
        let file = File::open(path).map_err(|e| {
            source_error(
                disk,
                path,
                SourceProblem::Unreadable,
                format!("cannot be opened: {e}"),
            )
        })?;
        // Not every filesystem takes O_DIRECT (tmpfs does not): then reads are buffered.
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(Source {
            disk: disk.to_string(),
            path: path.to_path_buf(),
            info,
            file,
            direct,
        })
    }

    fn read_error(&self, e: io::Error) -> Error {
        source_error(
            &self.disk,
            &self.path,
            SourceProblem::Unreadable,
            format!("read failed: {e}"),
        )
    }

    /// Reads `buf.len()` bytes at `offset`, zero-filling past the end of the source. Aligned
    /// requests are read directly when the source allows it.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let aligned = buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64);
        let n = match &self.direct {
            Some(direct) if aligned => match read_up_to(direct, buf, offset) {
                Ok(n) => n,
                // A device or filesystem that refuses this direct read: read it buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    read_up_to(&self.file, buf, offset).map_err(|e| self.read_error(e))?
                }
                Err(e) => return Err(self.read_error(e)),
            },
            _ => read_up_to(&self.file, buf, offset).map_err(|e| self.read_error(e))?,
        };
        buf[n..].fill(0);
        Ok(())
    }

    /// For blocks `first..first+count` of `block_size` bytes, whether each may hold data. Holes
    /// of sparse files are found with SEEK_DATA/SEEK_HOLE and cost no reads; block devices and
    /// filesystems without hole reporting count as all data.
    pub fn data_blocks(&self, first: u64, count: u64, block_size: u64) -> Vec<bool> {
        if self.info.kind == SourceKind::BlockDevice {
            return vec![true; count as usize];
        }
        let start = first * block_size;
        let end = ((first + count) * block_size).min(self.info.size);
        let mut mask = vec![false; count as usize];
        let mut pos = start;
        while pos < end {
            let data = match lseek(&self.file, pos as i64, Whence::SeekData) {
                Ok(d) => d as u64,
                // ENXIO: no data after `pos`.
                Err(nix::errno::Errno::ENXIO) => break,
                Err(_) => return vec![true; count as usize],
            };
            if data >= end {
                break;
            }
            let hole = match lseek(&self.file, data as i64, Whence::SeekHole) {
                Ok(h) => (h as u64).min(end),
                Err(_) => return vec![true; count as usize],
            };
            let (a, b) = (data / block_size, hole.div_ceil(block_size));
            for m in &mut mask[(a - first) as usize..(b - first) as usize] {
                *m = true;
            }
            pos = hole;
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::error::ErrorKind;
    use std::io::Write;

    #[test]
    fn sparse_file_holes_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.img");
        let f = File::create(&path).expect("create");
        f.set_len(64 << 20).expect("size");
        f.write_all_at(&[1u8; 4096], 10 << 20).expect("write");
        drop(f);
        let s = Source::open("d", &path).expect("raw file");
        let mask = s.data_blocks(0, 1024, 64 << 10);
        let data: Vec<usize> = mask
            .iter()
            .enumerate()
            .filter(|(_, m)| **m)
            .map(|(i, _)| i)
            .collect();
        assert!(data.contains(&160), "{data:?}");
        assert!(data.len() <= 2, "{data:?}");
    }

    #[test]
    fn foreign_formats_and_special_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.img");
        File::create(&empty).expect("create");
        let qcow = dir.path().join("x.qcow2");
        File::create(&qcow)
            .and_then(|mut f| f.write_all(b"QFI\xfb\0\0\0\x03rest"))
            .expect("write");
        for (path, want) in [
            (dir.path().to_path_buf(), "is a directory"),
            (PathBuf::from("/dev/null"), "is a character device"),
            (empty, "is empty"),
            (qcow, "is a qcow2 image"),
        ] {
            let err = inspect("os", &path).expect_err(want);
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
            assert!(err.to_string().contains(want), "{err}");
            assert!(err.to_string().starts_with("disk 'os'"), "{err}");
        }
        let err = inspect("os", &dir.path().join("missing")).expect_err("missing");
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.to_string().contains("does not exist"));
    }
}
