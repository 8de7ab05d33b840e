//! Memory of the mount daemon while browsing a large guest tree: a guest filesystem of over
//! 200,000 entries is walked through a real mount (every entry looked up and stat'ed), the
//! kernel is made to forget its inodes, and the tree is walked again. What the daemon keeps per
//! guest file lasts only while the kernel holds the file (FUSE forget), so the inode count it
//! reports drops back once the kernel forgets, and its memory after the second walk is within
//! 10% of after the first.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::common::mount::{MountGuard, fuse_or_skip, rss};
use crate::common::store::TestStore;
use crate::common::sys::{require_tool, root_or_skip, sh, wait_until};

/// Directories and files per directory of the tree: 400 × 500 files + 400 directories.
const DIRS: usize = 400;
const FILES: usize = 500;

/// Inodes the mount reports in use (`statfs` f_files: what the kernel holds or a listing named).
fn inodes_in_use(mountpoint: &Path) -> u64 {
    sh(&format!("stat -f -c %c '{}'", mountpoint.display()))
        .trim()
        .parse()
        .expect("f_files")
}

/// Walks `dir`, stat'ing every entry (each a lookup through the mount); returns the entries.
fn walk(dir: &Path) -> usize {
    let out = sh(&format!(
        "find '{}' -printf '%i %s\\n' | wc -l",
        dir.display()
    ));
    out.trim().parse().expect("count")
}

/// Makes the kernel drop its cached dentries and inodes, which sends FORGET for ours.
fn forget_everything() {
    sh("sync; echo 2 > /proc/sys/vm/drop_caches");
}

#[test]
fn browsing_a_200000_entry_tree_twice_leaves_the_daemon_as_large_as_once() {
    if !fuse_or_skip("browsing_a_200000_entry_tree_twice_leaves_the_daemon_as_large_as_once")
        || !root_or_skip("browsing_a_200000_entry_tree_twice_leaves_the_daemon_as_large_as_once")
    {
        return;
    }
    require_tool("mkfs.ext4");
    let ts = TestStore::new(64 * 1024);
    let tree = ts.path("tree");
    for d in 0..DIRS {
        let dir = tree.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES {
            fs::File::create(dir.join(format!("file-{f:04}"))).expect("file");
        }
    }
    let image = ts.path("os.img");
    // Enough inodes for every entry (the default ratio gives a 1 GiB disk ~65,000).
    sh(&format!(
        "mkfs.ext4 -q -F -b 4096 -N {} -E root_owner=0:0 -d '{}' '{}' 1G",
        DIRS * (FILES + 1) + 1000,
        tree.display(),
        image.display()
    ));
    fs::remove_dir_all(&tree).expect("remove tree");
    ts.vm("vm", &[("os", &image)], "c");
    ts.create("c", "p1");
    let m = MountGuard::new(&ts.store_path(), &[]);
    let root = m.path("c/p1/files/os");
    let entries = DIRS * (FILES + 1) + 1;

    assert!(walk(&root) >= entries, "the first walk saw every entry");
    let held = inodes_in_use(&m.mountpoint);
    assert!(
        held as usize >= DIRS * FILES,
        "the kernel holds every file: {held}"
    );
    let first = rss(m.pid());

    forget_everything();
    wait_until(
        "the daemon forgets what the kernel forgot",
        Duration::from_secs(30),
        || inodes_in_use(&m.mountpoint) < 1000,
    );

    assert!(walk(&root) >= entries, "the second walk saw every entry");
    let second = rss(m.pid());
    eprintln!(
        "daemon RSS after the first walk {} MiB, after the second {} MiB ({held} inodes held)",
        first >> 20,
        second >> 20
    );
    assert!(
        second as f64 <= first as f64 * 1.10,
        "RSS grew from {first} to {second} bytes between two walks of the same tree"
    );
}
