//! Helpers shared by the integration tests: stores and images in temporary directories, real
//! ext4 images made with `mkfs.ext4 -d`, and the `rpfs` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;
use rpfs::engine::{Engine, OpenOptions};
use rpfs::store::LocalStorage;
use rpfs::store::records::PointRecord;
use tempfile::TempDir;

pub mod mount;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// A deterministic RNG; the seed is printed so a failure can be replayed.
pub fn rng(seed: u64) -> StdRng {
    eprintln!("rng seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// A seed from the environment (`RPFS_TEST_SEED`) or the clock.
pub fn seed() -> u64 {
    std::env::var("RPFS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Panics (never skips) when a tool the tests rely on is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required by this test (scripts/test.sh installs it)"
    );
}

/// Runs a command and panics with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A store in a temporary directory, with a place for source images beside it.
pub struct TestStore {
    pub dir: TempDir,
    pub engine: Engine,
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
        self.engine
            .add_vm(&VmSpec {
                name: name.into(),
                disks: disks
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                    .collect(),
                ..VmSpec::default()
            })
            .expect("add vm");
        self.engine
            .create_collection(coll, name, None)
            .expect("collection");
    }

    pub fn create(&self, coll: &str, name: &str) -> PointRecord {
        create(&self.engine, coll, name)
    }

    /// The `rpfs` binary pointed at this store.
    pub fn cli(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("rpfs").expect("rpfs binary");
        c.env("RPFS_STORE", self.store_path())
            .env_remove("RPFS_LOG");
        c
    }

    /// Every file of the store with its content, locks excluded (they are not data).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        snapshot(&self.store_path())
    }

    /// Total bytes of the store's files.
    pub fn size(&self) -> u64 {
        self.snapshot().values().map(|v| v.len() as u64).sum()
    }
}

/// The `rpfs` binary pointed at the store in `store`, with logging off.
pub fn rpfs_at(store: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("rpfs").expect("rpfs binary");
    c.env("RPFS_STORE", store).env_remove("RPFS_LOG");
    c
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
            if rel.starts_with("locks") {
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

/// Writes a sparse image of `size` bytes: random extents separated by holes and zeros.
pub fn mixed_image(path: &Path, size: u64, rng: &mut StdRng) -> Vec<u8> {
    let mut content = vec![0u8; size as usize];
    let mut off = 0u64;
    while off < size {
        let len = rng.random_range(16 * KIB..2 * MIB).min(size - off);
        if rng.random_bool(0.5) {
            rng.fill_bytes(&mut content[off as usize..(off + len) as usize]);
        }
        off += len;
    }
    write_sparse(path, &content);
    content
}

/// Writes `content` to `path`, leaving all-zero 4 KiB pages as holes.
pub fn write_sparse(path: &Path, content: &[u8]) {
    let f = File::create(path).expect("create image");
    f.set_len(content.len() as u64).expect("size");
    for (i, page) in content.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            f.write_all_at(page, i as u64 * 4096).expect("write");
        }
    }
    f.sync_all().expect("sync");
}

/// Overwrites `fraction` of the `block_size` blocks of `content` with random bytes, writing the
/// changes to `path` too. Returns the changed block numbers.
pub fn change_blocks(
    path: &Path,
    content: &mut [u8],
    block_size: u64,
    fraction: f64,
    rng: &mut StdRng,
) -> Vec<u64> {
    let blocks = (content.len() as u64).div_ceil(block_size);
    let n = ((blocks as f64 * fraction).round() as u64).max(1);
    let mut chosen: Vec<u64> = rand::seq::index::sample(rng, blocks as usize, n as usize)
        .into_iter()
        .map(|b| b as u64)
        .collect();
    chosen.sort();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    for &b in &chosen {
        let start = (b * block_size) as usize;
        let end = (start + block_size as usize).min(content.len());
        rng.fill_bytes(&mut content[start..end]);
        f.write_all_at(&content[start..end], start as u64)
            .expect("write");
    }
    f.sync_all().expect("sync");
    chosen
}

/// Fills `dir` with a small tree of files of random content.
pub fn file_tree(dir: &Path, files: usize, rng: &mut StdRng) {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 5));
        fs::create_dir_all(&sub).expect("mkdir");
        let len = rng.random_range(0..200 * KIB as usize);
        let mut data = vec![0u8; len];
        // Half random, half text: a realistic mix of compressible and incompressible data.
        if i % 2 == 0 {
            rng.fill_bytes(&mut data);
        } else {
            for (j, b) in data.iter_mut().enumerate() {
                *b = b"the quick brown fox jumps over the lazy dog\n"[j % 44];
            }
        }
        fs::write(sub.join(format!("f{i}.bin")), data).expect("write file");
    }
}

/// Makes a real ext4 image of `size` bytes from the files in `tree` (`mkfs.ext4 -d`).
pub fn ext4_image(tree: &Path, image: &Path, size: u64) {
    require_tool("mkfs.ext4");
    let _ = fs::remove_file(image);
    sh(&format!(
        "mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d '{}' '{}' {}k",
        tree.display(),
        image.display(),
        size / KIB
    ));
}

/// Runs `cmd`, asserts its exit code, and returns (stdout, stderr). A refusal must come with an
/// error message.
pub fn expect_exit(cmd: &mut assert_cmd::Command, code: i32) -> (String, String) {
    let out = cmd.output().expect("run rpfs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}: expected exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    if code != 0 {
        assert!(
            stderr.contains("rpfs: error: ") || stderr.starts_with("error: "),
            "{cmd:?}: refusal without an error message: {stderr:?}"
        );
    }
    (stdout, stderr)
}

/// Asserts that `msg` contains every one of `parts`.
pub fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}: {msg}");
    }
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

/// A random raw image of `size` bytes at `path`; returns its content.
pub fn random_image(path: &Path, size: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut content = vec![0u8; size];
    rng.fill_bytes(&mut content);
    write_sparse(path, &content);
    content
}

pub fn is_root() -> bool {
    sh("id -u").trim() == "0"
}

/// True when a test that needs root may run. Without root it is skipped with a note, unless
/// `RPFS_REQUIRE_FUSE=1` (set by CI), which forbids skipping privileged tests.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("RPFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("{test} needs root, and RPFS_REQUIRE_FUSE=1 forbids skipping it");
    }
    eprintln!("note: {test} skipped: it needs root");
    false
}

/// Runs the CLI with `args`, expects success, and parses standard output as JSON.
pub fn cli_json(ts: &TestStore, args: &[&str]) -> serde_json::Value {
    json_of(ts.cli().args(args))
}

fn json_of(cmd: &mut assert_cmd::Command) -> serde_json::Value {
    let (out, _) = expect_exit(cmd, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?}: not JSON ({e}): {out}"))
}

/// "collection/name" of every point, from `point list --json`, in output order.
pub fn point_names(ts: &TestStore) -> Vec<String> {
    point_names_at(&ts.store_path())
}

/// Like [`point_names`], for the store in `store`.
pub fn point_names_at(store: &Path) -> Vec<String> {
    json_of(rpfs_at(store).args(["point", "list", "--json"]))
        .as_array()
        .expect("array")
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["rpfs"]["collection"].as_str().expect("collection"),
                p["name"].as_str().expect("name")
            )
        })
        .collect()
}

/// Polls `cond` every 10 ms until it holds; fails the test with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "{what} (waited {timeout:?})");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
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
    let ts = TestStore::new(4096);
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

/// A count from the environment variable `var` (the soak script raises them), else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The partitions `sfdisk -J` reports for the image at `path`: (number, start, length in bytes,
/// type), extended containers included.
pub fn sfdisk_partitions(path: &Path) -> Vec<(u32, u64, u64, String)> {
    let dump = sh(&format!("sfdisk -J '{}'", path.display()));
    let v: serde_json::Value = serde_json::from_str(&dump).expect("sfdisk json");
    let mut parts = Vec::new();
    for p in v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
    {
        let node = p["node"].as_str().expect("node");
        let number: u32 = node
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .expect("number");
        parts.push((
            number,
            p["start"].as_u64().expect("start") * 512,
            p["size"].as_u64().expect("size") * 512,
            p["type"].as_str().unwrap_or_default().to_string(),
        ));
    }
    parts
}

/// The names in directory `dir`, sorted.
#[track_caller]
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Byte offset of the first inode table of the ext4 image at `image` (from `dumpe2fs`; 4 KiB
/// blocks).
pub fn inode_table_offset(image: &Path) -> u64 {
    let dump = sh(&format!("dumpe2fs '{}' 2>/dev/null", image.display()));
    let block: u64 = dump
        .lines()
        .find_map(|l| {
            let at = l.trim().strip_prefix("Inode table at ")?;
            at.split('-').next()?.trim().parse().ok()
        })
        .expect("inode table location");
    block * 4096
}
