//! The filesystem core (`rpfs::vfs::Vfs`) driven directly, without a kernel or a mount: the
//! tree, attributes, reads, `lseek`, every refusal with its exact errno, `mkdir`/`rmdir`, and
//! how changes made by another process show.

mod common;

use std::ffi::OsStr;
use std::fmt::Debug;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use rpfs::engine::create::{Consistency, CreateRequest};
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::{ConfigSource, ConsistencyMode, DiskType};
use rpfs::vfs::{CHANGING_TTL, Entry, FsError, IMMUTABLE_TTL, Kind, ROOT_INO, Vfs, VfsOptions};
use serde_json::Value;

const OWNER_UID: u32 = 4242;
const OWNER_GID: u32 = 4343;
const STRANGER_UID: u32 = 5555;
const PAGE: u64 = 4096;
const SEEK_SET: i32 = 0;
const SEEK_CUR: i32 = 1;
const SEEK_END: i32 = 2;
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;
/// Long enough that only an explicit refresh (mkdir/rmdir) can make a change visible.
const FOREVER: Duration = Duration::from_secs(3600);

// ----- helpers -----

fn options(allow_delete: bool, allow_other: bool, catalog_max_age: Duration) -> VfsOptions {
    VfsOptions {
        allow_delete,
        allow_other,
        owner_uid: OWNER_UID,
        owner_gid: OWNER_GID,
        catalog_max_age,
    }
}

/// A tree over `ts`'s store, through its own engine (as the mount daemon would have).
fn mount(ts: &TestStore, allow_delete: bool, allow_other: bool, age: Duration) -> Vfs {
    Vfs::new(ts.reopen(), options(allow_delete, allow_other, age)).expect("Vfs::new")
}

/// Asserts `r` failed with `errno`; returns the error for checks of its message.
#[track_caller]
fn fails<T: Debug>(r: Result<T, FsError>, errno: i32, what: &str) -> FsError {
    match r {
        Ok(v) => panic!("{what}: expected errno {errno}, got success {v:?}"),
        Err(e) => {
            assert_eq!(
                e.errno(),
                errno,
                "{what}: wrong errno for error {e:?} ({e})"
            );
            e
        }
    }
}

#[track_caller]
fn lookup(v: &Vfs, parent: u64, name: &str) -> Entry {
    v.lookup(parent, OsStr::new(name))
        .unwrap_or_else(|e| panic!("lookup {name:?} in {parent}: {e}"))
}

/// Resolves a slash-separated path from the root ("" is the root).
#[track_caller]
fn resolve(v: &Vfs, path: &str) -> Entry {
    let mut e = v.getattr(ROOT_INO).expect("getattr root");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        e = lookup(v, e.attr.ino, part);
    }
    e
}

#[track_caller]
fn ino(v: &Vfs, path: &str) -> u64 {
    resolve(v, path).attr.ino
}

/// (name, ino, kind) of every entry of directory `ino`, `.` and `..` included.
#[track_caller]
fn listing(v: &Vfs, ino: u64) -> Vec<(String, u64, Kind)> {
    v.readdir(ino)
        .unwrap_or_else(|e| panic!("readdir {ino}: {e}"))
        .into_iter()
        .map(|d| (d.name.to_string_lossy().into_owned(), d.ino, d.kind))
        .collect()
}

/// Names in directory `ino`, without `.` and `..` (after checking they come first).
#[track_caller]
fn names(v: &Vfs, ino: u64) -> Vec<String> {
    let l = listing(v, ino);
    assert_eq!(l[0].0, ".", "{l:?}");
    assert_eq!(l[1].0, "..", "{l:?}");
    l.into_iter().skip(2).map(|(n, _, _)| n).collect()
}

/// The whole content of file `ino`, read in uneven chunks.
#[track_caller]
fn read_file(v: &Vfs, ino: u64) -> Vec<u8> {
    let fh = v.open(ino, libc::O_RDONLY).expect("open").fh;
    let mut out = Vec::new();
    let mut chunk = 7000u32;
    loop {
        let got = v.read(fh, out.len() as u64, chunk).expect("read");
        let short = got.len() < chunk as usize;
        out.extend_from_slice(&got);
        if short {
            break;
        }
        chunk = chunk * 3 % 300_000 + 1;
    }
    v.release(fh);
    out
}

#[track_caller]
fn json(v: &Vfs, path: &str) -> Value {
    let bytes = read_file(v, ino(v, path));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path} is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// `rpfs.lastOperation` of a collection, read through the tree.
#[track_caller]
fn last_op(v: &Vfs, coll: &str) -> Value {
    json(v, &format!("{coll}/collection.json"))["rpfs"]["lastOperation"].clone()
}

#[track_caller]
fn assert_last_op(v: &Vfs, coll: &str, op: &str, point: &str, failed_with: Option<&[&str]>) {
    let last = last_op(v, coll);
    assert_eq!(last["operation"], op, "{last}");
    assert_eq!(last["restorePoint"], point, "{last}");
    match failed_with {
        None => {
            assert_eq!(last["status"], "Succeeded", "{last}");
            assert!(last["error"].is_null(), "{last}");
        }
        Some(parts) => {
            assert_eq!(last["status"], "Failed", "{last}");
            assert_mentions(last["error"].as_str().expect("error text"), parts);
        }
    }
}

/// Random reads of image `ino` against `content`: inside, across the end, past the end.
#[track_caller]
fn check_reads(v: &Vfs, ino: u64, content: &[u8], rng: &mut StdRng, reads: usize) {
    let size = content.len() as u64;
    let fh = v.open(ino, libc::O_RDONLY).expect("open image").fh;
    for _ in 0..reads {
        let off = rng.random_range(0..size);
        let len = rng.random_range(1..=(256 * KIB) as u32);
        let got = v.read(fh, off, len).expect("read");
        let end = (off + u64::from(len)).min(size);
        assert_eq!(
            got.len() as u64,
            end - off,
            "read of {len} at {off} (size {size})"
        );
        assert!(
            got == content[off as usize..end as usize],
            "read of {len} at {off}: wrong bytes"
        );
    }
    // Across the end: short; at and past the end: empty.
    let got = v.read(fh, size - 10, 100).expect("read across the end");
    assert_eq!(got, content[content.len() - 10..]);
    assert!(v.read(fh, size, 100).expect("read at end").is_empty());
    assert!(
        v.read(fh, size + 12345, 4096)
            .expect("read past end")
            .is_empty()
    );
    assert!(
        v.read(fh, u64::MAX, 4096)
            .expect("read at u64::MAX")
            .is_empty()
    );
    assert!(v.read(fh, 0, 0).expect("read of 0 bytes").is_empty());
    v.release(fh);
}

fn parse_time(t: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(t).expect("RFC 3339 time")
}

fn add_vm(ts: &TestStore, spec: VmSpec, collections: &[&str]) {
    ts.engine.add_vm(&spec).expect("add vm");
    for c in collections {
        ts.engine
            .create_collection(c, &spec.name, None)
            .expect("collection");
    }
}

fn spec(name: &str, disks: &[(&str, &Path)]) -> VmSpec {
    VmSpec {
        name: name.into(),
        disks: disks
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_path_buf()))
            .collect(),
        ..VmSpec::default()
    }
}

// ----- a store with one VM of two disks and three points -----

/// Pages of the sparse OS disk holding data; the last one is a partial page.
const OS_PAGES: &[u64] = &[0, 1, 2, 100, 1000, 1001, 1002, 1003, 1500, 2047];
/// OS disk size: 2047 whole pages and a partial one.
const OS_SIZE: u64 = 2047 * PAGE + 2000;
const CONFIG: &[u8] = b"<domain type='kvm'><name>vm1</name></domain>\n";

struct Tree {
    ts: TestStore,
    os: Vec<u8>,
    /// Data disk at points `zeta` and `alpha`.
    data_zeta: Vec<u8>,
    data_alpha: Vec<u8>,
}

/// VM `vm1` (disks `os`: sparse, `data`: random, unaligned size; a configuration file) with
/// collection `c1` holding `zeta`, `alpha`, `mid` (created in that order; `mid` excludes `data`
/// through the collection's defaults) and an empty collection `c0`.
fn tree(rng: &mut StdRng) -> Tree {
    let ts = TestStore::new(4096);
    let mut os = vec![0u8; OS_SIZE as usize];
    for &p in OS_PAGES {
        let start = (p * PAGE) as usize;
        let end = (start + PAGE as usize).min(os.len());
        rng.fill_bytes(&mut os[start..end]);
    }
    write_sparse(&ts.path("os.img"), &os);
    let data_path = ts.path("data.img");
    let mut data = random_image(&data_path, 256 * KIB as usize + 1000, rng);
    std::fs::write(ts.path("vm1.xml"), CONFIG).expect("config file");
    add_vm(
        &ts,
        VmSpec {
            config: ConfigSource::File(ts.path("vm1.xml")),
            ..spec("vm1", &[("os", &ts.path("os.img")), ("data", &data_path)])
        },
        &["c1", "c0"],
    );
    ts.create("c1", "zeta");
    let data_zeta = data.clone();
    change_blocks(&data_path, &mut data, 4096, 0.2, rng);
    ts.create("c1", "alpha");
    ts.engine
        .set_collection_defaults("c1", Some(vec!["data".into()]), None)
        .expect("defaults");
    ts.create("c1", "mid");
    Tree {
        ts,
        os,
        data_zeta,
        data_alpha: data,
    }
}

// ----- 1. the tree and its attributes -----

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
        ("c1/zeta/vm-config", Kind::File, 0o444),
        ("c1/zeta/disks/os.img", Kind::File, 0o444),
        ("c1/zeta/disks/data.img", Kind::File, 0o444),
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

// ----- 2. reads -----

#[test]
fn reads_return_the_captured_content() {
    let mut rng = rng(seed());
    let t = tree(&mut rng);
    let v = mount(&t.ts, false, false, FOREVER);

    for (path, content) in [
        ("c1/zeta/disks/os.img", &t.os),
        ("c1/mid/disks/os.img", &t.os),
        ("c1/zeta/disks/data.img", &t.data_zeta),
        ("c1/alpha/disks/data.img", &t.data_alpha),
    ] {
        let ino = ino(&v, path);
        check_reads(&v, ino, content, &mut rng, 60);
        assert!(read_file(&v, ino) == *content, "{path}: whole read");
    }
    assert_ne!(t.data_zeta, t.data_alpha);

    // Images keep the page cache; generated JSON bypasses it.
    let o = v
        .open(ino(&v, "c1/zeta/disks/os.img"), libc::O_RDONLY)
        .expect("open");
    assert!(o.keep_cache && !o.direct_io, "{o:?}");
    v.release(o.fh);
    let o = v
        .open(ino(&v, "c1/zeta/restore-point.json"), libc::O_RDONLY)
        .expect("open");
    assert!(o.direct_io, "{o:?}");
    v.release(o.fh);

    // The configuration captured verbatim.
    assert_eq!(read_file(&v, ino(&v, "c1/alpha/vm-config")), CONFIG);

    // JSON resources: what `rpfs point show --json` / `collection show --json` print.
    for name in ["zeta", "alpha", "mid"] {
        let got = json(&v, &format!("c1/{name}/restore-point.json"));
        assert_eq!(got["name"], name);
        assert_eq!(got["properties"]["consistencyMode"], "CrashConsistent");
        assert_eq!(got["properties"]["provisioningState"], "Succeeded");
        let cli = cli_json(&t.ts, &["point", "show", &format!("c1/{name}"), "--json"]);
        assert_eq!(
            got, cli,
            "restore-point.json of {name} vs point show --json"
        );
    }
    let mid = json(&v, "c1/mid/restore-point.json");
    let excluded = mid["properties"]["excludeDisks"].as_array().expect("array");
    assert_eq!(excluded.len(), 1, "{mid}");
    assert!(
        excluded[0]["id"].as_str().expect("id").ends_with("_data"),
        "{mid}"
    );
    let coll = json(&v, "c1/collection.json");
    assert_eq!(coll["name"], "c1");
    let points: Vec<&str> = coll["properties"]["restorePoints"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(points, ["zeta", "alpha", "mid"]);
    assert_eq!(
        coll,
        cli_json(&t.ts, &["collection", "show", "c1", "--json"])
    );

    // Reads of a JSON file: exact lengths, short at the end, empty past it.
    let rp = read_file(&v, ino(&v, "c1/zeta/restore-point.json"));
    let fh = v
        .open(ino(&v, "c1/zeta/restore-point.json"), libc::O_RDONLY)
        .expect("open")
        .fh;
    assert_eq!(v.read(fh, 5, 10).expect("read"), rp[5..15]);
    let n = rp.len() as u64;
    assert_eq!(v.read(fh, n - 3, 10).expect("read"), rp[rp.len() - 3..]);
    assert!(v.read(fh, n, 10).expect("read").is_empty());
    assert!(v.read(fh, u64::MAX, 10).expect("read").is_empty());
    v.release(fh);
}

#[test]
fn vm_config_from_a_command_is_captured_verbatim() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    random_image(&ts.path("os.img"), 64 * KIB as usize, &mut rng);
    add_vm(
        &ts,
        VmSpec {
            config: ConfigSource::Command(
                "printf 'phase=%s vm=%s\\n\\001\\377' \"$RPFS_PHASE\" \"$RPFS_VM\"".into(),
            ),
            ..spec("vmc", &[("os", &ts.path("os.img"))])
        },
        &["cc"],
    );
    let v = mount(&ts, false, false, FOREVER);
    v.mkdir(ino(&v, "cc"), OsStr::new("p1"), OWNER_UID)
        .expect("mkdir");
    let want = b"phase=config vm=vmc\n\x01\xff";
    let e = resolve(&v, "cc/p1/vm-config");
    assert_eq!(e.attr.size, want.len() as u64);
    assert_eq!(read_file(&v, e.attr.ino), want);

    // A VM without configuration: an empty vm-config.
    add_vm(&ts, spec("vmn", &[("os", &ts.path("os.img"))]), &["cn"]);
    ts.create("cn", "p1");
    let v = mount(&ts, false, false, FOREVER);
    let e = resolve(&v, "cn/p1/vm-config");
    assert_eq!(e.attr.size, 0);
    assert!(read_file(&v, e.attr.ino).is_empty());
}

// ----- 3. lseek -----

#[test]
fn lseek_data_and_hole_follow_the_image() {
    let mut rng = rng(seed());
    let t = tree(&mut rng);
    let v = mount(&t.ts, false, false, FOREVER);
    let fh = v
        .open(ino(&v, "c1/zeta/disks/os.img"), libc::O_RDONLY)
        .expect("open")
        .fh;
    let pages = OS_SIZE.div_ceil(PAGE);
    let is_data = |p: u64| OS_PAGES.contains(&p);
    let next = |off: u64, data: bool| -> Option<u64> {
        (off / PAGE..pages)
            .find(|&p| is_data(p) == data)
            .map(|p| (p * PAGE).max(off).min(OS_SIZE))
    };
    let mut offsets: Vec<u64> = (0..pages)
        .flat_map(|p| [p * PAGE, p * PAGE + 1, p * PAGE + PAGE - 1])
        .filter(|&o| o < OS_SIZE)
        .collect();
    offsets.extend((0..200).map(|_| rng.random_range(0..OS_SIZE)));
    offsets.push(OS_SIZE - 1);
    for off in offsets {
        let o = off as i64;
        match next(off, true) {
            Some(d) => assert_eq!(
                v.lseek(fh, o, SEEK_DATA).expect("SEEK_DATA"),
                d as i64,
                "SEEK_DATA {off}"
            ),
            None => {
                fails(
                    v.lseek(fh, o, SEEK_DATA),
                    libc::ENXIO,
                    "SEEK_DATA past the data",
                );
            }
        }
        let hole = next(off, false).unwrap_or(OS_SIZE);
        assert_eq!(
            v.lseek(fh, o, SEEK_HOLE).expect("SEEK_HOLE"),
            hole as i64,
            "SEEK_HOLE {off}"
        );
    }
    // Spot checks of the model itself.
    assert_eq!(v.lseek(fh, 0, SEEK_HOLE).expect("hole"), 3 * PAGE as i64);
    assert_eq!(
        v.lseek(fh, 3 * PAGE as i64, SEEK_DATA).expect("data"),
        100 * PAGE as i64
    );
    assert_eq!(
        v.lseek(fh, 1501 * PAGE as i64, SEEK_DATA).expect("data"),
        2047 * PAGE as i64
    );
    assert_eq!(
        v.lseek(fh, 2047 * PAGE as i64, SEEK_HOLE).expect("hole"),
        OS_SIZE as i64
    );

    // Refusals.
    for whence in [SEEK_DATA, SEEK_HOLE] {
        fails(
            v.lseek(fh, OS_SIZE as i64, whence),
            libc::ENXIO,
            "offset = size",
        );
        fails(
            v.lseek(fh, OS_SIZE as i64 + 1, whence),
            libc::ENXIO,
            "offset > size",
        );
        fails(
            v.lseek(fh, i64::MAX, whence),
            libc::ENXIO,
            "offset i64::MAX",
        );
        fails(v.lseek(fh, -1, whence), libc::EINVAL, "negative offset");
        fails(v.lseek(fh, i64::MIN, whence), libc::EINVAL, "i64::MIN");
    }
    for whence in [SEEK_SET, SEEK_CUR, SEEK_END, 5, -1, 99] {
        fails(v.lseek(fh, 0, whence), libc::EINVAL, "other whence");
    }
    v.release(fh);

    // An image without holes: data everywhere, the only hole at the end.
    let fh = v
        .open(ino(&v, "c1/zeta/disks/data.img"), libc::O_RDONLY)
        .expect("open")
        .fh;
    let size = t.data_zeta.len() as i64;
    assert_eq!(v.lseek(fh, 12345, SEEK_DATA).expect("data"), 12345);
    assert_eq!(v.lseek(fh, 12345, SEEK_HOLE).expect("hole"), size);
    assert_eq!(v.lseek(fh, size - 1, SEEK_HOLE).expect("hole"), size);
    v.release(fh);

    // Generated files: all data.
    let rp = resolve(&v, "c1/zeta/restore-point.json").attr;
    let fh = v.open(rp.ino, libc::O_RDONLY).expect("open").fh;
    assert_eq!(v.lseek(fh, 7, SEEK_DATA).expect("data"), 7);
    assert_eq!(v.lseek(fh, 7, SEEK_HOLE).expect("hole"), rp.size as i64);
    fails(
        v.lseek(fh, rp.size as i64, SEEK_DATA),
        libc::ENXIO,
        "json at end",
    );
    fails(v.lseek(fh, -5, SEEK_HOLE), libc::EINVAL, "json negative");
    v.release(fh);
}

// ----- 4. refusals -----

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

// ----- 5. mkdir -----

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

// ----- 6. limits -----

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

// ----- 7. rmdir -----

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

// ----- 8. freshness -----

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
    common::create(&other, "c1", "p2");
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

// ----- 9. statfs -----

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
