//! Source disk images and what is inside them: sparse writes, random and mixed images, blocks
//! changed between points, file trees, real ext4 images (`mkfs.ext4 -d`) and where their inode
//! table lies, and the partitions `sfdisk` sees in an image.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

use super::sys::{require_tool, sh};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// Writes `content` to `path`, leaving all-zero 4 KiB pages as holes.
pub fn write_sparse(path: &Path, content: &[u8]) {
    let f = File::create(path).expect("create image");
    f.set_len(content.len() as u64).expect("size");
    for (i, page) in content.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            f.write_all_at(page, i as u64 * 4096).expect("write");
        }
    }
    f.sync_all().expect("sync");
}

/// A random raw image of `size` bytes at `path`; returns its content.
pub fn random_image(path: &Path, size: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut content = vec![0u8; size];
    rng.fill_bytes(&mut content);
    write_sparse(path, &content);
    content
}

/// Writes a sparse image of `size` bytes: random extents separated by holes and zeros.
pub fn mixed_image(path: &Path, size: u64, rng: &mut StdRng) -> Vec<u8> {
    let mut content = vec![0u8; size as usize];
    let mut off = 0u64;
    while off < size {
        let len = rng.random_range(16 * KIB..2 * MIB).min(size - off);
        if rng.random_bool(0.5) {
            rng.fill_bytes(&mut content[off as usize..(off + len) as usize]);
        }
        off += len;
    }
    write_sparse(path, &content);
    content
}

/// Overwrites `fraction` of the `block_size` blocks of `content` with random bytes, writing the
/// changes to `path` too. Returns the changed block numbers.
pub fn change_blocks(
    path: &Path,
    content: &mut [u8],
    block_size: u64,
    fraction: f64,
    rng: &mut StdRng,
) -> Vec<u64> {
    let blocks = (content.len() as u64).div_ceil(block_size);
    let n = ((blocks as f64 * fraction).round() as u64).max(1);
    let mut chosen: Vec<u64> = rand::seq::index::sample(rng, blocks as usize, n as usize)
        .into_iter()
        .map(|b| b as u64)
        .collect();
    chosen.sort();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    for &b in &chosen {
        let start = (b * block_size) as usize;
        let end = (start + block_size as usize).min(content.len());
        rng.fill_bytes(&mut content[start..end]);
        f.write_all_at(&content[start..end], start as u64)
            .expect("write");
    }
    f.sync_all().expect("sync");
    chosen
}

/// Fills `dir` with a small tree of files of random content.
pub fn file_tree(dir: &Path, files: usize, rng: &mut StdRng) {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 5));
        fs::create_dir_all(&sub).expect("mkdir");
        let len = rng.random_range(0..200 * KIB as usize);
        let mut data = vec![0u8; len];
        // Half random, half text: a realistic mix of compressible and incompressible data.
        if i % 2 == 0 {
            rng.fill_bytes(&mut data);
        } else {
            for (j, b) in data.iter_mut().enumerate() {
                *b = b"the quick brown fox jumps over the lazy dog\n"[j % 44];
            }
        }
        fs::write(sub.join(format!("f{i}.bin")), data).expect("write file");
    }
}

/// Makes a real ext4 image of `size` bytes from the files in `tree` (`mkfs.ext4 -d`).
pub fn ext4_image(tree: &Path, image: &Path, size: u64) {
    require_tool("mkfs.ext4");
    let _ = fs::remove_file(image);
    sh(&format!(
        "mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d '{}' '{}' {}k",
        tree.display(),
        image.display(),
        size / KIB
    ));
}

/// Byte offset of the first inode table of the ext4 image at `image` (from `dumpe2fs`; 4 KiB
/// blocks).
pub fn inode_table_offset(image: &Path) -> u64 {
    let dump = sh(&format!("dumpe2fs '{}' 2>/dev/null", image.display()));
    let block: u64 = dump
        .lines()
        .find_map(|l| {
            let at = l.trim().strip_prefix("Inode table at ")?;
            at.split('-').next()?.trim().parse().ok()
        })
        .expect("inode table location");
    block * 4096
}

/// The partitions `sfdisk -J` reports for the image at `path`: (number, start, length in bytes,
/// type), extended containers included.
pub fn sfdisk_partitions(path: &Path) -> Vec<(u32, u64, u64, String)> {
    let dump = sh(&format!("sfdisk -J '{}'", path.display()));
    let v: serde_json::Value = serde_json::from_str(&dump).expect("sfdisk json");
    let mut parts = Vec::new();
    for p in v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
    {
        let node = p["node"].as_str().expect("node");
        let number: u32 = node
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .expect("number");
        parts.push((
            number,
            p["start"].as_u64().expect("start") * 512,
            p["size"].as_u64().expect("size") * 512,
            p["type"].as_str().unwrap_or_default().to_string(),
        ));
    }
    parts
}
