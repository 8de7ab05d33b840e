//! Deletions and changes: `rmdir` of a point (only when allowed; anything but a point refused),
//! changes made by another process showing within the catalog age, a failed `mkdir` or `rmdir`
//! showing at once, `statfs`, and a listing that stays consistent while its directory changes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use rpfs::vfs::ROOT_INO;

use crate::common::cli::assert_mentions;
use crate::common::images::{KIB, change_blocks, random_image};
use crate::common::store::{TestStore, assert_unchanged, create};
use crate::common::sys::{rng, seed};

use super::{
    FOREVER, OWNER_UID, add_vm, assert_last_op, fails, ino, json, mount, names, read_file, resolve,
    spec, tree,
};

// ----- rmdir -----

#[test]
fn rmdir_deletes_a_point_only_when_allowed() {
    let mut rng = rng(seed());
    let t = tree(&mut rng);
    let ts = &t.ts;

    // Without allow_delete: refused, nothing changes.
    let v = mount(ts, false, false, FOREVER);
    let c1 = ino(&v, "c1");
    let before = ts.snapshot();
    for name in ["zeta", "alpha", "mid", "nothing", "collection.json"] {
        let e = fails(v.rmdir(c1, OsStr::new(name), OWNER_UID), libc::EPERM, name);
        assert_mentions(&e.to_string(), &["--allow-delete"]);
    }
    fails(
        v.rmdir(ROOT_INO, OsStr::new("c1"), OWNER_UID),
        libc::EPERM,
        "root",
    );
    assert_unchanged(&before, &ts.snapshot(), "refused rmdir");
    assert_eq!(
        names(&v, c1),
        ["collection.json", "latest", "zeta", "alpha", "mid"]
    );

    let v = mount(ts, true, false, FOREVER);
    let c1 = ino(&v, "c1");
    let alpha = ino(&v, "c1/alpha");
    let alpha_img = ino(&v, "c1/alpha/disks/data.img");
    let zeta_data = ino(&v, "c1/zeta/disks/data.img");
    let mid_os = ino(&v, "c1/mid/disks/os.img");

    // Not a point: EPERM / ENOTDIR / ENOENT, nothing changes.
    let before = ts.snapshot();
    for (parent, name) in [
        ("", "c1"),
        ("", "c0"),
        ("c1/zeta", "disks"),
        ("c1/zeta/disks", "os.img"),
    ] {
        let e = fails(
            v.rmdir(ino(&v, parent), OsStr::new(name), OWNER_UID),
            libc::EPERM,
            &format!("rmdir {parent}/{name}"),
        );
        assert_mentions(&e.to_string(), &["restore points"]);
    }
    for name in ["collection.json", "latest"] {
        fails(
            v.rmdir(c1, OsStr::new(name), OWNER_UID),
            libc::ENOTDIR,
            name,
        );
    }
    fails(
        v.rmdir(c1, OsStr::new("nothing"), OWNER_UID),
        libc::ENOENT,
        "missing point",
    );
    fails(
        v.rmdir(c1, OsStr::from_bytes(b"\xff"), OWNER_UID),
        libc::ENOENT,
        "non-UTF-8",
    );
    fails(
        v.rmdir(0, OsStr::new("zeta"), OWNER_UID),
        libc::ENOENT,
        "unknown parent",
    );
    let mut after = ts.snapshot();
    // Only the record of the failed deletion may change.
    after.retain(|k, _| !k.contains("/collections/"));
    let mut b = before.clone();
    b.retain(|k, _| !k.contains("/collections/"));
    assert_unchanged(&b, &after, "refused rmdir");
    assert_last_op(
        &v,
        "c1",
        "delete",
        "nothing",
        Some(&["nothing", "not found"]),
    );
    assert_eq!(
        names(&v, c1),
        ["collection.json", "latest", "zeta", "alpha", "mid"]
    );

    // A point in the middle of the chain.
    v.rmdir(c1, OsStr::new("alpha"), OWNER_UID)
        .expect("rmdir alpha");
    assert_eq!(names(&v, c1), ["collection.json", "latest", "zeta", "mid"]);
    assert_last_op(&v, "c1", "delete", "alpha", None);
    fails(
        v.lookup(c1, OsStr::new("alpha")),
        libc::ENOENT,
        "deleted point",
    );
    fails(v.getattr(alpha), libc::ENOENT, "deleted point's inode");
    fails(v.getattr(alpha_img), libc::ENOENT, "deleted image's inode");
    fails(v.readdir(alpha), libc::ENOENT, "readdir of a deleted point");
    fails(
        v.open(alpha_img, libc::O_RDONLY),
        libc::ENOENT,
        "open of a deleted image",
    );
    fails(
        v.rmdir(c1, OsStr::new("alpha"), OWNER_UID),
        libc::ENOENT,
        "second rmdir",
    );
    // The others read the same.
    assert!(read_file(&v, zeta_data) == t.data_zeta);
    assert!(read_file(&v, mid_os) == t.os);
    assert!(read_file(&v, ino(&v, "c1/zeta/disks/os.img")) == t.os);

    // The newest: `latest` moves back; then the last: `latest` goes.
    v.rmdir(c1, OsStr::new("mid"), OWNER_UID)
        .expect("rmdir mid");
    assert_eq!(v.readlink(ino(&v, "c1/latest")).expect("readlink"), b"zeta");
    let latest = ino(&v, "c1/latest");
    v.rmdir(c1, OsStr::new("zeta"), OWNER_UID)
        .expect("rmdir zeta");
    assert_eq!(names(&v, c1), ["collection.json"]);
    fails(
        v.lookup(c1, OsStr::new("latest")),
        libc::ENOENT,
        "latest of an empty collection",
    );
    fails(v.getattr(latest), libc::ENOENT, "old latest inode");
    fails(v.readlink(latest), libc::ENOENT, "old latest readlink");
    ts.cli().args(["check", "--read-data"]).assert().success();
}

// ----- freshness -----

#[test]
fn changes_made_elsewhere_show_within_the_catalog_age() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let path = ts.path("os.img");
    let mut content = random_image(&path, 64 * KIB as usize, &mut rng);
    add_vm(&ts, spec("vm1", &[("os", &path)]), &["c1"]);
    ts.create("c1", "p1");
    let age = Duration::from_millis(100);
    let settle = || std::thread::sleep(age * 3);
    let v = mount(&ts, false, false, age);
    let c1 = ino(&v, "c1");
    assert_eq!(names(&v, c1), ["collection.json", "latest", "p1"]);
    let p1_content = content.clone();

    // Another process (its own Engine) creates a point.
    change_blocks(&path, &mut content, 4096, 0.5, &mut rng);
    let other = ts.reopen();
    create(&other, "c1", "p2");
    settle();
    assert_eq!(names(&v, c1), ["collection.json", "latest", "p1", "p2"]);
    assert_eq!(v.readlink(ino(&v, "c1/latest")).expect("readlink"), b"p2");
    assert!(read_file(&v, ino(&v, "c1/p2/disks/os.img")) == content);
    assert!(read_file(&v, ino(&v, "c1/p1/disks/os.img")) == p1_content);
    assert_eq!(
        json(&v, "c1/collection.json")["properties"]["restorePoints"]
            .as_array()
            .expect("points")
            .len(),
        2
    );

    // …and a new collection.
    other
        .create_collection("c2", "vm1", None)
        .expect("collection");
    settle();
    assert_eq!(names(&v, ROOT_INO), ["c1", "c2"]);

    // Another process deletes it: gone, and its inodes stop resolving.
    let p2 = ino(&v, "c1/p2");
    let p2_disks = ino(&v, "c1/p2/disks");
    let p2_img = ino(&v, "c1/p2/disks/os.img");
    let p2_json = ino(&v, "c1/p2/restore-point.json");
    let fh = v.open(p2_img, libc::O_RDONLY).expect("open").fh;
    other.delete_point("c1", "p2").expect("delete elsewhere");
    settle();
    assert_eq!(names(&v, c1), ["collection.json", "latest", "p1"]);
    assert_eq!(v.readlink(ino(&v, "c1/latest")).expect("readlink"), b"p1");
    for (what, i) in [
        ("point", p2),
        ("disks", p2_disks),
        ("image", p2_img),
        ("json", p2_json),
    ] {
        fails(v.getattr(i), libc::ENOENT, what);
    }
    fails(
        v.lookup(p2, OsStr::new("disks")),
        libc::ENOENT,
        "lookup in a deleted point",
    );
    fails(
        v.readdir(p2_disks),
        libc::ENOENT,
        "readdir of a deleted point's disks",
    );
    fails(v.lookup(c1, OsStr::new("p2")), libc::ENOENT, "deleted name");
    // A handle opened before the deletion: the right bytes or ENOENT, never wrong bytes or EIO.
    match v.read(fh, 0, 64 * KIB as u32) {
        Ok(b) => assert!(b == content, "read of a deleted point: wrong bytes"),
        Err(e) => assert_eq!(e.errno(), libc::ENOENT, "read of a deleted point: {e}"),
    }
    v.release(fh);

    other
        .delete_collection("c2", false)
        .expect("delete collection");
    let c2 = ino(&v, "c2");
    settle();
    assert_eq!(names(&v, ROOT_INO), ["c1"]);
    fails(v.getattr(c2), libc::ENOENT, "deleted collection");
    fails(v.readdir(c2), libc::ENOENT, "deleted collection readdir");
}

/// A failed mkdir or rmdir records its reason in collection.json; a user reads it right after
/// the failure, so it shows at once even when the snapshot would not expire for an hour.
#[test]
fn a_failed_mkdir_or_rmdir_shows_in_collection_json_at_once() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    random_image(&ts.path("os.img"), 32 * KIB as usize, &mut rng);
    add_vm(&ts, spec("vm1", &[("os", &ts.path("os.img"))]), &["c1"]);
    let v = mount(&ts, true, false, FOREVER);
    let c1 = ino(&v, "c1");
    v.mkdir(c1, OsStr::new("p1"), OWNER_UID).expect("mkdir");
    assert_last_op(&v, "c1", "create", "p1", None);
    fails(
        v.mkdir(c1, OsStr::new("p1"), OWNER_UID),
        libc::EEXIST,
        "again",
    );
    assert_last_op(&v, "c1", "create", "p1", Some(&["c1/p1", "already exists"]));
    fails(
        v.rmdir(c1, OsStr::new("p2"), OWNER_UID),
        libc::ENOENT,
        "missing",
    );
    assert_last_op(&v, "c1", "delete", "p2", Some(&["c1/p2", "not found"]));
    v.rmdir(c1, OsStr::new("p1"), OWNER_UID).expect("rmdir");
    assert_last_op(&v, "c1", "delete", "p1", None);
}

// ----- statfs -----

#[test]
fn statfs_reports_the_stores_medium() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    random_image(&ts.path("os.img"), 32 * KIB as usize, &mut rng);
    add_vm(&ts, spec("vm1", &[("os", &ts.path("os.img"))]), &["c1"]);
    ts.create("c1", "p1");
    let v = mount(&ts, false, false, FOREVER);
    let st = v.statfs().expect("statfs");
    let sys = nix::sys::statvfs::statvfs(&ts.store_path()).expect("statvfs");
    let frag = sys.fragment_size();
    assert_eq!(st.bsize, 4096);
    assert_eq!(st.namelen, 255);
    assert!(st.blocks > 0, "{st:?}");
    assert_eq!(st.blocks, sys.blocks() * frag / 4096, "{st:?}");
    assert!(st.bfree <= st.blocks && st.bavail <= st.blocks, "{st:?}");
    let avail = sys.blocks_available() * frag / 4096;
    // Another engineer may be writing on the same disk: allow 256 MiB of drift.
    assert!(
        st.bavail.abs_diff(avail) < 65536,
        "{st:?} vs {avail} available"
    );
    assert!(st.files >= 1, "{st:?}");
    // Walking the tree gives out inodes: `files` counts them.
    resolve(&v, "c1/p1/disks/os.img");
    assert!(v.statfs().expect("statfs").files >= 5);
}

/// Regression: offsets of a directory listing stay valid while the directory changes, because
/// the listing is taken at `opendir` and served from that handle.
#[test]
fn a_listing_stays_consistent_while_the_directory_changes() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 16 * KIB as usize, &mut rng);
    ts.vm("vm", &[("d", &disk)], "c");
    for i in 0..60 {
        create(&ts.engine, "c", &format!("point-{i:03}"));
    }
    let v = mount(&ts, false, false, Duration::from_millis(50));
    let dir = ino(&v, "c");
    let fh = v.opendir(dir).expect("opendir");
    let first: Vec<(u64, rpfs::vfs::DirEntry)> = v
        .readdir_at(fh, 0)
        .expect("readdir")
        .into_iter()
        .take(20)
        .collect();
    let resume = first.last().expect("entries").0;
    // Elsewhere, a listed point is deleted and a new one created; the catalog is reloaded.
    let other = ts.reopen();
    other.delete_point("c", "point-005").expect("delete");
    create(&other, "c", "point-new");
    std::thread::sleep(Duration::from_millis(120));
    let rest = v.readdir_at(fh, resume).expect("readdir");
    let mut seen: Vec<String> = first
        .into_iter()
        .chain(rest)
        .map(|(_, e)| e.name.to_string_lossy().into_owned())
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "an entry was listed twice");
    for i in 0..60 {
        assert!(
            seen.contains(&format!("point-{i:03}")),
            "point-{i:03} was skipped"
        );
    }
    v.release(fh);
    fails(
        v.readdir_at(fh, 0),
        libc::EBADF,
        "readdir of a released handle",
    );
    // A new opendir sees the change.
    let names = names(&v, dir);
    assert!(names.contains(&"point-new".to_string()) && !names.contains(&"point-005".to_string()));
}
