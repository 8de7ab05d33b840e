//! Security tests: guest (see the module list in `security`). Root mounts a store with
//! `--allow-other`; nobody must not be able to grow the daemon's memory without bound by listing
//! large guest directories in many points (open guest filesystems and their listings are
//! bounded and released when idle), and one damaged guest inode must fail alone: its directory
//! still lists and its healthy neighbours still read, byte for byte.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::attacker::umask_022;
use crate::common::images::{MIB, ext4_image};
use crate::common::mount::{MountGuard, as_nobody, fuse_or_skip, names_in, rss};
use crate::common::store::TestStore;
use crate::common::sys::{require_tool, rng, root_or_skip, seed, sh};

/// Points of the memory test, and entries of the directory listed in each.
const POINTS: usize = 20;
const ENTRIES: usize = 20_000;
/// Most the daemon may hold after nobody listed the directory in every point: the guest
/// filesystems kept open and their listings are bounded well under this (the old daemon grew
/// to over 300 MB here).
const RSS_CEILING: u64 = 100 << 20;
/// Most the daemon may grow over the second half of the points: once the guest filesystems
/// and listings it keeps are at their ceilings, more points cost nothing (the old daemon grew
/// by ~6 MiB a point).
const SECOND_HALF_GROWTH: u64 = 16 << 20;
/// Idle time after which the test's daemon releases its guest filesystems
/// (`RPFS_GUEST_IDLE_SECS`).
const IDLE_SECS: u64 = 2;

#[test]
fn listing_a_large_guest_directory_in_many_points_keeps_the_daemon_bounded() {
    let name = "listing_a_large_guest_directory_in_many_points_keeps_the_daemon_bounded";
    if !fuse_or_skip(name) || !root_or_skip(name) {
        return;
    }
    require_tool("mkfs.ext4");
    umask_022();
    let ts = TestStore::new(64 * 1024);
    let tree = ts.path("tree");
    let big = tree.join("big");
    fs::create_dir_all(&big).expect("mkdir");
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).expect("chmod tree");
    for i in 0..ENTRIES {
        fs::File::create(big.join(format!("an-entry-with-a-fairly-long-name-{i:05}")))
            .expect("file");
    }
    let image = ts.path("os.img");
    sh(&format!(
        "mkfs.ext4 -q -F -b 4096 -N {} -E root_owner=0:0 -d '{}' '{}' 128M",
        ENTRIES + 1000,
        tree.display(),
        image.display()
    ));
    fs::remove_dir_all(&tree).expect("remove tree");
    ts.vm("vm", &[("os", &image)], "c");
    for p in 0..POINTS {
        // A small change between points (the image's last block, which the filesystem leaves
        // free), so each point is its own.
        sh(&format!(
            "printf 'point {p}' | dd of='{}' bs=1 seek={} conv=notrunc status=none",
            image.display(),
            128 * MIB - 4096
        ));
        ts.create("c", &format!("p{p:02}"));
    }
    // The block cache has its own ceiling (`--cache-size`); kept small so that what is
    // measured is what guest filesystems and listings keep (the daemon limits glibc to two
    // arenas itself, so freed memory is not multiplied by its thread count).
    let m = MountGuard::wrapped(
        &ts.store_path(),
        &["--allow-other", "--cache-size", "16M"],
        &format!("export RPFS_GUEST_IDLE_SECS={IDLE_SECS};"),
    );
    let pid = m.pid();
    let before = rss(pid);
    let mut peak = before;
    let mut half = 0;
    for p in 0..POINTS {
        let out = as_nobody(&m, &format!("ls -f c/p{p:02}/files/os/big | wc -l"));
        assert!(
            out.status.success(),
            "nobody lists p{p:02}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("count");
        assert_eq!(listed, ENTRIES + 2, "p{p:02} lists every entry, . and ..");
        peak = peak.max(rss(pid));
        eprintln!("after p{p:02}: {} MiB", rss(pid) >> 20);
        if p + 1 == POINTS / 2 {
            half = rss(pid);
        }
    }
    let after = rss(pid);
    eprintln!(
        "daemon RSS before {} MiB, peak {} MiB, after {} MiB",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(
        peak < RSS_CEILING,
        "the daemon grew to {} MiB listing {POINTS} points (ceiling {} MiB)",
        peak >> 20,
        RSS_CEILING >> 20
    );
    assert!(
        after.saturating_sub(half) < SECOND_HALF_GROWTH,
        "the daemon grew from {} MiB to {} MiB over the second half of the points",
        half >> 20,
        after >> 20
    );
    // Idle, the guest filesystems are released: the daemon stays as small or shrinks.
    std::thread::sleep(Duration::from_secs(IDLE_SECS * 3));
    let idle = rss(pid);
    eprintln!("daemon RSS after idling {} MiB", idle >> 20);
    assert!(
        idle <= after,
        "the daemon grew from {after} to {idle} bytes while idle"
    );
    // What was released is reopened on demand, and still lists in full.
    let out = as_nobody(&m, "ls -f c/p00/files/os/big | wc -l");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (ENTRIES + 2).to_string()
    );
}

/// Healthy files of the damaged-inode test: (path in the guest, size).
const HEALTHY: [(&str, usize); 4] = [
    ("docs/a.txt", 1000),
    ("docs/b.bin", 300_000),
    ("docs/z.txt", 5),
    ("root-ok.bin", 70_000),
];
/// Files whose inode size the test sets to 2^48 - 1.
const DAMAGED: [&str; 2] = ["docs/bad.txt", "root-bad.txt"];

/// Asserts `r` failed with EIO.
#[track_caller]
fn assert_eio<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        other => panic!("{what}: want EIO, got {other:?}"),
    }
}

#[test]
fn a_damaged_guest_inode_fails_alone() {
    let name = "a_damaged_guest_inode_fails_alone";
    if !fuse_or_skip(name) || !root_or_skip(name) {
        return;
    }
    require_tool("debugfs");
    let ts = TestStore::new(64 * 1024);
    let tree = ts.path("tree");
    fs::create_dir_all(tree.join("docs")).expect("mkdir");
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).expect("chmod tree");
    let mut r = rng(seed());
    let mut contents = Vec::new();
    for (path, size) in HEALTHY {
        let mut data = vec![0u8; size];
        rand::RngCore::fill_bytes(&mut r, &mut data);
        fs::write(tree.join(path), &data).expect("write");
        contents.push((path, data));
    }
    for path in DAMAGED {
        fs::write(tree.join(path), "damaged\n").expect("write");
    }
    let image = ts.path("os.img");
    ext4_image(&tree, &image, 16 * MIB);
    for path in DAMAGED {
        // debugfs writes the inode back with a valid checksum: only its size is absurd.
        sh(&format!(
            "debugfs -w -R 'sif /{path} size 0xFFFFFFFFFFFF' '{}' 2>&1",
            image.display()
        ));
        let stat = sh(&format!(
            "debugfs -R 'stat /{path}' '{}' 2>/dev/null",
            image.display()
        ));
        assert!(stat.contains("Size: 281474976710655"), "{path}: {stat}");
    }
    ts.vm("vm", &[("os", &image)], "c");
    ts.create("c", "p");
    let m = MountGuard::new(&ts.store_path(), &[]);
    let root = m.path("c/p/files/os");

    // The directories list, the damaged entries included (as the kernel's readdir does, from
    // the directory alone).
    let top = names_in(&root);
    for want in ["docs", "root-ok.bin", "root-bad.txt"] {
        assert!(top.iter().any(|n| n == want), "{want} in {top:?}");
    }
    assert_eq!(
        names_in(&root.join("docs")),
        ["a.txt", "b.bin", "bad.txt", "z.txt"]
    );
    // Healthy files read byte for byte.
    for (path, data) in &contents {
        let got = fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(got == *data, "{path} differs");
    }
    // The damaged ones fail alone, with EIO, on stat and on open.
    for path in DAMAGED {
        let p = root.join(path);
        assert_eio(fs::metadata(&p), &format!("stat {path}"));
        assert_eio(fs::read(&p), &format!("read {path}"));
    }
    // And a second time (nothing about the filesystem was marked broken).
    assert!(fs::read(root.join("docs/z.txt")).is_ok_and(|d| d == contents[2].1));
    let still = fs::symlink_metadata(root.join("docs/bad.txt"));
    assert!(
        still
            .as_ref()
            .is_err_and(|e| e.kind() != ErrorKind::NotFound),
        "{still:?}"
    );
}
