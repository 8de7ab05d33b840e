//! Guest files in the core: a file's own attributes, reads, links and refusals, and a damaged
//! guest filesystem failing with EIO, naming itself, while the others still read.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rand::RngCore;
use rand::rngs::StdRng;
use rpfs::vfs::{IMMUTABLE_TTL, Kind};

use crate::common::cli::assert_mentions;
use crate::common::images::{KIB, MIB, ext4_image, inode_table_offset};
use crate::common::store::TestStore;
use crate::common::sys::{is_root, rng, seed, sh};

use super::{FOREVER, SEEK_HOLE, fails, ino, listing, mount, read_file, resolve};

/// Overwrites the first inode table of the ext4 image at `image` with random bytes.
fn damage_inode_table(image: &Path, rng: &mut StdRng) {
    let at = inode_table_offset(image);
    let mut junk = vec![0u8; 64 * KIB as usize];
    rng.fill_bytes(&mut junk);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .expect("open image");
    std::os::unix::fs::FileExt::write_all_at(&f, &junk, at).expect("damage");
}

#[test]
fn guest_files_show_their_own_attributes_and_refuse_what_they_must() {
    let ts = TestStore::new(4096);
    let mut r = rng(seed());
    let tree = ts.path("tree");
    std::fs::create_dir_all(tree.join("d")).expect("tree");
    std::fs::write(tree.join("a.txt"), "guest file\n").expect("file");
    std::os::unix::fs::symlink("/etc/passwd", tree.join("l")).expect("link");
    sh(&format!("chmod 0640 '{}/a.txt'", tree.display()));
    // Another owner, where the test may give one.
    let owner = if is_root() {
        sh(&format!("chown 7:8 '{}/a.txt'", tree.display()));
        (7, 8)
    } else {
        let m = std::fs::metadata(tree.join("a.txt")).expect("stat");
        (
            std::os::unix::fs::MetadataExt::uid(&m),
            std::os::unix::fs::MetadataExt::gid(&m),
        )
    };
    let (os, bad) = (ts.path("os.img"), ts.path("bad.img"));
    ext4_image(&tree, &os, 8 * MIB);
    ext4_image(&tree, &bad, 8 * MIB);
    damage_inode_table(&bad, &mut r);
    ts.vm("vm", &[("os", &os), ("bad", &bad)], "c");
    ts.create("c", "p");
    let v = mount(&ts, false, false, FOREVER);

    let a = resolve(&v, "c/p/files/os/a.txt");
    assert_eq!(a.ttl, IMMUTABLE_TTL);
    assert_eq!(
        (
            a.attr.kind,
            a.attr.perm,
            a.attr.uid,
            a.attr.gid,
            a.attr.size
        ),
        (Kind::File, 0o640, owner.0, owner.1, 11),
        "the guest's own attributes, not the mount owner's"
    );
    let fh = v.open(a.attr.ino, libc::O_RDONLY).expect("open").fh;
    assert_eq!(v.read(fh, 0, 4096).expect("read"), b"guest file\n");
    assert_eq!(v.read(fh, 6, 3).expect("read"), b"fil");
    assert!(v.read(fh, 11, 10).expect("read at the end").is_empty());
    assert_eq!(v.lseek(fh, 0, SEEK_HOLE).expect("hole"), 11);
    v.release(fh);
    let l = resolve(&v, "c/p/files/os/l");
    assert_eq!(l.attr.kind, Kind::Symlink);
    assert_eq!(v.readlink(l.attr.ino).expect("readlink"), b"/etc/passwd");
    let d = ino(&v, "c/p/files/os/d");
    let root = ino(&v, "c/p/files/os");
    // `..` of the guest root is files/, of a guest directory its parent.
    assert_eq!(listing(&v, d)[1], ("..".into(), root, Kind::Directory));
    assert_eq!(
        listing(&v, root)[1],
        ("..".into(), ino(&v, "c/p/files"), Kind::Directory)
    );

    fails(v.open(d, libc::O_RDONLY), libc::EISDIR, "open a directory");
    fails(
        v.open(a.attr.ino, libc::O_WRONLY),
        libc::EROFS,
        "open for writing",
    );
    fails(
        v.open(l.attr.ino, libc::O_RDONLY),
        libc::EINVAL,
        "open a link",
    );
    fails(v.readlink(a.attr.ino), libc::EINVAL, "readlink of a file");
    fails(
        v.lookup(a.attr.ino, OsStr::new("x")),
        libc::ENOTDIR,
        "under a file",
    );
    fails(
        v.lookup(root, OsStr::new("nope")),
        libc::ENOENT,
        "a missing name",
    );
    fails(
        v.lookup(root, OsStr::from_bytes(b"\xff")),
        libc::ENOENT,
        "a name no guest file has",
    );
    fails(
        v.mkdir(root, OsStr::new("new"), 0),
        libc::EPERM,
        "mkdir in a guest",
    );

    // A damaged filesystem: EIO naming it, and nothing else is affected.
    let files = ino(&v, "c/p/files");
    let e = match v.lookup(files, OsStr::new("bad")) {
        Err(e) => e,
        Ok(bad) => v
            .readdir(bad.attr.ino)
            .expect_err("a damaged filesystem lists"),
    };
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert_mentions(&e.to_string(), &["ext4", "disk bad", "c/p"]);
    let a = resolve(&v, "c/p/files/os/a.txt");
    let fh = v.open(a.attr.ino, libc::O_RDONLY).expect("open").fh;
    assert_eq!(v.read(fh, 0, 4096).expect("read"), b"guest file\n");
}

/// What the core keeps for a guest file lasts from the first lookup the kernel is given until
/// it forgets the last one: two lookups, one forget, the file still answers; the second forget,
/// and it is gone from the inode count (a lookup finds it again, under the same number).
#[test]
fn a_guest_file_is_kept_until_the_kernel_forgets_every_lookup() {
    let ts = TestStore::new(4096);
    let tree = ts.path("tree");
    std::fs::create_dir_all(tree.join("d")).expect("tree");
    std::fs::write(tree.join("d/a.txt"), "guest file\n").expect("file");
    let os = ts.path("os.img");
    ext4_image(&tree, &os, 8 * MIB);
    ts.vm("vm", &[("os", &os)], "c");
    ts.create("c", "p");
    let v = mount(&ts, false, false, FOREVER);
    let files = |v: &rpfs::vfs::Vfs| v.statfs().expect("statfs").files;

    let dir = resolve(&v, "c/p/files/os/d").attr.ino;
    let before = files(&v);
    let a = v.lookup(dir, OsStr::new("a.txt")).expect("lookup").attr.ino;
    assert_eq!(files(&v), before + 1, "the file is held once looked up");
    assert_eq!(
        v.lookup(dir, OsStr::new("a.txt")).expect("again").attr.ino,
        a
    );
    v.forget(a, 1);
    assert_eq!(v.getattr(a).expect("one lookup left").attr.size, 11);
    v.forget(a, 1);
    assert_eq!(files(&v), before, "forgotten with its last lookup");
    fails(v.getattr(a), libc::ENOENT, "a forgotten guest file");
    let again = v.lookup(dir, OsStr::new("a.txt")).expect("found again");
    assert_eq!(
        again.attr.ino, a,
        "a guest file keeps its number for the mount's life"
    );
    assert_eq!(read_file(&v, a), b"guest file\n");
}
