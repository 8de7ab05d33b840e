//! Restoring a point to a directory: each disk as a sparse raw image, the captured configuration
//! verbatim, and whatever documents the caller adds (the CLI adds the point's resource JSON).
//!
//! Invariants: existing files are never overwritten (the restore is refused before writing
//! anything); each image is written under a `.partial` name, fsynced, re-read and compared block
//! by block with the hashes of what was meant to be written, and only then renamed to its final
//! name. Holes and all-zero blocks are not written, so the image is as sparse as the point.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::error::{Error, Result};
use super::progress::Progress;
use super::{DiskImage, Engine};
use crate::store::block;

/// Blocks read (and decoded on all cores) per batch while restoring.
const BATCH_BLOCKS: u64 = 64;

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
}

/// The file name a disk is restored to.
pub fn image_file_name(disk: &str) -> String {
    format!("{disk}.img")
}

/// File name of the restored configuration.
pub const CONFIG_FILE: &str = "vm-config";

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
        let images: Vec<DiskImage> = disks
            .iter()
            .map(|d| self.open_disk(&coll.name, point, d))
            .collect::<Result<_>>()?;
        let targets: Vec<PathBuf> = disks
            .iter()
            .map(|d| req.to.join(image_file_name(d)))
            .chain([req.to.join(CONFIG_FILE)])
            .chain(req.documents.iter().map(|(name, _)| req.to.join(name)))
            .collect();
        if let Some(existing) = targets.iter().find(|p| p.exists()) {
            return Err(Error::Exists {
                what: "file",
                name: format!("{} (rpfs restore never overwrites)", existing.display()),
            });
        }
        let config = self.point_config(point)?;
        fs::create_dir_all(&req.to).map_err(write_error(&req.to))?;

        let total: u64 = images.iter().map(|i| i.size()).sum();
        progress.begin(&format!("{}/{}", coll.name, point.name), total);
        let mut bytes_written = 0;
        for (image, target) in images.iter().zip(&targets) {
            bytes_written += restore_image(image, target, progress)?;
        }
        progress.end();

        let files = [(CONFIG_FILE, &config)]
            .into_iter()
            .chain(req.documents.iter().map(|(n, b)| (n.as_str(), b)));
        for (name, bytes) in files {
            write_new(&req.to.join(name), bytes)?;
        }
        File::open(&req.to)
            .and_then(|d| d.sync_all())
            .map_err(write_error(&req.to))?;
        Ok(RestoreOutcome {
            files: targets,
            bytes_written,
            image_bytes: total,
            elapsed: started.elapsed(),
        })
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(write_error(path))?;
    f.write_all(bytes).map_err(write_error(path))?;
    f.sync_all().map_err(write_error(path))
}

/// Writes one image sparsely, verifies it, and publishes it. Returns data bytes written.
fn restore_image(image: &DiskImage, target: &Path, progress: &dyn Progress) -> Result<u64> {
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(write_error(&partial))?;
    let result = write_and_verify(image, &file, &partial, progress);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
        return result;
    }
    fs::rename(&partial, target).map_err(write_error(target))?;
    result
}

fn write_and_verify(
    image: &DiskImage,
    file: &File,
    path: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let size = image.size();
    let bs = u64::from(image.block_size());
    file.set_len(size).map_err(write_error(path))?;
    let blocks = image.map().entries.len() as u64;
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
