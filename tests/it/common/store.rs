//! Stores in temporary directories and what they hold: [`TestStore`] (a store with room for
//! source images beside it), opening and creating through the engine, reading a point's disk
//! back, snapshots of a store's files to prove a refusal changed nothing, and the golden store
//! (four points of a two-disk VM, with what each must read) that the crash, fault and damage
//! tests start from.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;
use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;
use rpfs::engine::{Engine, InitOptions, OpenOptions};
use rpfs::store::LocalStorage;
use rpfs::store::records::PointRecord;
use tempfile::TempDir;

use super::images::{KIB, MIB, change_blocks, random_image, write_sparse};
use super::sys::{rng, seed};

/// A store in a temporary directory, with a place for source images beside it.
pub struct TestStore {
    pub dir: TempDir,
    pub engine: Engine,
}

/// A VM named `name` with `disks` (name, source), the first the OS disk, defaults otherwise.
pub fn vm_spec(name: &str, disks: &[(&str, &Path)]) -> VmSpec {
    VmSpec {
        name: name.into(),
        disks: disks
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_path_buf()))
            .collect(),
        ..VmSpec::default()
    }
}

impl TestStore {
    pub fn new(block_size: u32) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("store")).expect("store dir");
        let engine = Engine::init(
            Arc::new(LocalStorage::new(dir.path().join("store"))),
            block_size,
        )
        .expect("init store");
        TestStore { dir, engine }
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Opens the store again, as a new process would (running recovery).
    pub fn reopen(&self) -> Engine {
        open(&self.store_path())
    }

    /// Adds a VM with the given disks and one collection named `coll` for it.
    pub fn vm(&self, name: &str, disks: &[(&str, &Path)], coll: &str) {
        self.engine.add_vm(&vm_spec(name, disks)).expect("add vm");
        self.engine
            .create_collection(coll, name, None)
            .expect("collection");
    }

    pub fn create(&self, coll: &str, name: &str) -> PointRecord {
        create(&self.engine, coll, name)
    }

    /// The `rpfs` binary pointed at this store (as `common::cli::rpfs_at` is at any store).
    pub fn cli(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("rpfs").expect("rpfs binary");
        c.env("RPFS_STORE", self.store_path())
            .env_remove("RPFS_LOG");
        c
    }

    /// Every file of the store with its content, locks and the reserve excluded (they are not
    /// data).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        snapshot(&self.store_path())
    }

    /// Total bytes of the store's files.
    pub fn size(&self) -> u64 {
        self.snapshot().values().map(|v| v.len() as u64).sum()
    }
}

pub fn open(store: &Path) -> Engine {
    Engine::open(Arc::new(LocalStorage::new(store)), OpenOptions::default()).expect("open store")
}

pub fn create(engine: &Engine, coll: &str, name: &str) -> PointRecord {
    engine
        .create_point(
            &CreateRequest {
                collection: coll.into(),
                name: name.into(),
                exclude: vec![],
                consistency: None,
            },
            &Silent,
        )
        .unwrap_or_else(|e| panic!("create {coll}/{name}: {e}"))
        .point
}

/// Every file under `root` with its content, locks and the reserve excluded (they are not
/// data).
pub fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            if rel.starts_with("locks") || rel == rpfs::store::layout::RESERVE {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// Asserts two store snapshots are equal, naming the files that differ.
pub fn assert_unchanged(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "{what} changed the store: added {added:?}, removed {removed:?}, changed {changed:?}"
    );
}

/// Reads a whole disk restore point through `read_at`, in uneven chunks.
pub fn read_image(engine: &Engine, coll: &str, point: &str, disk: &str) -> Vec<u8> {
    let cat = engine.catalog().expect("catalog");
    let (_, p) = cat.point(coll, point).expect("point");
    let image = engine.open_disk(coll, p, disk).expect("open disk");
    let mut out = vec![0u8; image.size() as usize];
    let mut off = 0usize;
    let mut chunk = 4096 * 3 + 17;
    while off < out.len() {
        let end = (off + chunk).min(out.len());
        let n = image
            .read_at(off as u64, &mut out[off..end])
            .expect("read_at");
        assert_eq!(n, end - off, "short read at {off}");
        off = end;
        chunk = chunk * 2 % (3 * MIB as usize) + 511;
    }
    out
}

/// Names ("collection/point") of the points in the store, sorted.
pub fn all_points(engine: &Engine) -> Vec<String> {
    let cat = engine.catalog().expect("catalog");
    let mut names: Vec<String> = cat
        .collections
        .iter()
        .flat_map(|c| {
            cat.points_in(c.id)
                .map(move |p| format!("{}/{}", c.name, p.name))
        })
        .collect();
    names.sort();
    names
}

/// Reads every disk of `point` ("collection/point") and compares it with `disks`.
pub fn point_matches(engine: &Engine, point: &str, disks: &BTreeMap<String, Vec<u8>>) -> bool {
    let (coll, name) = point.split_once('/').expect("collection/point");
    disks
        .iter()
        .all(|(disk, content)| read_image(engine, coll, name, disk) == *content)
}

/// "collection/point" → disk name → content.
pub type Expected = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// A store with a two-disk VM ("os" sparse and mixed, "data" random; 4 KiB blocks) and points
/// c/p1, c/p2, d/q1, c/p3 in that order (d is a second collection of the same VM), 10% of the
/// blocks changed between points and once more after the last. `points` = 0 stops after the
/// collections, with the sources as they are.
pub struct Golden {
    pub dir: TempDir,
    pub store: PathBuf,
    pub points: Expected,
    /// Content of the sources now, which a new point must capture.
    pub sources: BTreeMap<String, Vec<u8>>,
}

pub fn golden(points: usize) -> Golden {
    golden_format(points, rpfs::store::format::DEFAULT)
}

/// [`golden`] in a store of on-disk format `version`.
pub fn golden_format(points: usize, version: u32) -> Golden {
    let ts = TestStore::new_format(4096, version);
    let mut rng = rng(seed());
    let (os, data) = (ts.path("os.img"), ts.path("data.img"));
    // Random, a hole, compressible text, random: every kind of block, whatever the seed.
    let mut os_c = vec![0u8; 384 * KIB as usize];
    rng.fill_bytes(&mut os_c[..96 * KIB as usize]);
    for (i, b) in os_c[192 * KIB as usize..288 * KIB as usize]
        .iter_mut()
        .enumerate()
    {
        *b = b"restore points, text that compresses\n"[i % 37];
    }
    rng.fill_bytes(&mut os_c[288 * KIB as usize..]);
    write_sparse(&os, &os_c);
    let mut data_c = random_image(&data, 128 * KIB as usize, &mut rng);
    ts.vm("vm", &[("os", &os), ("data", &data)], "c");
    ts.engine
        .create_collection("d", "vm", None)
        .expect("collection d");
    let mut expected = Expected::new();
    for (coll, name) in [("c", "p1"), ("c", "p2"), ("d", "q1"), ("c", "p3")]
        .into_iter()
        .take(points)
    {
        ts.create(coll, name);
        expected.insert(
            format!("{coll}/{name}"),
            BTreeMap::from([("os".into(), os_c.clone()), ("data".into(), data_c.clone())]),
        );
        change_blocks(&os, &mut os_c, 4096, 0.1, &mut rng);
        change_blocks(&data, &mut data_c, 4096, 0.1, &mut rng);
    }
    let store = ts.store_path();
    let TestStore { dir, engine } = ts;
    drop(engine);
    Golden {
        dir,
        store,
        points: expected,
        sources: BTreeMap::from([("os".into(), os_c), ("data".into(), data_c)]),
    }
}

/// A format-2 store (pages in shared frame packs, deduplicated across disks and VMs) with
/// frames of `frame_size` bytes, in a temporary directory.
pub fn paged_store(frame_size: u32) -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("store")).expect("store dir");
    let engine = Engine::init_with(
        Arc::new(LocalStorage::new(dir.path().join("store"))),
        InitOptions {
            block_size: frame_size,
            version: rpfs::store::format::PAGED,
            ..InitOptions::default()
        },
    )
    .expect("init format-2 store");
    TestStore { dir, engine }
}

impl TestStore {
    /// As [`TestStore::new`], in store format `version` (`rpfs::store::format::PAGED` for
    /// format 2, whose frame size is `block_size`).
    pub fn new_format(block_size: u32, version: u32) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("store")).expect("store dir");
        let engine = Engine::init_with(
            Arc::new(LocalStorage::new(dir.path().join("store"))),
            InitOptions {
                block_size,
                version,
                ..InitOptions::default()
            },
        )
        .expect("init store");
        TestStore { dir, engine }
    }
}

impl TestStore {
    /// A new store of on-disk format 2 (page maps over store-wide frame packs) with frames of
    /// `block_size` bytes.
    pub fn paged(block_size: u32) -> TestStore {
        TestStore::new_format(block_size, rpfs::store::format::PAGED)
    }
}

/// What the frame packs of a format 2 store hold against what its committed maps reference,
/// page by page (`pack frame slot`), from the store's files alone.
#[derive(Debug, Default)]
pub struct PageAccount {
    /// Pages some committed map references.
    pub referenced: u64,
    /// Pages the packs hold.
    pub present: u64,
    /// Pages a pack holds that no committed map references (what a sweep must free).
    pub unreferenced: Vec<String>,
    /// Pages a committed map references that no pack holds (freed while still in use).
    pub missing: Vec<String>,
    /// Temporaries under `data/` and `index/`, and segments none of whose packs exist.
    pub leftovers: Vec<String>,
}

impl PageAccount {
    /// True when the packs hold exactly what the maps reference, and nothing else lies about.
    pub fn exact(&self) -> bool {
        self.unreferenced.is_empty() && self.missing.is_empty() && self.leftovers.is_empty()
    }
}

/// Keys of the objects under `dir` (two levels for `data/`, one for `index/`).
fn objects_under(
    storage: &dyn rpfs::store::storage::Storage,
    dir: &str,
    depth: usize,
) -> Vec<String> {
    let names = match storage.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("listing {dir}: {e}"),
    };
    names
        .into_iter()
        .flat_map(|n| {
            let key = format!("{dir}/{n}");
            if depth > 1 {
                objects_under(storage, &key, depth - 1)
            } else {
                vec![key]
            }
        })
        .collect()
}

/// Pack objects under `data/` and segment objects under `index/`, temporaries included.
pub fn paged_objects(store: &Path) -> (Vec<String>, Vec<String>) {
    let storage = LocalStorage::new(store);
    (
        objects_under(&storage, rpfs::store::layout::DATA, 2),
        objects_under(&storage, rpfs::store::layout::INDEX, 1),
    )
}

/// Accounts every page of the format 2 store at `store` against the committed maps of
/// `engine`'s catalog (see [`PageAccount`]). Panics on an unreadable map or pack.
pub fn page_account(store: &Path, engine: &Engine) -> PageAccount {
    use rpfs::store::frames::FramePack;
    use rpfs::store::layout::{self, Name};
    use rpfs::store::pagemap::PageMap;
    use rpfs::store::refs::RefSet;
    use rpfs::store::storage::Storage;

    let storage = LocalStorage::new(store);
    let frame_size = engine.header().block_size;
    let cat = engine.catalog().expect("catalog");
    let mut live = RefSet::new();
    for p in &cat.points {
        for d in &p.disks {
            let key = layout::map(p.vm_id, d.disk_id, d.drp_id);
            let obj = storage
                .open(&key)
                .unwrap_or_else(|e| panic!("map {key} of a committed point: {e}"));
            let map = PageMap::open(&key, &*obj).unwrap_or_else(|e| panic!("{key}: {e}"));
            live.union_with(&map.summary(&key, &*obj).expect("map summary"));
        }
    }
    let mut out = PageAccount {
        referenced: live.page_count(),
        ..PageAccount::default()
    };
    let (packs, segments) = paged_objects(store);
    let mut present = std::collections::BTreeSet::new();
    for key in packs {
        let name = key.rsplit('/').next().expect("name");
        let Name::Pack(pack) = layout::classify(name) else {
            out.leftovers.push(key);
            continue;
        };
        present.insert(pack);
        let obj = storage.open(&key).expect("open pack");
        let fp =
            FramePack::open(&key, &*obj, pack, frame_size).unwrap_or_else(|e| panic!("{key}: {e}"));
        let wanted = live.frames(pack);
        let want = |f: u32| {
            wanted
                .binary_search_by_key(&f, |&(frame, _)| frame)
                .map_or(0, |i| wanted[i].1)
        };
        let mut frame = 0u32;
        for chunk in 0..fp.table_chunks() {
            for e in fp
                .table_chunk(&key, &*obj, chunk)
                .unwrap_or_else(|e| panic!("{key} table: {e}"))
            {
                out.present += u64::from(e.mask.count_ones());
                let extra = e.mask & !want(frame);
                let lacking = want(frame) & !e.mask;
                if extra != 0 {
                    out.unreferenced
                        .push(format!("{pack} frame {frame} slots {extra:#06x}"));
                }
                if lacking != 0 {
                    out.missing
                        .push(format!("{pack} frame {frame} slots {lacking:#06x}"));
                }
                frame += 1;
            }
        }
        if let Some(&(f, m)) = wanted.iter().find(|&&(f, _)| f >= frame) {
            out.missing
                .push(format!("{pack} frame {f} slots {m:#06x} (past its table)"));
        }
    }
    for pack in live.packs() {
        if !present.contains(&pack) {
            out.missing.push(format!("{pack}: the whole pack"));
        }
    }
    for key in segments {
        let name = key.rsplit('/').next().expect("name");
        match layout::classify(name) {
            Name::Segment(_) => {
                let obj = storage.open(&key).expect("open segment");
                let seg = rpfs::store::index::Segment::open(&key, &*obj)
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
                if seg.packs().iter().all(|p| !present.contains(p)) {
                    out.leftovers
                        .push(format!("{key} (none of its packs exist)"));
                }
            }
            _ => out.leftovers.push(key),
        }
    }
    out
}

/// Records that a sweep is owed (the store's own debt marker), so the next open sweeps.
pub fn owe_sweep(store: &Path) {
    use rpfs::store::storage::Storage;
    LocalStorage::new(store)
        .put(rpfs::store::layout::GC_OWED, b"")
        .expect("gc-owed");
}
