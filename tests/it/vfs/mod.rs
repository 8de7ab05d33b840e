//! The filesystem core (`rpfs::vfs::Vfs`) driven directly, without a kernel or a mount: the
//! tree, attributes, reads, `lseek`, every refusal with its exact errno, `mkdir`/`rmdir`, and
//! how changes made by another process show. One module per topic; the helpers they share and
//! the fixture store most start from (`tree()`) are here.

mod changes;
mod guest;
mod mkdir;
mod reads;
mod refusals;
mod tree;

use std::ffi::OsStr;
use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::ConfigSource;
use rpfs::vfs::{Entry, FsError, Kind, ROOT_INO, Vfs, VfsOptions};
use serde_json::Value;

use crate::common::cli::assert_mentions;
use crate::common::images::{KIB, change_blocks, random_image, write_sparse};
use crate::common::store::{TestStore, vm_spec as spec};

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
        image_gid: None,
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
