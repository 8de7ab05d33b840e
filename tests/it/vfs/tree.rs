//! The tree and its attributes: collections, points and disks listed in order, `latest`,
//! kinds, permissions, owners, times, sizes and blocks, and how long the kernel may cache each.

use std::ffi::OsStr;

use rpfs::vfs::{CHANGING_TTL, IMMUTABLE_TTL, Kind, ROOT_INO};

use crate::common::sys::{rng, seed};

use super::{
    CONFIG, FOREVER, OS_PAGES, OS_SIZE, OWNER_GID, OWNER_UID, PAGE, fails, ino, listing, mount,
    names, parse_time, read_file, resolve, tree,
};

#[test]
fn tree_lists_collections_points_and_disks_with_their_attributes() {
    let mut rng = rng(seed());
    let t = tree(&mut rng);
    let v = mount(&t.ts, false, false, FOREVER);
    let cat = t.ts.engine.catalog().expect("catalog");
    let created = |name: &str| parse_time(&cat.point("c1", name).expect("point").1.created);

    // Root: the collections, by name.
    let c0 = ino(&v, "c0");
    let c1 = ino(&v, "c1");
    assert_eq!(
        listing(&v, ROOT_INO),
        vec![
            (".".into(), ROOT_INO, Kind::Directory),
            ("..".into(), ROOT_INO, Kind::Directory),
            ("c0".into(), c0, Kind::Directory),
            ("c1".into(), c1, Kind::Directory),
        ]
    );

    // A collection: collection.json, latest, then its points in creation order.
    let (cj, latest) = (ino(&v, "c1/collection.json"), ino(&v, "c1/latest"));
    let (zeta, alpha, mid) = (ino(&v, "c1/zeta"), ino(&v, "c1/alpha"), ino(&v, "c1/mid"));
    assert_eq!(
        listing(&v, c1),
        vec![
            (".".into(), c1, Kind::Directory),
            ("..".into(), ROOT_INO, Kind::Directory),
            ("collection.json".into(), cj, Kind::File),
            ("latest".into(), latest, Kind::Symlink),
            ("zeta".into(), zeta, Kind::Directory),
            ("alpha".into(), alpha, Kind::Directory),
            ("mid".into(), mid, Kind::Directory),
        ]
    );
    assert_eq!(v.readlink(latest).expect("readlink"), b"mid");
    let l = v.getattr(latest).expect("getattr latest").attr;
    assert_eq!((l.kind, l.perm, l.size), (Kind::Symlink, 0o777, 3));
    assert_eq!(l.mtime, created("mid"));

    // An empty collection has no `latest`.
    assert_eq!(
        listing(&v, c0),
        vec![
            (".".into(), c0, Kind::Directory),
            ("..".into(), ROOT_INO, Kind::Directory),
            (
                "collection.json".into(),
                ino(&v, "c0/collection.json"),
                Kind::File
            ),
        ]
    );
    fails(
        v.lookup(c0, OsStr::new("latest")),
        libc::ENOENT,
        "c0/latest",
    );

    // A point: restore-point.json, vm-config, disks, partitions, files; `..` is its collection.
    for (name, p) in [("zeta", zeta), ("alpha", alpha), ("mid", mid)] {
        assert_eq!(
            listing(&v, p),
            vec![
                (".".into(), p, Kind::Directory),
                ("..".into(), c1, Kind::Directory),
                (
                    "restore-point.json".into(),
                    ino(&v, &format!("c1/{name}/restore-point.json")),
                    Kind::File
                ),
                (
                    "vm-config".into(),
                    ino(&v, &format!("c1/{name}/vm-config")),
                    Kind::File
                ),
                (
                    "disks".into(),
                    ino(&v, &format!("c1/{name}/disks")),
                    Kind::Directory
                ),
                (
                    "partitions".into(),
                    ino(&v, &format!("c1/{name}/partitions")),
                    Kind::Directory
                ),
                (
                    "files".into(),
                    ino(&v, &format!("c1/{name}/files")),
                    Kind::Directory
                ),
            ],
            "point {name}"
        );
    }

    // disks: one image per included disk; `mid` excluded `data`.
    let disks = ino(&v, "c1/zeta/disks");
    assert_eq!(
        listing(&v, disks),
        vec![
            (".".into(), disks, Kind::Directory),
            ("..".into(), zeta, Kind::Directory),
            ("os.img".into(), ino(&v, "c1/zeta/disks/os.img"), Kind::File),
            (
                "data.img".into(),
                ino(&v, "c1/zeta/disks/data.img"),
                Kind::File
            ),
        ]
    );
    let mid_disks = ino(&v, "c1/mid/disks");
    assert_eq!(names(&v, mid_disks), vec!["os.img"]);
    fails(
        v.lookup(mid_disks, OsStr::new("data.img")),
        libc::ENOENT,
        "excluded disk",
    );
    assert_eq!(listing(&v, mid_disks)[1].1, mid, "`..` of mid/disks");

    // Attributes: kinds, permissions, owner, times.
    let attr = |path: &str| resolve(&v, path).attr;
    for (path, kind, perm) in [
        ("", Kind::Directory, 0o755),
        ("c1", Kind::Directory, 0o755),
        ("c0", Kind::Directory, 0o755),
        ("c1/collection.json", Kind::File, 0o444),
        ("c1/latest", Kind::Symlink, 0o777),
        ("c1/zeta", Kind::Directory, 0o555),
        ("c1/zeta/disks", Kind::Directory, 0o555),
        ("c1/zeta/restore-point.json", Kind::File, 0o444),
        ("c1/zeta/vm-config", Kind::File, 0o400),
        ("c1/zeta/disks/os.img", Kind::File, 0o400),
        ("c1/zeta/disks/data.img", Kind::File, 0o400),
    ] {
        let a = attr(path);
        assert_eq!((a.kind, a.perm), (kind, perm), "{path:?}: {a:?}");
        assert_eq!((a.uid, a.gid), (OWNER_UID, OWNER_GID), "{path:?}");
        assert_eq!(a.ino, ino(&v, path), "{path:?}: stable inode");
    }
    assert_eq!(attr("").ino, ROOT_INO);
    for name in ["zeta", "alpha", "mid"] {
        for sub in [
            "",
            "/disks",
            "/restore-point.json",
            "/vm-config",
            "/disks/os.img",
        ] {
            let path = format!("c1/{name}{sub}");
            assert_eq!(attr(&path).mtime, created(name), "time of {path}");
        }
    }
    // A collection's time is its newest point's; an empty one's its creation.
    assert_eq!(attr("c1").mtime, created("mid"));
    let c0_created = parse_time(&cat.collection("c0").expect("c0").created);
    assert_eq!(attr("c0").mtime, c0_created);

    // Sizes: images the disk size; blocks only the stored data.
    let os = attr("c1/zeta/disks/os.img");
    assert_eq!(os.size, OS_SIZE);
    assert_eq!(os.blocks, OS_PAGES.len() as u64 * PAGE / 512);
    assert!(os.blocks * 50 < OS_SIZE / 512, "{os:?}");
    let data = attr("c1/alpha/disks/data.img");
    assert_eq!(data.size, t.data_alpha.len() as u64);
    assert_eq!(data.blocks, (data.size.div_ceil(PAGE)) * PAGE / 512);
    assert_eq!(attr("c1/zeta/vm-config").size, CONFIG.len() as u64);
    for path in [
        "c1/collection.json",
        "c0/collection.json",
        "c1/zeta/restore-point.json",
        "c1/mid/restore-point.json",
    ] {
        let e = resolve(&v, path);
        assert_eq!(
            e.attr.size,
            read_file(&v, e.attr.ino).len() as u64,
            "size of {path}"
        );
        assert_eq!(e.attr.blocks, e.attr.size.div_ceil(512), "{path}");
    }

    // What never changes is cached long, what changes briefly.
    assert_eq!(resolve(&v, "c1/zeta/disks/os.img").ttl, IMMUTABLE_TTL);
    assert_eq!(resolve(&v, "c1/zeta/vm-config").ttl, IMMUTABLE_TTL);
    assert_eq!(resolve(&v, "c1").ttl, CHANGING_TTL);
    assert_eq!(resolve(&v, "c1/latest").ttl, CHANGING_TTL);
    assert_eq!(resolve(&v, "c1/collection.json").ttl, CHANGING_TTL);

    // getattr agrees with lookup.
    for path in ["c1", "c1/latest", "c1/zeta/disks/data.img"] {
        let e = resolve(&v, path);
        assert_eq!(
            v.getattr(e.attr.ino).expect("getattr").attr,
            e.attr,
            "{path}"
        );
    }
}
