//! File-level restore through a real mount: `files/<disk>/p<N>/…` and `files/<disk>/…` show the
//! files of ext4 and FAT filesystems inside a point (made with `mkfs.ext4 -d`, `mkfs.fat` and
//! `mcopy`), faithfully enough for `diff -r`, `stat`, `cp -a`; to unprivileged users as the
//! guest's modes allow; each generation as it was; and damage in one filesystem stays there.
//!
//! One module for ext4 and FAT, one for NTFS, one for the daemon's memory over a large guest
//! tree; the guest trees, the disk builder and the GPT fixture they share are here.

mod ext4_fat;
mod memory;
mod ntfs;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use crate::common::images::{KIB, MIB, ext4_image, sfdisk_partitions};
use crate::common::store::TestStore;
use crate::common::sys::{is_root, require_tool, rng, seed, sh};

/// Seconds since the epoch for the times set in the trees (mkfs.ext4 -d keeps whole seconds,
/// FAT even ones).
const T0: u64 = 1_600_000_000;

/// The tree the ext4 partition is made from: nested directories, a large file, empty files,
/// symlinks (absolute, relative, dangling), a hard link, unusual names, modes 0600/0755/4755,
/// another owner, special files (as root), a 10,000-entry directory and set times.
fn guest_tree(dir: &Path) {
    let mut r = rng(seed());
    fs::create_dir_all(dir.join("etc/deep/er/still")).expect("mkdir");
    fs::create_dir_all(dir.join("home/user/.config")).expect("mkdir");
    let mut big = vec![0u8; 12 * MIB as usize + 12_345];
    rand::RngCore::fill_bytes(&mut r, &mut big);
    fs::write(dir.join("home/user/big.bin"), &big).expect("big");
    fs::write(dir.join("etc/deep/er/still/leaf.txt"), "deep\n").expect("leaf");
    fs::write(dir.join("empty"), "").expect("empty");
    fs::write(dir.join("home/user/.config/empty too"), "").expect("empty");
    fs::write(dir.join("etc/shadow"), "root:secret\n").expect("shadow");
    fs::write(dir.join("etc/motd"), "hello\n").expect("motd");
    fs::write(dir.join("home/user/run.sh"), "#!/bin/sh\necho hi\n").expect("script");
    fs::write(dir.join("suid"), "not really\n").expect("suid");
    for name in [
        "with space",
        "ünïcödé ✓",
        "-starts-with-dash",
        "#semi;colon&amp'quote\"",
        &"n".repeat(255),
    ] {
        fs::write(dir.join("etc").join(name), name).expect("odd name");
    }
    std::os::unix::fs::symlink("/etc/passwd", dir.join("abs-link")).expect("symlink");
    std::os::unix::fs::symlink("etc/deep", dir.join("rel-link")).expect("symlink");
    std::os::unix::fs::symlink("nowhere/at/all", dir.join("dangling")).expect("symlink");
    fs::hard_link(dir.join("etc/motd"), dir.join("home/motd-link")).expect("hard link");
    fs::create_dir(dir.join("many")).expect("many");
    for i in 0..10_000 {
        fs::write(dir.join(format!("many/f{i:05}")), "").expect("many file");
    }
    let private = dir.join("home/user/private");
    fs::create_dir(&private).expect("private dir");
    fs::write(private.join("note"), "secret\n").expect("note");
    sh(&format!(
        "cd '{}' && chmod 0600 etc/shadow && chmod 0755 home/user/run.sh && chmod 4755 suid \
         && chmod 0700 home/user/private && chown -R 1000:1000 home/user",
        dir.display()
    ));
    if is_root() {
        sh(&format!(
            "cd '{}' && mkfifo fifo && mknod null c 1 3 && mknod loop9 b 7 9",
            dir.display()
        ));
    }
    // Times last, children before parents, each different: whole seconds.
    set_times(dir, T0, 7);
}

/// Gives every entry under `dir` its own mtime and atime, `T0 + n * step` seconds for the n-th
/// entry, children before their directory (setting a child's time leaves its parent's alone).
fn set_times(dir: &Path, t0: u64, step: u64) {
    fn walk(p: &Path, out: &mut Vec<std::path::PathBuf>) {
        if fs::symlink_metadata(p).expect("lstat").is_dir() {
            let mut children: Vec<_> = fs::read_dir(p)
                .expect("list")
                .map(|e| e.expect("entry").path())
                .collect();
            children.sort();
            for c in children {
                walk(&c, out);
            }
        }
        out.push(p.to_path_buf());
    }
    let mut all = Vec::new();
    walk(dir, &mut all);
    let mut links = String::new();
    for (n, p) in all.iter().enumerate() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(t0 + n as u64 * step);
        let kind = fs::symlink_metadata(p).expect("lstat").file_type();
        if kind.is_symlink() || kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
            // std sets times through an open file; these get `touch -h`.
            links.push_str(&format!(
                "touch -h -d @{} '{}'\n",
                t0 + n as u64 * step,
                p.display()
            ));
            continue;
        }
        let f = fs::File::open(p).expect("open for times");
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .expect("set times");
    }
    sh(&links);
}

/// A FAT tree like an EFI system partition: mcopy -m keeps (even-second) times.
fn fat_tree(dir: &Path) {
    let mut r = rng(seed() ^ 1);
    fs::create_dir_all(dir.join("EFI/BOOT")).expect("mkdir");
    fs::create_dir_all(dir.join("EFI/debian")).expect("mkdir");
    let mut efi = vec![0u8; 900_000];
    rand::RngCore::fill_bytes(&mut r, &mut efi);
    fs::write(dir.join("EFI/BOOT/BOOTX64.EFI"), &efi).expect("efi");
    fs::write(dir.join("EFI/debian/grub.cfg"), "search --fs-uuid\n").expect("cfg");
    fs::write(dir.join("Long File Name.txt"), "long names are VFAT\n").expect("lfn");
    set_times(dir, T0, 10);
}

fn fat_image(tree: &Path, image: &Path, size: u64) {
    require_tool("mkfs.fat");
    require_tool("mcopy");
    sh(&format!(
        "truncate -s {size} '{img}' && mkfs.fat '{img}' >/dev/null && \
         mcopy -s -m -i '{img}' '{tree}'/* ::/",
        img = image.display(),
        tree = tree.display()
    ));
}

/// A disk with table `script` (sfdisk) and the given filesystem images copied into partitions
/// (by sfdisk's numbering); returns each partition's (number, start, length) in bytes.
fn disk(path: &Path, size: u64, script: &str, images: &[(u32, &Path)]) -> Vec<(u32, u64, u64)> {
    require_tool("sfdisk");
    sh(&format!(
        "truncate -s {size} '{p}' && printf '{script}' | sfdisk -q '{p}' >/dev/null",
        p = path.display()
    ));
    let parts: Vec<(u32, u64, u64)> = sfdisk_partitions(path)
        .into_iter()
        .map(|(n, start, len, _)| (n, start, len))
        .collect();
    for &(n, image) in images {
        let &(_, start, len) = parts.iter().find(|p| p.0 == n).expect("partition");
        assert!(fs::metadata(image).expect("image").len() <= len);
        sh(&format!(
            "dd if='{}' of='{}' bs=64K seek={start} oflag=seek_bytes conv=notrunc,sparse status=none",
            image.display(),
            path.display()
        ));
    }
    parts
}

struct Fixture {
    ts: TestStore,
    tree: std::path::PathBuf,
    fat: std::path::PathBuf,
    disk: std::path::PathBuf,
    parts: Vec<(u32, u64, u64)>,
}

/// A VM with a GPT disk `gpt` holding ext4 (p1) and FAT (p2), and point `c/p1` of it.
fn fixture() -> Fixture {
    let ts = TestStore::new(64 * KIB as u32);
    let (tree, fatdir) = (ts.path("tree"), ts.path("fat"));
    fs::create_dir(&tree).expect("tree");
    fs::create_dir(&fatdir).expect("fat");
    guest_tree(&tree);
    fat_tree(&fatdir);
    let (ext, fat, disk_path) = (ts.path("ext4.img"), ts.path("fat.img"), ts.path("gpt.img"));
    ext4_image(&tree, &ext, 48 * MIB);
    fat_image(&fatdir, &fat, 16 * MIB);
    let parts = disk(
        &disk_path,
        72 * MIB,
        "label: gpt\\n,48MiB\\n,16MiB\\n",
        &[(1, &ext), (2, &fat)],
    );
    ts.vm("vm", &[("gpt", &disk_path)], "c");
    ts.create("c", "p1");
    Fixture {
        ts,
        tree,
        fat: fatdir,
        disk: disk_path,
        parts,
    }
}
