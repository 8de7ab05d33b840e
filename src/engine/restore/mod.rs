//! Restoring a point to a directory: each disk as a sparse raw image, the captured configuration
//! verbatim, and whatever documents the caller adds (the CLI adds the point's resource JSON).
//!
//! `target` holds the target directory's side of the invariants below (walk, create, publish,
//! leftovers); this module decides what to write and verifies it.
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

mod target;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::error::{Error, Result};
use super::progress::Progress;
use super::{DiskImage, Engine};
use crate::store::block;
use crate::store::corrupt::{Corrupt, CorruptKind};
use crate::store::layout;
use crate::store::records::safe_name;

pub use target::TEMP_PREFIX;
use target::{Target, set_mode};

/// Blocks read (and decoded on all cores) per batch while restoring.
const BATCH_BLOCKS: u64 = 64;

/// Mode of restored files unless the request asks otherwise: the owner's only.
pub const DEFAULT_MODE: u32 = 0o600;

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
    let blocks = image.block_count();
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
}
