//! NTFS through the `ntfs` crate, read-only.
//!
//! Invariants: inode numbers are MFT record numbers (hard links share one; the root is record
//! 5); each name is listed once (a DOS 8.3 alias of a long name is not); the metadata files
//! (records below 24, `$MFT` and the like) are not listed; only the unnamed data stream is read,
//! and compressed or encrypted data is an error, never raw bytes. NTFS has no Unix owners or
//! modes: directories are 0755 and files 0644 (0444 when read-only), owned by the mount's owner.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsError, NtfsFile, NtfsReadSeek, NtfsTime};

use super::backend::{
    Backend, DirItem, GuestAttr, GuestError, GuestKind, MAX_DIR_ENTRIES, Source, Stream, Unreadable,
};

/// MFT record of the root directory.
const ROOT_RECORD: u64 = 5;
/// Records below this one belong to the filesystem itself.
const FIRST_USER_RECORD: u64 = 24;
/// 100 ns intervals from 1601-01-01 (NTFS time) to 1970-01-01.
const UNIX_EPOCH_NT: u64 = 116_444_736_000_000_000;

pub struct NtfsFs {
    ntfs: Ntfs,
    fs: BufReader<Stream>,
}

/// Loads the NTFS filesystem in `source` (boot sector, MFT, upcase table).
pub fn open(source: Arc<dyn Source>) -> Result<Box<dyn Backend>, GuestError> {
    let mut fs = BufReader::with_capacity(64 * 1024, Stream::new(source));
    let mut ntfs = Ntfs::new(&mut fs).map_err(damaged)?;
    ntfs.read_upcase_table(&mut fs).map_err(damaged)?;
    Ok(Box::new(NtfsFs { ntfs, fs }))
}

fn damaged(e: NtfsError) -> GuestError {
    GuestError::Damaged(format!("NTFS: {e}"))
}

fn time(t: NtfsTime) -> SystemTime {
    let t = t.nt_timestamp();
    match t.checked_sub(UNIX_EPOCH_NT) {
        Some(since) => UNIX_EPOCH + Duration::from_nanos(since.saturating_mul(100)),
        None => UNIX_EPOCH - Duration::from_nanos((UNIX_EPOCH_NT - t).saturating_mul(100)),
    }
}

/// Attributes of `file`.
fn attr_of<T: Read + Seek>(fs: &mut T, file: &NtfsFile<'_>) -> Result<GuestAttr, GuestError> {
    let info = file.info().map_err(damaged)?;
    let dir = file.is_directory();
    let size = if dir {
        0
    } else {
        match file.data(fs, "") {
            Some(item) => item
                .map_err(damaged)?
                .to_attribute()
                .map_err(damaged)?
                .value_length(),
            None => 0,
        }
    };
    let read_only = info
        .file_attributes()
        .contains(NtfsFileAttributeFlags::READ_ONLY);
    Ok(GuestAttr {
        ino: file.file_record_number(),
        kind: if dir {
            GuestKind::Directory
        } else {
            GuestKind::File
        },
        size,
        blocks: size.div_ceil(512),
        perm: match (dir, read_only) {
            (true, _) => 0o755,
            (false, true) => 0o444,
            (false, false) => 0o644,
        },
        nlink: u32::from(file.hard_link_count()).max(1),
        uid: None,
        gid: None,
        atime: time(info.access_time()),
        mtime: time(info.modification_time()),
        ctime: time(info.mft_record_modification_time()),
        rdev: 0,
    })
}

impl Backend for NtfsFs {
    fn root(&mut self) -> Result<GuestAttr, GuestError> {
        let ntfs = &self.ntfs;
        let root = ntfs.root_directory(&mut self.fs).map_err(damaged)?;
        let mut attr = attr_of(&mut self.fs, &root)?;
        attr.ino = ROOT_RECORD;
        Ok(attr)
    }

    fn list(&mut self, _path: &[u8], ino: u64) -> Result<Vec<DirItem>, GuestError> {
        let ntfs = &self.ntfs;
        let fs = &mut self.fs;
        let dir = ntfs.file(fs, ino).map_err(damaged)?;
        let index = dir.directory_index(fs).map_err(damaged)?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(entry) = entries.next(fs) {
            let entry = entry.map_err(damaged)?;
            let Some(key) = entry.key() else {
                continue;
            };
            let name = key.map_err(damaged)?;
            let record = entry.file_reference().file_record_number();
            if name.namespace() == NtfsFileNamespace::Dos || record < FIRST_USER_RECORD {
                continue;
            }
            let dir_flag = name.is_directory();
            let name = name
                .name()
                .to_string()
                .map_err(|e| GuestError::Damaged(format!("NTFS: a name: {e}")))?;
            if out.len() == MAX_DIR_ENTRIES {
                return Err(GuestError::Damaged(format!(
                    "NTFS: a directory with more than {MAX_DIR_ENTRIES} entries"
                )));
            }
            // The entry's own file record may be damaged: that fails this entry alone.
            let item = entry
                .to_file(ntfs, fs)
                .map_err(damaged)
                .and_then(|file| attr_of(fs, &file))
                .map_err(|e| Unreadable {
                    ino: record,
                    kind: if dir_flag {
                        GuestKind::Directory
                    } else {
                        GuestKind::File
                    },
                    why: e.to_string(),
                });
            out.push((name.into_bytes(), item));
        }
        Ok(out)
    }

    fn read_link(&mut self, _: &[u8]) -> Result<Vec<u8>, GuestError> {
        Err(GuestError::NotFile)
    }

    fn read(
        &mut self,
        _path: &[u8],
        ino: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, GuestError> {
        let ntfs = &self.ntfs;
        let fs = &mut self.fs;
        let file = ntfs.file(fs, ino).map_err(damaged)?;
        let Some(item) = file.data(fs, "") else {
            return Ok(0);
        };
        let item = item.map_err(damaged)?;
        let data = item.to_attribute().map_err(damaged)?;
        if data
            .flags()
            .intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED)
        {
            return Err(GuestError::Damaged(
                "NTFS: compressed and encrypted files are not read".into(),
            ));
        }
        // Past its initialized size a file reads as zeros (NTFS does not write them), which
        // the `ntfs` crate does not know: read the size from the attribute header (0x38).
        let initialized = if data.is_resident() {
            u64::MAX
        } else {
            let at = data
                .position()
                .value()
                .ok_or_else(|| GuestError::Damaged("NTFS: an attribute with no position".into()))?
                .get()
                + 0x38;
            if at % 512 > 502 {
                // It would straddle a sector's update sequence bytes; refuse rather than guess.
                return Err(GuestError::Damaged(
                    "NTFS: an initialized size that cannot be read".into(),
                ));
            }
            let mut raw = [0u8; 8];
            fs.seek(SeekFrom::Start(at))
                .and_then(|_| fs.read_exact(&mut raw))
                .map_err(|e| GuestError::Damaged(format!("NTFS: {e}")))?;
            u64::from_le_bytes(raw)
        };
        let mut value = data.value(fs).map_err(damaged)?;
        value.seek(fs, SeekFrom::Start(offset)).map_err(damaged)?;
        let n = super::backend::fill(buf, |b| value.read(fs, b).map_err(damaged))?;
        let valid = usize::try_from(initialized.saturating_sub(offset)).unwrap_or(usize::MAX);
        if valid < n {
            buf[valid..n].fill(0);
        }
        Ok(n)
    }
}
