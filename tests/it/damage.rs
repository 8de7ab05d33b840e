//! Damage tests: bits flipped in stored blocks, pack tables, pack headers, block maps and point
//! records. `check --read-data` must report each with the point, disk and block affected; reads of
//! the damaged data fail; everything else reads correctly.
//!
//! The tests that damage a pack or block map by its place in the file know format 1's layout and
//! run on a format-1 store (stores made before format 2 keep it); `damage_paged.rs` damages the
//! same things in format 2's frame packs and page maps. The rest run on the default format.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rpfs::engine::{Damage, Engine, Error, ErrorKind};
use rpfs::store::CorruptKind;
use rpfs::store::LocalStorage;
use rpfs::store::pack::PackIndex;
use rpfs::store::records::PointRecord;
use rpfs::store::storage::Storage;

use crate::common::images::{KIB, write_sparse};
use crate::common::store::{Expected, TestStore, golden_format, open, read_image, snapshot};
use crate::common::sys::{env_count, rng, seed};

const BS: u64 = 64 * KIB;

/// Three points of one VM; block `STABLE` never changes, block `CHANGED` changes only in the
/// second point, so its second version is shared by points 2 and 3.
struct Fixture {
    ts: TestStore,
    gens: Vec<Vec<u8>>,
    points: Vec<PointRecord>,
}

const STABLE: u64 = 5;
const CHANGED: u64 = 9;

/// Format 1, for the tests that find a block, a pack table or a map body by format 1's layout.
const FORMAT_1: u32 = 1;

impl Fixture {
    /// The fixture in a store of the default format.
    fn new() -> Fixture {
        Fixture::new_format(rpfs::store::format::DEFAULT)
    }

    fn new_format(version: u32) -> Fixture {
        let mut rng = rng(seed());
        let ts = TestStore::new_format(BS as u32, version);
        let disk = ts.path("disk.img");
        let other = ts.path("other.img");
        let mut content = vec![0u8; (32 * BS) as usize];
        rand::RngCore::fill_bytes(&mut rng, &mut content);
        write_sparse(&disk, &content);
        write_sparse(&other, &content[..(8 * BS) as usize]);
        ts.vm("vm", &[("disk", &disk), ("other", &other)], "c1");
        let mut gens = vec![content.clone()];
        ts.create("c1", "p1");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .expect("open");
        for (version, block) in [(2u8, CHANGED), (3u8, 20)] {
            let start = (block * BS) as usize;
            content[start..start + BS as usize].fill(version);
            f.write_all_at(&content[start..start + BS as usize], block * BS)
                .expect("write");
            gens.push(content.clone());
            ts.create("c1", &format!("p{version}"));
        }
        let points = ts.engine.catalog().expect("catalog").points;
        Fixture { ts, gens, points }
    }

    fn disk_of(&self, p: usize, disk: &str) -> (uuid::Uuid, uuid::Uuid) {
        let d = self.points[p]
            .disks
            .iter()
            .find(|d| d.name == disk)
            .expect("disk");
        (d.disk_id, d.drp_id)
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.ts.store_path().join(rel)
    }

    fn vm(&self) -> uuid::Uuid {
        self.points[0].vm_id
    }

    /// Offset in the pack file of point `p`'s disk of the stored bytes of `block`.
    fn block_offset(&self, p: usize, block: u64) -> (PathBuf, u64) {
        let (disk, drp) = self.disk_of(p, "disk");
        let key = rpfs::store::layout::pack(self.vm(), disk, drp);
        let storage = LocalStorage::new(self.ts.store_path());
        let idx = PackIndex::load(&*storage.open(&key).expect("open"), &key, drp, BS as u32)
            .expect("pack");
        let e = idx.find(block).expect("block in pack");
        (self.file(&key), e.offset + u64::from(e.stored_len) / 2)
    }

    fn map_file(&self, p: usize) -> PathBuf {
        let (disk, drp) = self.disk_of(p, "disk");
        self.file(&rpfs::store::layout::map(self.vm(), disk, drp))
    }

    fn pack_file(&self, p: usize) -> PathBuf {
        let (disk, drp) = self.disk_of(p, "disk");
        self.file(&rpfs::store::layout::pack(self.vm(), disk, drp))
    }

    /// Runs `check --read-data` through the CLI: must exit 10; returns stderr.
    fn check_fails(&self) -> String {
        let out = self
            .ts
            .cli()
            .args(["check", "--read-data"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(10), "check should report damage");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn engine(&self) -> Engine {
        self.ts.reopen()
    }

    /// Reads every block of point `p`'s disk; returns the blocks that failed, asserting that
    /// all the others are correct.
    fn failing_blocks(&self, p: usize) -> Vec<u64> {
        let engine = self.engine();
        let image = engine
            .open_disk("c1", &self.points[p], "disk")
            .expect("open disk");
        let mut bad = Vec::new();
        for b in 0..32u64 {
            let mut buf = vec![0u8; BS as usize];
            match image.read_at(b * BS, &mut buf) {
                Ok(_) => assert!(
                    buf[..] == self.gens[p][(b * BS) as usize..((b + 1) * BS) as usize],
                    "point {p} block {b} reads wrong bytes"
                ),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
                    assert!(matches!(e, Error::Damaged { .. }), "{e:?}");
                    assert!(e.to_string().contains(&format!("block {b}")), "{e}");
                    bad.push(b);
                }
            }
        }
        bad
    }
}

fn flip(path: &Path, offset: u64) {
    xor_byte(path, offset, 0x20);
}

/// XORs the byte at `offset` of `path` with `mask` (doing it twice restores it).
fn xor_byte(path: &Path, offset: u64, mask: u8) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= mask;
    f.write_all_at(&b, offset).expect("write");
}

#[test]
fn undamaged_store_checks_clean() {
    let f = Fixture::new();
    f.ts.cli().args(["check", "--read-data"]).assert().success();
    for p in 0..3 {
        assert!(f.failing_blocks(p).is_empty());
    }
}

#[test]
fn damaged_base_block_fails_only_that_block_in_every_point() {
    let f = Fixture::new_format(FORMAT_1);
    let (file, off) = f.block_offset(0, STABLE);
    flip(&file, off);
    // Structure is intact: only reading the data finds it.
    f.ts.cli().args(["check"]).assert().success();
    let report = f.check_fails();
    for p in ["p1", "p2", "p3"] {
        assert!(
            report.contains(&format!(
                "restore point c1/{p} disk 'disk' block {STABLE} (offset {})",
                STABLE * BS
            )),
            "{p} not reported:\n{report}"
        );
    }
    assert!(
        report.contains("hash mismatch") || report.contains("decompress"),
        "{report}"
    );
    for p in 0..3 {
        assert_eq!(f.failing_blocks(p), vec![STABLE]);
    }
    // The engine says which block of which pack, and why, as types.
    let image = f
        .engine()
        .open_disk("c1", &f.points[0], "disk")
        .expect("open disk");
    let mut buf = vec![0u8; BS as usize];
    let err = image.read_at(STABLE * BS, &mut buf).expect_err("damaged");
    assert!(
        matches!(&err, Error::Damaged { damage: Damage::Block { pack, .. }, .. }
            if pack.ends_with(".pack")),
        "{err:?}"
    );
    // The other disk is untouched, and a restore of a damaged point fails without leaving a file.
    let engine = f.engine();
    let other = read_image(&engine, "c1", "p2", "other");
    assert!(other == f.gens[0][..(8 * BS) as usize]);
    let out = f.ts.path("restore");
    f.ts.cli()
        .args(["restore", "c1/p2", "--disk", "disk", "--to"])
        .arg(&out)
        .assert()
        .code(10);
    assert!(!out.join("disk.img").exists() && !out.join("disk.img.partial").exists());
}

#[test]
fn damaged_shared_incremental_block_fails_in_the_points_sharing_it() {
    let f = Fixture::new_format(FORMAT_1);
    let (file, off) = f.block_offset(1, CHANGED);
    flip(&file, off);
    let report = f.check_fails();
    assert!(
        report.contains(&format!("c1/p2 disk 'disk' block {CHANGED} ")),
        "{report}"
    );
    assert!(
        report.contains(&format!("c1/p3 disk 'disk' block {CHANGED} ")),
        "{report}"
    );
    assert!(!report.contains("c1/p1"), "{report}");
    assert!(f.failing_blocks(0).is_empty());
    assert_eq!(f.failing_blocks(1), vec![CHANGED]);
    assert_eq!(f.failing_blocks(2), vec![CHANGED]);
}

#[test]
fn damaged_pack_table_fails_the_blocks_it_indexes() {
    let f = Fixture::new_format(FORMAT_1);
    let pack = f.pack_file(1);
    let len = fs::metadata(&pack).expect("stat").len();
    flip(&pack, len - 32 - 10); // inside the table, before the trailer
    // Index damage is found without reading data.
    let out = f.ts.cli().args(["check"]).output().expect("run");
    assert_eq!(out.status.code(), Some(10));
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(report.contains("pack table checksum mismatch"), "{report}");
    assert!(
        report.contains(&format!(
            "c1/p2 disk 'disk': blocks {CHANGED} are in packs that cannot be read"
        )),
        "{report}"
    );
    assert!(f.check_fails().contains("table checksum"));
    assert!(f.failing_blocks(0).is_empty());
    assert_eq!(f.failing_blocks(1), vec![CHANGED]);
    assert_eq!(f.failing_blocks(2), vec![CHANGED]);
}

#[test]
fn damaged_pack_header_is_reported() {
    let f = Fixture::new_format(FORMAT_1);
    flip(&f.pack_file(0), 20);
    let report = f.check_fails();
    assert!(report.contains("pack header checksum mismatch"), "{report}");
    // Every block the base pack stores fails; the blocks stored later still read.
    let bad = f.failing_blocks(2);
    assert!(
        bad.len() == 30 && !bad.contains(&CHANGED) && !bad.contains(&20),
        "{bad:?}"
    );
}

#[test]
fn damaged_block_map_fails_that_disk_restore_point_only() {
    let f = Fixture::new_format(FORMAT_1);
    let map = f.map_file(1);
    let len = fs::metadata(&map).expect("stat").len();
    flip(&map, len - 3);
    let out = f.ts.cli().args(["check"]).output().expect("run");
    assert_eq!(out.status.code(), Some(10));
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        report.contains("restore point c1/p2 disk 'disk': block map damaged"),
        "{report}"
    );
    assert!(report.contains("map body checksum mismatch"), "{report}");
    let engine = f.engine();
    let err = engine
        .open_disk("c1", &f.points[1], "disk")
        .expect_err("damaged map");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        matches!(
            &err,
            Error::Damaged { damage: Damage::Map(c), .. } if c.kind == CorruptKind::BodyChecksum
        ),
        "{err:?}"
    );
    assert!(f.failing_blocks(0).is_empty() && f.failing_blocks(2).is_empty());
    assert!(read_image(&engine, "c1", "p2", "other") == f.gens[0][..(8 * BS) as usize]);
}

#[test]
fn damaged_point_record_is_reported_and_blocks_deletion_gc() {
    let f = Fixture::new();
    let rec = f.file(&rpfs::store::layout::point(f.vm(), f.points[1].id));
    flip(&rec, fs::metadata(&rec).expect("stat").len() - 5);
    let out = f.ts.cli().args(["check"]).output().expect("run");
    assert_eq!(out.status.code(), Some(10));
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(report.contains("checksum mismatch"), "{report}");
    // Listing and restoring the other points still work, with a warning naming the record.
    let out = f.ts.cli().args(["point", "list"]).output().expect("run");
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("c1/p1") && stdout.contains("c1/p3") && !stdout.contains("c1/p2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("skipping damaged record") && stderr.contains(&f.points[1].id.to_string()),
        "{stderr}"
    );
    let to = f.ts.path("restored");
    f.ts.cli()
        .args(["restore", "c1/p3", "--to"])
        .arg(&to)
        .assert()
        .success();
    assert!(fs::read(to.join("disk.img")).expect("restored") == f.gens[2]);
    // Nothing that record references may be collected: deleting another point of the VM is
    // refused rather than risking it.
    let before = f.ts.snapshot();
    f.ts.cli()
        .args(["point", "delete", "c1/p3"])
        .assert()
        .code(10);
    assert_eq!(before, f.ts.snapshot());
}

/// Reads every disk of every expected point in 4 KiB pieces; returns the pieces that failed,
/// the pieces that returned wrong bytes, and the points not listed at all.
fn read_all(engine: &Engine, expected: &Expected) -> (usize, usize, Vec<String>) {
    let (mut failed, mut wrong, mut missing) = (0, 0, Vec::new());
    let Ok(cat) = engine.catalog() else {
        return (1, 0, vec!["catalog".into()]);
    };
    for (point, disks) in expected {
        let (coll, name) = point.split_once('/').expect("collection/point");
        let Ok((_, p)) = cat.point(coll, name) else {
            missing.push(point.clone());
            continue;
        };
        for (disk, content) in disks {
            let Ok(image) = engine.open_disk(coll, p, disk) else {
                failed += 1;
                continue;
            };
            let mut buf = vec![0u8; 4096];
            for (i, want) in content.chunks(4096).enumerate() {
                match image.read_at(i as u64 * 4096, &mut buf[..want.len()]) {
                    Ok(n) if n == want.len() && buf[..n] == *want => {}
                    Ok(_) => wrong += 1,
                    Err(e) => {
                        assert!(
                            matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Io),
                            "a damaged read fails with {e}"
                        );
                        failed += 1;
                    }
                }
            }
        }
    }
    (failed, wrong, missing)
}

/// Single-bit flips spread over every file of a store (block data, pack tables and headers,
/// maps, records; in format 2 frame packs, page maps and index segments): each is reported by
/// `check --read-data` (or refuses to open), no read ever returns a wrong byte, and most of the
/// store still reads. `RPFS_FLIPS` sets the count, per format.
#[test]
fn a_thousand_single_bit_flips_are_all_reported_and_never_read_as_data() {
    flips_are_all_reported(rpfs::store::format::DEFAULT);
}

#[test]
fn a_thousand_single_bit_flips_in_a_format_1_store_are_all_reported() {
    flips_are_all_reported(FORMAT_1);
}

/// Bytes of an index segment that are never read (`store/index.rs`: zero padding after the
/// 64-byte header, so entry blocks start 4 KiB-aligned): a flip there changes nothing anyone
/// reads, so nothing can report it.
const INDEX_PADDING: std::ops::Range<u64> = 64..4096;

fn flips_are_all_reported(version: u32) {
    let g = golden_format(4, version);
    let files: Vec<(PathBuf, u64)> = snapshot(&g.store)
        .into_iter()
        .map(|(k, v)| (g.store.join(k), v.len() as u64))
        .collect();
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    let mut rng = rng(seed());
    let flips = env_count("RPFS_FLIPS", 1000);
    let (mut unreadable_pieces, mut refused_opens) = (0usize, 0usize);
    for i in 0..flips {
        // Spread over files, then uniform within one: small records get their share.
        let (path, len) = &files[i % files.len()];
        let offset = if path.extension().is_some_and(|e| e == "idx") {
            let padding = INDEX_PADDING.end - INDEX_PADDING.start;
            let o = rand::Rng::random_range(&mut rng, 0..*len - padding);
            if o < INDEX_PADDING.start {
                o
            } else {
                o + padding
            }
        } else {
            rand::Rng::random_range(&mut rng, 0..*len)
        };
        let bit = 1u8 << rand::Rng::random_range(&mut rng, 0..8u32);
        xor_byte(path, offset, bit);
        let what = format!("flip {i}: bit {bit:#04x} at {offset} of {}", path.display());
        match Engine::open(
            std::sync::Arc::new(LocalStorage::new(&g.store)),
            rpfs::engine::OpenOptions::default(),
        ) {
            Err(_) => refused_opens += 1,
            Ok(engine) => {
                let report = engine.check(true, &rpfs::engine::progress::Silent);
                let reported = match &report {
                    Ok(r) => !r.problems.is_empty(),
                    Err(_) => true,
                };
                assert!(reported, "{what}: check found nothing");
                let (failed, wrong, _) = read_all(&engine, &g.points);
                assert_eq!(wrong, 0, "{what}: {wrong} pieces read back wrong bytes");
                unreadable_pieces += failed;
            }
        }
        xor_byte(path, offset, bit);
    }
    // Every flip was undone: the store is whole again.
    let engine = open(&g.store);
    assert!(
        engine
            .check(true, &rpfs::engine::progress::Silent)
            .expect("check")
            .problems
            .is_empty()
    );
    let pieces: usize = g
        .points
        .values()
        .flat_map(|d| d.values())
        .map(|c| c.len().div_ceil(4096))
        .sum();
    eprintln!(
        "{flips} flips over {} files ({total} bytes): all reported, 0 wrong bytes; {refused_opens} \
         made the store refuse to open (its header), {:.1}% of 4 KiB pieces unreadable on average",
        files.len(),
        100.0 * unreadable_pieces as f64 / (pieces * flips) as f64
    );
}
