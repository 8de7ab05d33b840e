//! `mkdir` in a collection creates a point: the names and places it refuses and why, unsupported
//! disk types, the collection's consistency default, who may when others can see the mount, the
//! 500-point limit (EDQUOT) and a busy VM (EBUSY at once); each outcome is the collection's last
//! operation.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rpfs::engine::create::{Consistency, CreateRequest};
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::{ConsistencyMode, DiskType};
use rpfs::vfs::{Kind, Vfs};

use crate::common::cli::assert_mentions;
use crate::common::images::{KIB, random_image};
use crate::common::store::TestStore;
use crate::common::sys::{rng, seed};

use super::{
    FOREVER, OWNER_UID, STRANGER_UID, add_vm, assert_last_op, check_reads, fails, ino, json, mount,
    names, read_file, spec,
};

#[test]
fn mkdir_creates_points_and_refuses_everything_else() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let os = random_image(&ts.path("os.img"), 96 * KIB as usize + 123, &mut rng);
    std::fs::write(ts.path("fast.img"), vec![7u8; 8192]).expect("fast disk");
    add_vm(&ts, spec("vm1", &[("os", &ts.path("os.img"))]), &["c1"]);
    // The snapshot never expires on its own: mkdir must refresh it, failed or not.
    let v = mount(&ts, false, false, FOREVER);
    let c1 = ino(&v, "c1");
    assert_eq!(names(&v, c1), ["collection.json"]);

    let e = v.mkdir(c1, OsStr::new("p1"), OWNER_UID).expect("mkdir p1");
    assert_eq!((e.attr.kind, e.attr.perm), (Kind::Directory, 0o555));
    assert_eq!(names(&v, c1), ["collection.json", "latest", "p1"]);
    assert_eq!(ino(&v, "c1/p1"), e.attr.ino);
    assert_eq!(v.readlink(ino(&v, "c1/latest")).expect("readlink"), b"p1");
    let img = ino(&v, "c1/p1/disks/os.img");
    assert!(read_file(&v, img) == os);
    check_reads(&v, img, &os, &mut rng, 20);
    assert_last_op(&v, "c1", "create", "p1", None);
    assert_eq!(
        json(&v, "c1/p1/restore-point.json")["properties"]["consistencyMode"],
        "CrashConsistent"
    );

    // Only directly inside a collection.
    for parent in [
        "",
        "c1/p1",
        "c1/p1/disks",
        "c1/collection.json",
        "c1/p1/disks/os.img",
    ] {
        let e = fails(
            v.mkdir(ino(&v, parent), OsStr::new("p9"), OWNER_UID),
            libc::EPERM,
            &format!("mkdir in {parent:?}"),
        );
        assert_mentions(&e.to_string(), &["collection"]);
    }
    fails(
        v.mkdir(0, OsStr::new("p9"), OWNER_UID),
        libc::ENOENT,
        "mkdir in inode 0",
    );
    fails(
        v.mkdir(99_999, OsStr::new("p9"), OWNER_UID),
        libc::ENOENT,
        "mkdir in unknown",
    );
    assert_last_op(&v, "c1", "create", "p1", None);

    // Names.
    fails(
        v.mkdir(c1, OsStr::from_bytes(b"p\xff"), OWNER_UID),
        libc::EINVAL,
        "non-UTF-8",
    );
    for (name, reason) in [
        ("a b", "not allowed"),
        ("-x", "start with a letter or digit"),
        ("x.json", ".json"),
        ("latest", "reserved"),
        ("", "empty"),
        ("a/b", "not allowed"),
    ] {
        let e = fails(v.mkdir(c1, OsStr::new(name), OWNER_UID), libc::EINVAL, name);
        assert_mentions(&e.to_string(), &[reason]);
        if !name.is_empty() && !name.contains('/') {
            assert_last_op(&v, "c1", "create", name, Some(&[reason]));
        }
    }
    let long = "a".repeat(81);
    fails(
        v.mkdir(c1, OsStr::new(&long), OWNER_UID),
        libc::ENAMETOOLONG,
        "81 characters",
    );
    assert_last_op(&v, "c1", "create", &long, Some(&["80"]));
    let longest = "b".repeat(80);
    v.mkdir(c1, OsStr::new(&longest), OWNER_UID)
        .expect("80 characters");
    assert_last_op(&v, "c1", "create", &longest, None);
    let e = fails(
        v.mkdir(c1, OsStr::new("p1"), OWNER_UID),
        libc::EEXIST,
        "existing point",
    );
    assert_mentions(&e.to_string(), &["c1/p1", "already exists"]);
    assert_last_op(&v, "c1", "create", "p1", Some(&["already exists"]));
    assert_eq!(
        names(&v, c1),
        ["collection.json", "latest", "p1", longest.as_str()]
    );

    // Unsupported disk types: refused until the collection excludes the disk.
    add_vm(
        &ts,
        VmSpec {
            disk_types: vec![("fast".into(), DiskType::Ultra)],
            ..spec(
                "vm2",
                &[("os", &ts.path("os.img")), ("fast", &ts.path("fast.img"))],
            )
        },
        &["u1"],
    );
    let v = mount(&ts, false, false, FOREVER);
    let u1 = ino(&v, "u1");
    let e = fails(
        v.mkdir(u1, OsStr::new("p1"), OWNER_UID),
        libc::EOPNOTSUPP,
        "ultra disk",
    );
    assert_mentions(&e.to_string(), &["fast", "Ultra", "exclude"]);
    assert_last_op(&v, "u1", "create", "p1", Some(&["fast", "Ultra"]));
    assert_eq!(names(&v, u1), ["collection.json"]);
    ts.engine
        .set_collection_defaults("u1", Some(vec!["fast".into()]), None)
        .expect("defaults");
    v.mkdir(u1, OsStr::new("p1"), OWNER_UID)
        .expect("mkdir with the disk excluded");
    assert_eq!(names(&v, ino(&v, "u1/p1/disks")), ["os.img"]);
    assert!(read_file(&v, ino(&v, "u1/p1/disks/os.img")) == os);
    let rp = json(&v, "u1/p1/restore-point.json");
    let excluded = rp["properties"]["excludeDisks"].as_array().expect("array");
    assert_eq!(excluded.len(), 1, "{rp}");
    assert!(
        excluded[0]["id"].as_str().expect("id").ends_with("_fast"),
        "{rp}"
    );
    assert_last_op(&v, "u1", "create", "p1", None);

    // Consistency defaults: asking for filesystem consistency without a pre-script is refused.
    ts.engine
        .set_collection_defaults(
            "c1",
            None,
            Some(Some(ConsistencyMode::FileSystemConsistent)),
        )
        .expect("defaults");
    let c1 = ino(&v, "c1");
    let e = fails(
        v.mkdir(c1, OsStr::new("p2"), OWNER_UID),
        libc::EINVAL,
        "fs without pre-script",
    );
    assert_mentions(&e.to_string(), &["pre-script", "vm1"]);
    assert_last_op(&v, "c1", "create", "p2", Some(&["pre-script"]));
}

#[test]
fn mkdir_applies_the_collections_consistency_default() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    random_image(&ts.path("os.img"), 32 * KIB as usize, &mut rng);
    let os = ts.path("os.img");
    add_vm(
        &ts,
        VmSpec {
            pre_script: Some("echo frozen-not >&2; exit 3".into()),
            ..spec("bad", &[("os", &os)])
        },
        &["cb"],
    );
    add_vm(
        &ts,
        VmSpec {
            pre_script: Some("true".into()),
            post_script: Some("true".into()),
            ..spec("good", &[("os", &os)])
        },
        &["cg"],
    );
    let v = mount(&ts, false, false, FOREVER);
    let mode = |v: &Vfs, path: &str| {
        json(v, &format!("{path}/restore-point.json"))["properties"]["consistencyMode"].clone()
    };

    // A failing pre-script fails an application-consistent creation…
    let cb = ino(&v, "cb");
    let e = fails(
        v.mkdir(cb, OsStr::new("p1"), OWNER_UID),
        libc::EIO,
        "failing pre-script",
    );
    assert_mentions(&e.to_string(), &["pre-script", "bad"]);
    assert_last_op(&v, "cb", "create", "p1", Some(&["pre-script", "bad"]));
    assert_eq!(names(&v, cb), ["collection.json"]);
    // …but not a crash-consistent one, which the collection's default now asks for.
    ts.engine
        .set_collection_defaults("cb", None, Some(Some(ConsistencyMode::CrashConsistent)))
        .expect("defaults");
    v.mkdir(cb, OsStr::new("p1"), OWNER_UID)
        .expect("crash-consistent mkdir");
    assert_eq!(mode(&v, "cb/p1"), "CrashConsistent");
    assert_last_op(&v, "cb", "create", "p1", None);

    // Scripts that succeed: application consistency by default, filesystem when the default says.
    let cg = ino(&v, "cg");
    v.mkdir(cg, OsStr::new("p1"), OWNER_UID).expect("mkdir");
    assert_eq!(mode(&v, "cg/p1"), "ApplicationConsistent");
    ts.engine
        .set_collection_defaults(
            "cg",
            None,
            Some(Some(ConsistencyMode::FileSystemConsistent)),
        )
        .expect("defaults");
    v.mkdir(cg, OsStr::new("p2"), OWNER_UID).expect("mkdir");
    assert_eq!(mode(&v, "cg/p2"), "FileSystemConsistent");
    // Crash asked for, scripts succeeded: recorded as application-consistent (README:
    // "ApplicationConsistent … when both scripts succeeded, otherwise the mode requested").
    ts.engine
        .set_collection_defaults("cg", None, Some(Some(ConsistencyMode::CrashConsistent)))
        .expect("defaults");
    v.mkdir(cg, OsStr::new("p3"), OWNER_UID).expect("mkdir");
    assert_eq!(mode(&v, "cg/p3"), "ApplicationConsistent");
}

#[test]
fn with_allow_other_only_root_and_the_owner_change_the_tree() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    random_image(&ts.path("os.img"), 32 * KIB as usize, &mut rng);
    add_vm(&ts, spec("vm1", &[("os", &ts.path("os.img"))]), &["c1"]);

    let v = mount(&ts, true, true, FOREVER);
    let c1 = ino(&v, "c1");
    let e = fails(
        v.mkdir(c1, OsStr::new("p1"), STRANGER_UID),
        libc::EACCES,
        "stranger mkdir",
    );
    assert_mentions(&e.to_string(), &["only root", &OWNER_UID.to_string()]);
    assert_eq!(names(&v, c1), ["collection.json"]);
    v.mkdir(c1, OsStr::new("p1"), 0).expect("root mkdir");
    v.mkdir(c1, OsStr::new("p2"), OWNER_UID)
        .expect("owner mkdir");
    let e = fails(
        v.rmdir(c1, OsStr::new("p1"), STRANGER_UID),
        libc::EACCES,
        "stranger rmdir",
    );
    assert_mentions(&e.to_string(), &["only root"]);
    assert_eq!(names(&v, c1), ["collection.json", "latest", "p1", "p2"]);
    v.rmdir(c1, OsStr::new("p1"), 0).expect("root rmdir");
    v.rmdir(c1, OsStr::new("p2"), OWNER_UID)
        .expect("owner rmdir");
    assert_eq!(names(&v, c1), ["collection.json"]);

    // Without allow_other only the owner can reach the mount: no uid check.
    let v = mount(&ts, true, false, FOREVER);
    let c1 = ino(&v, "c1");
    v.mkdir(c1, OsStr::new("p3"), STRANGER_UID).expect("mkdir");
    v.rmdir(c1, OsStr::new("p3"), STRANGER_UID).expect("rmdir");
}

// ----- limits -----

#[test]
fn mkdir_past_the_point_limit_is_a_quota_error() {
    let ts = TestStore::new(4096);
    std::fs::write(ts.path("os.img"), vec![1u8; 4096]).expect("image");
    add_vm(
        &ts,
        spec("vm1", &[("os", &ts.path("os.img"))]),
        &["c1", "c2"],
    );
    let started = Instant::now();
    for i in 0..500 {
        ts.create(if i % 2 == 0 { "c1" } else { "c2" }, &format!("p{i}"));
    }
    eprintln!("500 points in {:?}", started.elapsed());

    let v = mount(&ts, true, false, FOREVER);
    for coll in ["c1", "c2"] {
        let e = fails(
            v.mkdir(ino(&v, coll), OsStr::new("one-more"), OWNER_UID),
            libc::EDQUOT,
            "501st point",
        );
        assert_mentions(&e.to_string(), &["vm1", "500"]);
        assert_last_op(&v, coll, "create", "one-more", Some(&["500", "delete"]));
    }
    assert_eq!(names(&v, ino(&v, "c1")).len(), 2 + 250);
    // Deleting one makes room for one.
    v.rmdir(ino(&v, "c2"), OsStr::new("p1"), OWNER_UID)
        .expect("rmdir");
    v.mkdir(ino(&v, "c1"), OsStr::new("one-more"), OWNER_UID)
        .expect("mkdir after a deletion");
    fails(
        v.mkdir(ino(&v, "c2"), OsStr::new("two-more"), OWNER_UID),
        libc::EDQUOT,
        "full again",
    );
}

#[test]
fn mkdir_of_a_busy_vm_fails_at_once() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    random_image(&ts.path("os.img"), 32 * KIB as usize, &mut rng);
    let marker = ts.path("frozen");
    add_vm(
        &ts,
        VmSpec {
            pre_script: Some(format!("touch '{}'; sleep 2", marker.display())),
            ..spec("vm1", &[("os", &ts.path("os.img"))])
        },
        &["b1", "b2"],
    );
    ts.create("b2", "old");
    let _ = std::fs::remove_file(&marker);
    let v = mount(&ts, true, false, FOREVER);
    let b2 = ino(&v, "b2");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let r = ts.engine.create_point(
                &CreateRequest {
                    collection: "b1".into(),
                    name: "slow".into(),
                    exclude: vec![],
                    consistency: Some(Consistency::Application),
                },
                &Silent,
            );
            done.store(true, Ordering::SeqCst);
            r
        });
        let waited = Instant::now();
        while !marker.exists() {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "pre-script never ran"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = Instant::now();
        let e = fails(
            v.mkdir(b2, OsStr::new("quick"), OWNER_UID),
            libc::EBUSY,
            "busy VM",
        );
        let e2 = fails(
            v.rmdir(b2, OsStr::new("old"), OWNER_UID),
            libc::EBUSY,
            "busy VM rmdir",
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            !done.load(Ordering::SeqCst),
            "the slow creation ended before the check"
        );
        assert_mentions(&e.to_string(), &["vm1", "busy"]);
        assert_mentions(&e2.to_string(), &["vm1", "busy"]);
        slow.join().expect("thread").expect("slow creation");
    });
    // Failed operations were recorded (the rmdir last); the point survived.
    assert_last_op(&v, "b2", "delete", "old", Some(&["busy"]));
    assert_eq!(names(&v, b2), ["collection.json", "latest", "old"]);
    v.mkdir(b2, OsStr::new("quick"), OWNER_UID)
        .expect("mkdir once free");
    assert_last_op(&v, "b2", "create", "quick", None);
}
