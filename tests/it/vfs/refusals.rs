//! Every refusal with its exact errno: unknown inodes and handles, missing names, lookups under
//! files, opening directories, for writing or the symlink, and `readlink` of anything else.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use rpfs::vfs::{Kind, ROOT_INO};

use crate::common::cli::assert_mentions;
use crate::common::sys::{rng, seed};

use super::{FOREVER, SEEK_DATA, fails, ino, listing, lookup, mount, tree};

#[test]
fn every_refusal_has_its_errno() {
    let mut rng = rng(seed());
    let t = tree(&mut rng);
    let v = mount(&t.ts, false, false, FOREVER);

    // Walk the whole tree so that every node has its inode; the next number was never given.
    let mut max = ROOT_INO;
    let mut stack = vec![ROOT_INO];
    while let Some(dir) = stack.pop() {
        for (name, i, kind) in listing(&v, dir).into_iter().skip(2) {
            assert_eq!(lookup(&v, dir, &name).attr.ino, i);
            max = max.max(i);
            if kind == Kind::Directory {
                stack.push(i);
            }
        }
    }
    let never = max + 1;
    for bad in [0, never, never + 1000, u64::MAX] {
        fails(v.getattr(bad), libc::ENOENT, "getattr of an unknown inode");
        fails(
            v.lookup(bad, OsStr::new("c1")),
            libc::ENOENT,
            "lookup in an unknown inode",
        );
        fails(v.readdir(bad), libc::ENOENT, "readdir of an unknown inode");
        fails(
            v.readlink(bad),
            libc::ENOENT,
            "readlink of an unknown inode",
        );
        fails(
            v.open(bad, libc::O_RDONLY),
            libc::ENOENT,
            "open of an unknown inode",
        );
    }
    // None of that gave the inode out.
    fails(v.getattr(never), libc::ENOENT, "still unknown");

    // Missing names, everywhere.
    let non_utf8 = OsStr::from_bytes(b"\xff");
    let non_utf8_img = OsStr::from_bytes(b"os\xff.img");
    for dir in ["", "c1", "c0", "c1/zeta", "c1/zeta/disks"] {
        let d = ino(&v, dir);
        for name in [
            "nothing", "os", "os.img.x", ".img", "C1", "ZETA", "Disks", "latest2",
        ] {
            fails(
                v.lookup(d, OsStr::new(name)),
                libc::ENOENT,
                &format!("{dir}/{name}"),
            );
        }
        fails(v.lookup(d, non_utf8), libc::ENOENT, "non-UTF-8 name");
        fails(v.lookup(d, non_utf8_img), libc::ENOENT, "non-UTF-8 name");
    }

    // Under a file.
    for file in [
        "c1/collection.json",
        "c1/latest",
        "c1/zeta/restore-point.json",
        "c1/zeta/vm-config",
        "c1/zeta/disks/os.img",
    ] {
        let f = ino(&v, file);
        fails(
            v.lookup(f, OsStr::new("x")),
            libc::ENOTDIR,
            &format!("lookup under {file}"),
        );
        fails(v.readdir(f), libc::ENOTDIR, &format!("readdir of {file}"));
    }

    // Opening: directories, write access, the symlink.
    for dir in ["", "c1", "c1/zeta", "c1/zeta/disks"] {
        fails(
            v.open(ino(&v, dir), libc::O_RDONLY),
            libc::EISDIR,
            &format!("open {dir:?}"),
        );
    }
    for file in [
        "c1/collection.json",
        "c1/zeta/restore-point.json",
        "c1/zeta/vm-config",
        "c1/zeta/disks/os.img",
    ] {
        let f = ino(&v, file);
        for flags in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_APPEND,
            libc::O_RDWR | libc::O_CREAT,
        ] {
            let e = fails(
                v.open(f, flags),
                libc::EROFS,
                &format!("open {file} {flags:#o}"),
            );
            assert_mentions(&e.to_string(), &["read-only"]);
        }
    }
    fails(
        v.open(ino(&v, "c1/latest"), libc::O_RDONLY),
        libc::EINVAL,
        "open of latest",
    );

    // Handles never opened, or released.
    for fh in [0, 999_999, u64::MAX] {
        fails(v.read(fh, 0, 10), libc::EBADF, "read of an unknown handle");
        fails(
            v.lseek(fh, 0, SEEK_DATA),
            libc::EBADF,
            "lseek of an unknown handle",
        );
    }
    let img = ino(&v, "c1/zeta/disks/os.img");
    let json_ino = ino(&v, "c1/zeta/restore-point.json");
    for file in [img, json_ino] {
        let fh = v.open(file, libc::O_RDONLY).expect("open").fh;
        assert!(!v.read(fh, 0, 10).expect("read").is_empty());
        v.release(fh);
        fails(v.read(fh, 0, 10), libc::EBADF, "read after release");
        fails(
            v.lseek(fh, 0, SEEK_DATA),
            libc::EBADF,
            "lseek after release",
        );
        v.release(fh); // a second release is harmless
    }
    // Handles are independent: releasing one leaves another open.
    let a = v.open(img, libc::O_RDONLY).expect("open").fh;
    let b = v.open(img, libc::O_RDONLY).expect("open").fh;
    assert_ne!(a, b);
    v.release(a);
    assert_eq!(v.read(b, 0, 4096).expect("read"), t.os[..4096]);
    v.release(b);

    // readlink of anything but the symlink.
    for path in [
        "",
        "c1",
        "c1/collection.json",
        "c1/zeta",
        "c1/zeta/disks/os.img",
    ] {
        fails(
            v.readlink(ino(&v, path)),
            libc::EINVAL,
            &format!("readlink {path:?}"),
        );
    }
}
