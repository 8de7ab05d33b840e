//! Source disks (raw image files, sparse or not, and block devices, nothing else), and the
//! opening of every path a VM names: its disks and its configuration file.
//!
//! Invariants: [`Source::open`] refuses every other kind of file (image formats by their magic,
//! directories, FIFOs, sockets, character devices, empty files) with a message naming the disk
//! and the reason, when a VM is added and again when each point is created. Sources are only
//! ever opened read-only.
//!
//! Paths are opened as they were when the VM was added ([`Expect`], recorded as `AddedAs`), so
//! that another user who controls a directory on the path cannot swap in a link to a file only
//! root may read:
//! - a path with no symbolic link at `vm add` is opened through none at all (openat2 with
//!   RESOLVE_NO_SYMLINKS: neither its last component nor a directory may have become a link);
//! - a path whose directories went through a link is opened with O_NOFOLLOW on its last
//!   component only; a path that was itself a link is followed (root chose it), and `vm add`
//!   refuses such a link in a directory other users can write (they could retarget it);
//! - the file opened must be of the kind it was (regular file or block device).
//!
//! Its identity (device and inode) is not compared with that of `vm add`: replacing an image by
//! a copy is legitimate, and once links are not followed, the kernel's `fs.protected_hardlinks`
//! (on by default) stops a user from hard-linking a file they cannot read into their directory.
//! Nothing that could block or act on being opened (a FIFO, a device) is opened: the type is
//! checked before the open (which does not block) and again on the descriptor, which must be the
//! file checked. Everything after the open reads through that descriptor, never the path again.
//! VMs added before this was recorded follow their paths as before, except a last component that
//! is a link in a directory other users can write.
//!
//! `rpfs migrate` ingests a restore point of another store instead of a file: such a source reads
//! through the point's `DiskImage`, reports holes from its map, and may report blocks known
//! unchanged since the previous migrated point (`Source::unchanged_blocks`), which ingest takes
//! from that point without reading them.

use std::fs::{self, File, Metadata};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, FcntlArg, OFlag, OpenHow, ResolveFlag, fcntl, openat2};
use nix::unistd::{Whence, lseek};

use super::error::{Error, Result, SourceProblem};
use super::read::DiskImage;
use crate::store::records::{AddedAs, PathKind};
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

/// What opening a VM's path expects it to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `vm add`: whatever the path names now, through a symbolic link or not.
    Adding,
    /// Capture: what the path was when its VM was added.
    AsAdded(AddedAs),
    /// Capture for a VM recorded before rpfs kept what its paths were: a symbolic link is only
    /// followed in a directory that no one but root (or rpfs's own user) can write.
    Unrecorded,
}

impl Expect {
    /// The expectation a VM record holds for one of its paths.
    pub fn from_record(added_as: Option<AddedAs>) -> Expect {
        added_as.map_or(Expect::Unrecorded, Expect::AsAdded)
    }
}

/// Why a VM's path cannot be opened as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub problem: SourceProblem,
    /// Follows the path's name in a message ("is now a symbolic link; …").
    pub reason: String,
}

/// A VM's path opened as expected: the descriptor, its metadata, and what the path is.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub meta: Metadata,
    pub added_as: AddedAs,
}

fn refusal(problem: SourceProblem, reason: impl Into<String>) -> Refusal {
    Refusal {
        problem,
        reason: reason.into(),
    }
}

fn kind_name(kind: PathKind) -> &'static str {
    match kind {
        PathKind::File => "a regular file",
        PathKind::BlockDevice => "a block device",
    }
}

/// The kind of file `meta` describes, or what it is when it is neither kind a path may name.
fn path_kind(meta: &Metadata) -> std::result::Result<PathKind, &'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        Ok(PathKind::File)
    } else if ft.is_block_device() {
        Ok(PathKind::BlockDevice)
    } else if ft.is_dir() {
        Err("a directory")
    } else if ft.is_fifo() {
        Err("a FIFO")
    } else if ft.is_socket() {
        Err("a socket")
    } else if ft.is_char_device() {
        Err("a character device")
    } else if ft.is_symlink() {
        Err("a symbolic link")
    } else {
        Err("of an unknown file type")
    }
}

/// Whether no one but root (and this process's user) can change `dir`: owned by either, and
/// writable by no group or other.
fn only_we_write(dir: &Path) -> bool {
    let euid = nix::unistd::geteuid().as_raw();
    fs::metadata(dir)
        .is_ok_and(|m| (m.uid() == 0 || m.uid() == euid) && m.permissions().mode() & 0o022 == 0)
}

/// Whether a directory on the absolute `path` is a symbolic link.
fn has_linked_dir(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .any(|dir| fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()))
}

/// Flags of every open of a VM's path: nothing that outlives an exec, takes a terminal, or
/// blocks (a FIFO swapped in between the check and the open).
const OPEN_FLAGS: libc::c_int = libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// Opens `path` read-only, following its last component only if `follow`.
fn open_read(path: &Path, follow: bool) -> io::Result<File> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS | nofollow)
        .open(path)
}

/// Opens `path` read-only through no symbolic link at all, its directories included (ELOOP
/// otherwise); on a kernel without openat2 (before 5.6), through no link in its last component.
fn open_read_without_links(path: &Path) -> io::Result<File> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::from_bits_truncate(OPEN_FLAGS))
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(AT_FDCWD, path, how) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::ENOSYS) => open_read(path, false),
        Err(e) => Err(e.into()),
    }
}

/// Opens `path` (of VM `vm`) read-only as `expect` says, refusing anything but a regular file
/// or a block device: `wanted` says what was wanted, for that refusal ("a source must be …").
pub fn open_path(path: &Path, expect: Expect, vm: &str, wanted: &str) -> Result<Opened, Refusal> {
    let unreadable = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            refusal(SourceProblem::Missing, "does not exist")
        } else {
            refusal(SourceProblem::Unreadable, format!("cannot be read: {e}"))
        }
    };
    let now_link = || {
        refusal(
            SourceProblem::Changed,
            format!(
                "is now a symbolic link; it was not when VM '{vm}' was added, and rpfs does not \
                 follow a link the path did not have then (find out who replaced it; to capture \
                 through a link, add the VM with that path)"
            ),
        )
    };
    let lmeta = fs::symlink_metadata(path).map_err(unreadable)?;
    let follow = if lmeta.file_type().is_symlink() {
        let dir = path.parent().unwrap_or(Path::new("/"));
        match expect {
            Expect::AsAdded(AddedAs { symlink: true, .. }) => true,
            Expect::AsAdded(_) => return Err(now_link()),
            // A link is followed at every capture: one that other users could retarget would
            // let them choose what root reads.
            Expect::Adding if !only_we_write(dir) => {
                return Err(refusal(
                    SourceProblem::Unsupported,
                    format!(
                        "is a symbolic link in {}, a directory other users can write: they \
                         could point it at any file before a point is taken (give the file's \
                         own path, or keep the link in a directory only root writes)",
                        dir.display()
                    ),
                ));
            }
            Expect::Unrecorded if !only_we_write(dir) => {
                return Err(refusal(
                    SourceProblem::Changed,
                    format!(
                        "is a symbolic link in {}, a directory other users can write, \
                         and VM '{vm}' was added before rpfs recorded whether its paths \
                         were links: it is not followed (point the VM at the file itself)",
                        dir.display()
                    ),
                ));
            }
            Expect::Adding | Expect::Unrecorded => true,
        }
    } else {
        false
    };
    let checked = |meta: &Metadata| -> Result<PathKind, Refusal> {
        let kind = path_kind(meta)
            .map_err(|what| refusal(SourceProblem::Unsupported, format!("is {what}; {wanted}")))?;
        if let Expect::AsAdded(added) = expect
            && added.kind != kind
        {
            return Err(refusal(
                SourceProblem::Changed,
                format!(
                    "is now {}; it was {} when VM '{vm}' was added",
                    kind_name(kind),
                    kind_name(added.kind)
                ),
            ));
        }
        Ok(kind)
    };
    // What is opened is checked first, so that nothing that blocks or acts when opened (a FIFO,
    // a character device) ever is.
    let before = if follow {
        fs::metadata(path).map_err(unreadable)?
    } else {
        lmeta
    };
    checked(&before)?;
    let linked_dirs = match expect {
        Expect::Adding => has_linked_dir(path),
        Expect::AsAdded(added) => added.linked_dirs,
        // As before rpfs recorded it: the directories are followed.
        Expect::Unrecorded => true,
    };
    let file = if follow || linked_dirs {
        open_read(path, follow)
    } else {
        open_read_without_links(path)
    };
    let file = file.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) if !follow && !linked_dirs => refusal(
            SourceProblem::Changed,
            format!(
                "has a symbolic link on its path now (a directory was replaced by one); none was \
                 there when VM '{vm}' was added, and rpfs does not follow links a path did not \
                 have then (find out who replaced it)"
            ),
        ),
        Some(libc::ELOOP) if !follow => now_link(),
        _ => refusal(SourceProblem::Unreadable, format!("cannot be opened: {e}")),
    })?;
    let meta = file.metadata().map_err(unreadable)?;
    let kind = checked(&meta)?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(refusal(
            SourceProblem::Changed,
            "was replaced while being opened; retry",
        ));
    }
    // O_NONBLOCK only kept the open itself from blocking.
    let cleared = fcntl(&file, FcntlArg::F_GETFL).and_then(|fl| {
        let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
        fcntl(&file, FcntlArg::F_SETFL(fl))
    });
    cleared.map_err(|e| refusal(SourceProblem::Unreadable, format!("cannot be opened: {e}")))?;
    Ok(Opened {
        file,
        meta,
        added_as: AddedAs {
            symlink: follow,
            linked_dirs,
            kind,
        },
    })
}

/// Opens the configuration file `path` of VM `vm` as `expect` says: a regular file, and a
/// symbolic link only where it was one when the VM was added.
pub fn open_config(path: &Path, expect: Expect, vm: &str) -> Result<Opened> {
    let refuse = |problem, reason: String| Error::ConfigFile {
        vm: vm.to_string(),
        path: path.to_path_buf(),
        reason,
        problem,
    };
    let wanted = "a configuration file must be a regular file";
    let opened = open_path(path, expect, vm, wanted).map_err(|r| refuse(r.problem, r.reason))?;
    if opened.added_as.kind != PathKind::File {
        return Err(refuse(
            SourceProblem::Unsupported,
            format!("is a block device; {wanted}"),
        ));
    }
    Ok(opened)
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

/// Checks that the source of `disk` at `path` (of VM `vm`) is a raw image or block device, as
/// `expect` says, and returns its kind and size.
pub fn inspect(disk: &str, path: &Path, expect: Expect, vm: &str) -> Result<SourceInfo> {
    inspect_opened(disk, path, &open_source(disk, path, expect, vm)?)
}

/// Opens the source of `disk` at `path` (of VM `vm`) as `expect` says.
fn open_source(disk: &str, path: &Path, expect: Expect, vm: &str) -> Result<Opened> {
    open_path(
        path,
        expect,
        vm,
        "a source must be a raw disk image file or a block device",
    )
    .map_err(|r| source_error(disk, path, r.problem, r.reason))
}

/// Checks the opened source of `disk`: a raw image or block device, not empty; returns its
/// kind and size.
fn inspect_opened(disk: &str, path: &Path, opened: &Opened) -> Result<SourceInfo> {
    let unsupported = |reason: String| source_error(disk, path, SourceProblem::Unsupported, reason);
    let unreadable = |e: io::Error| {
        source_error(
            disk,
            path,
            SourceProblem::Unreadable,
            format!("cannot be read: {e}"),
        )
    };
    let (kind, size) = match opened.added_as.kind {
        PathKind::BlockDevice => {
            let size = (&opened.file).seek(SeekFrom::End(0)).map_err(unreadable)?;
            (SourceKind::BlockDevice, size)
        }
        PathKind::File => (SourceKind::File, opened.meta.len()),
    };
    if size == 0 {
        return Err(unsupported(
            "is empty (0 bytes); a disk needs a size".into(),
        ));
    }
    let mut head = [0u8; 0x48];
    let n = read_up_to(&opened.file, &mut head, 0).map_err(unreadable)?;
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
        SourceKind::File => (opened.meta.blocks() * 512).min(size),
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

/// A second descriptor of the file open as `file`, for O_DIRECT reads; reopened through
/// `/proc/self/fd`, which names the open file itself and not a path someone could change. `None`
/// where that fails: not every filesystem takes O_DIRECT (tmpfs does not); reads are then
/// buffered.
fn reopen_direct(file: &File) -> Option<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
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
    /// What the path is (recorded by `vm add`).
    pub added_as: AddedAs,
    backing: Backing,
}

/// What a source's bytes are read from.
#[derive(Debug)]
enum Backing {
    /// A file or block device; `direct` is its O_DIRECT descriptor where it takes one.
    File { file: File, direct: Option<File> },
    /// A disk restore point of another store (`rpfs migrate`).
    Image(ImageBacking),
}

/// A disk restore point read as a source: its holes are the image's, and blocks known to equal
/// the previous point's (same stored block in the source store) may be reported unchanged.
#[derive(Debug)]
struct ImageBacking {
    image: Arc<DiskImage>,
    /// Per block of `unchanged_unit` bytes: whether it is the stored block the previous
    /// migrated point of this disk had.
    unchanged: Option<(u64, Vec<bool>)>,
}

impl Source {
    /// Opens the source of `disk` at `path` (of VM `vm`) read-only, as `expect` says, and
    /// inspects it.
    pub fn open(disk: &str, path: &Path, expect: Expect, vm: &str) -> Result<Source> {
        let opened = open_source(disk, path, expect, vm)?;
        let info = inspect_opened(disk, path, &opened)?;
        Ok(Source {
            disk: disk.to_string(),
            path: path.to_path_buf(),
            info,
            added_as: opened.added_as,
            backing: Backing::File {
                direct: reopen_direct(&opened.file),
                file: opened.file,
            },
        })
    }

    /// Disk `disk` of a restore point (of another store) as a source, recorded with the source
    /// path `path` it had. `unchanged`: per block of `unit` bytes of the image, whether that
    /// block is known to read as the previous point's (see [`Source::unchanged_blocks`]).
    pub(crate) fn from_image(
        disk: &str,
        path: &Path,
        image: Arc<DiskImage>,
        unchanged: Option<(u64, Vec<bool>)>,
    ) -> Source {
        Source {
            disk: disk.to_string(),
            path: path.to_path_buf(),
            info: SourceInfo {
                kind: SourceKind::File,
                size: image.size(),
                allocated: image.allocated_bytes(),
            },
            added_as: AddedAs {
                symlink: false,
                linked_dirs: false,
                kind: PathKind::File,
            },
            backing: Backing::Image(ImageBacking { image, unchanged }),
        }
    }

    /// The same disk read from `clone`, a reflink clone of this source (same size), instead.
    pub fn with_clone(self, clone: File) -> Source {
        Source {
            backing: Backing::File {
                direct: reopen_direct(&clone),
                file: clone,
            },
            ..self
        }
    }

    /// The descriptor the source is read through; `None` for a restore point's image.
    pub fn file(&self) -> Option<&File> {
        match &self.backing {
            Backing::File { file, .. } => Some(file),
            Backing::Image(_) => None,
        }
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
        let (file, direct) = match &self.backing {
            Backing::File { file, direct } => (file, direct),
            Backing::Image(b) => {
                let n = b.image.read_at(offset, buf)?;
                buf[n..].fill(0);
                return Ok(());
            }
        };
        let aligned = buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64);
        let n = match direct {
            Some(direct) if aligned => match read_up_to(direct, buf, offset) {
                Ok(n) => n,
                // A device or filesystem that refuses this direct read: read it buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    read_up_to(file, buf, offset).map_err(|e| self.read_error(e))?
                }
                Err(e) => return Err(self.read_error(e)),
            },
            _ => read_up_to(file, buf, offset).map_err(|e| self.read_error(e))?,
        };
        buf[n..].fill(0);
        Ok(())
    }

    /// For blocks `first..first+count` of `block_size` bytes, whether each is known to read as
    /// the previous point of the same disk did (only a migrated restore point knows this): the
    /// caller may take those blocks from the previous point without reading them. `None`: no
    /// block is known unchanged.
    pub(crate) fn unchanged_blocks(
        &self,
        first: u64,
        count: u64,
        block_size: u64,
    ) -> Option<Vec<bool>> {
        let Backing::Image(ImageBacking {
            unchanged: Some((unit, known)),
            ..
        }) = &self.backing
        else {
            return None;
        };
        Some(all_units_unchanged(*unit, known, first, count, block_size))
    }

    /// For blocks `first..first+count` of `block_size` bytes, whether each may hold data. Holes
    /// of sparse files are found with SEEK_DATA/SEEK_HOLE and cost no reads; block devices and
    /// filesystems without hole reporting count as all data.
    pub fn data_blocks(&self, first: u64, count: u64, block_size: u64) -> Vec<bool> {
        let file = match &self.backing {
            Backing::File { .. } if self.info.kind == SourceKind::BlockDevice => {
                return vec![true; count as usize];
            }
            Backing::File { file, .. } => file,
            Backing::Image(b) => return image_data_blocks(&b.image, first, count, block_size),
        };
        let start = first * block_size;
        let end = ((first + count) * block_size).min(self.info.size);
        let mut mask = vec![false; count as usize];
        let mut pos = start;
        while pos < end {
            let data = match lseek(file, pos as i64, Whence::SeekData) {
                Ok(d) => d as u64,
                // ENXIO: no data after `pos`.
                Err(nix::errno::Errno::ENXIO) => break,
                Err(_) => return vec![true; count as usize],
            };
            if data >= end {
                break;
            }
            let hole = match lseek(file, data as i64, Whence::SeekHole) {
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

/// For blocks `first..first+count` of `block_size` bytes, whether every unit of `unit` bytes
/// each overlaps is `known` unchanged (units past the end of `known` are past the end of the
/// disk, where nothing changes).
fn all_units_unchanged(
    unit: u64,
    known: &[bool],
    first: u64,
    count: u64,
    block_size: u64,
) -> Vec<bool> {
    (first..first + count)
        .map(|b| {
            let start = b * block_size / unit;
            let end = ((b + 1) * block_size).div_ceil(unit);
            (start..end).all(|u| known.get(u as usize).copied().unwrap_or(true))
        })
        .collect()
}

/// [`Source::data_blocks`] of a restore point's image, from its map: no storage is read.
fn image_data_blocks(image: &DiskImage, first: u64, count: u64, block_size: u64) -> Vec<bool> {
    let start = first * block_size;
    let end = ((first + count) * block_size).min(image.size());
    let mut mask = vec![false; count as usize];
    let mut pos = start;
    while pos < end {
        let Some(data) = image.next_data_before(pos, end) else {
            break;
        };
        let hole = image.next_hole_before(data, end).max(data + 1);
        let (a, b) = (data / block_size, hole.div_ceil(block_size));
        for m in &mut mask[(a - first) as usize..(b - first) as usize] {
            *m = true;
        }
        pos = hole;
    }
    mask
}

#[cfg(test)]
mod tests;
