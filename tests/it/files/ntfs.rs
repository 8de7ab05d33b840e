//! NTFS guest filesystems: files made through `ntfs-3g` matching their source tree (sizes, times,
//! hard links, no metadata files listed), and damaged NTFS metadata giving errors, never a crash.

use std::fs;
use std::os::unix::fs::MetadataExt;

use rand::Rng;

use crate::common::guards::Mounted;
use crate::common::images::{KIB, MIB};
use crate::common::mount::{MountGuard, fuse_or_skip, names_in};
use crate::common::store::TestStore;
use crate::common::sys::{env_count, is_root, require_tool, rng, root_or_skip, seed, sh};

use super::{T0, disk, set_times};

#[test]
fn ntfs_files_match_their_source_tree() {
    if !fuse_or_skip("ntfs_files_match_their_source_tree")
        || !root_or_skip("ntfs_files_match_their_source_tree")
    {
        return;
    }
    require_tool("mkntfs");
    require_tool("ntfs-3g");
    let ts = TestStore::new(64 * KIB as u32);
    let tree = ts.path("tree");
    fs::create_dir_all(tree.join("Users/alice/Documents")).expect("tree");
    let mut big = vec![0u8; 5 * MIB as usize + 4321];
    rand::RngCore::fill_bytes(&mut rng(seed()), &mut big);
    fs::write(tree.join("Users/alice/Documents/big.bin"), &big).expect("big");
    fs::write(tree.join("Users/alice/notes ünïcödé.txt"), "notes\n").expect("notes");
    fs::write(tree.join("small.txt"), "tiny, resident in its MFT record\n").expect("small");
    fs::write(tree.join("empty"), "").expect("empty");
    set_times(&tree, T0, 11);
    // Filled through ntfs-3g (root), with a hard link made there; then unmounted (the guard
    // only acts if the script could not).
    let (img, mnt) = (ts.path("ntfs.img"), ts.path("ntfs-mnt"));
    fs::create_dir(&mnt).expect("mountpoint");
    let ntfs = Mounted::adopt(&mnt);
    sh(&format!(
        "truncate -s 48M '{i}' && mkntfs -q -F -Q '{i}' >/dev/null && ntfs-3g '{i}' '{m}' && \
         cp -a '{t}'/. '{m}'/ && ln '{m}/small.txt' '{m}/Users/small-link.txt' && \
         touch -d @{T0} '{m}/Users/small-link.txt' '{m}/small.txt' '{m}/Users'; \
         status=$?; umount '{m}'; exit $status",
        i = img.display(),
        m = mnt.display(),
        t = tree.display()
    ));
    drop(ntfs);
    let disk_path = ts.path("win.img");
    disk(
        &disk_path,
        64 * MIB,
        "label: gpt\\n,48MiB,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\\n",
        &[(1, &img)],
    );
    ts.vm("vm", &[("win", &disk_path)], "c");
    ts.create("c", "p");
    let m = MountGuard::new(&ts.store_path(), &[]);
    let win = m.path("c/p/files/win/p1");
    // Metadata files ($MFT, $Boot, ...) are not listed; 8.3 aliases are not either.
    assert_eq!(names_in(&win), ["Users", "empty", "small.txt"]);
    assert_eq!(
        fs::read(win.join("Users/alice/Documents/big.bin")).expect("big"),
        big
    );
    sh(&format!(
        "diff -r -x small-link.txt '{}' '{}'",
        tree.display(),
        win.display()
    ));
    for rel in [
        "Users/alice/Documents/big.bin",
        "Users/alice/notes ünïcödé.txt",
        "empty",
    ] {
        let (a, b) = (
            fs::metadata(tree.join(rel)).expect("source"),
            fs::metadata(win.join(rel)).expect("guest"),
        );
        assert_eq!((a.len(), a.mtime()), (b.len(), b.mtime()), "{rel}");
        assert_eq!(b.mode() & 0o7777, 0o644, "{rel}");
    }
    let (s, l) = (
        fs::metadata(win.join("small.txt")).expect("small"),
        fs::metadata(win.join("Users/small-link.txt")).expect("link"),
    );
    assert_eq!(
        (s.ino(), s.nlink()),
        (l.ino(), 2),
        "a hard link shares its record"
    );
    assert_eq!(s.mtime() as u64, T0);
}

#[test]
fn damaged_ntfs_metadata_gives_errors_not_crashes() {
    require_tool("mkntfs");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("n.img");
    sh(&format!(
        "truncate -s 2M '{i}' && mkntfs -q -F -Q '{i}' >/dev/null",
        i = img.display()
    ));
    if is_root() && fuse_or_skip("damaged_ntfs_metadata_gives_errors_not_crashes") {
        // Files to find (as root, through ntfs-3g): nested, resident and not, a hard link.
        require_tool("ntfs-3g");
        let m = dir.path().join("m");
        fs::create_dir(&m).expect("mountpoint");
        // The script unmounts what it mounted; the guard only acts if it could not.
        let ntfs = Mounted::adopt(&m);
        sh(&format!(
            "ntfs-3g '{i}' '{m}' && mkdir -p '{m}/a/b' && echo small > '{m}/a/b/s' && \
             head -c 300000 /dev/urandom > '{m}/a/big' && ln '{m}/a/b/s' '{m}/link'; \
             status=$?; umount '{m}'; exit $status",
            i = img.display(),
            m = m.display()
        ));
        drop(ntfs);
    }
    let clean = fs::read(&img).expect("image");
    // The MFT: its first cluster (boot sector 0x30) times the cluster size.
    let cluster =
        u64::from(u16::from_le_bytes([clean[0x0b], clean[0x0c]])) * u64::from(clean[0x0d]);
    let mft = u64::from_le_bytes(clean[0x30..0x38].try_into().expect("8 bytes")) * cluster;
    assert!(mft > 0 && mft < clean.len() as u64, "MFT at {mft}");
    rpfs::testing::fuzzing::guest_fs(&clean);
    let mut r = rng(seed());
    let cases = env_count("RPFS_NTFS_MUTATIONS", 200);
    for _ in 0..cases {
        let mut d = clean.clone();
        // A few bytes of the boot sector or the first 24 MFT records.
        for _ in 0..r.random_range(1..8) {
            let at = if r.random_bool(0.1) {
                r.random_range(0..512)
            } else {
                mft as usize + r.random_range(0..24 * 1024)
            };
            d[at] = r.random();
        }
        rpfs::testing::fuzzing::guest_fs(&d);
    }
}
