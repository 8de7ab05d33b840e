//! Damage in format-2 stores: a frame's bytes, a page map, a removed pack, an index segment, and
//! packs nothing references. `check` must name each with the points and disks affected, in the
//! words format 1 uses (`damage`); a repair removes a damaged segment and sweeps garbage, never a
//! point, and a second repair changes nothing.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rpfs::store::LocalStorage;
use rpfs::store::format::PAGED;
use rpfs::store::frames::{self, FramePack, table_position};
use rpfs::store::index;
use rpfs::store::layout;
use rpfs::store::pagemap::{self, PageMap};
use rpfs::store::records::PointRecord;
use rpfs::store::refs::RefSet;
use rpfs::store::storage::Storage;
use uuid::Uuid;

use crate::common::cli::expect_exit;
use crate::common::images::{KIB, write_sparse};
use crate::common::store::{TestStore, snapshot};
use crate::common::sys::{rng, seed};

const BS: u64 = 64 * KIB;
/// Pages per frame.
const SLOTS: u64 = BS / 4096;
const STABLE: u64 = 5;
const CHANGED: u64 = 9;

/// A format-2 store: VM `vm` with disks `disk` (32 blocks) and `other` (8 blocks), points
/// c1/p1 and c1/p2; p2 changed block `CHANGED` of `disk`.
struct Fixture {
    ts: TestStore,
    gens: Vec<Vec<u8>>,
    other: Vec<u8>,
    points: Vec<PointRecord>,
}

impl Fixture {
    fn new() -> Fixture {
        let mut r = rng(seed());
        let ts = TestStore::new_format(BS as u32, PAGED);
        let disk = ts.path("disk.img");
        let other = ts.path("other.img");
        let mut content = vec![0u8; (32 * BS) as usize];
        rand::RngCore::fill_bytes(&mut r, &mut content);
        let mut other_content = vec![0u8; (8 * BS) as usize];
        rand::RngCore::fill_bytes(&mut r, &mut other_content);
        write_sparse(&disk, &content);
        write_sparse(&other, &other_content);
        ts.vm("vm", &[("disk", &disk), ("other", &other)], "c1");
        let mut gens = vec![content.clone()];
        ts.create("c1", "p1");
        let start = (CHANGED * BS) as usize;
        content[start..start + BS as usize].fill(2);
        write_sparse(&disk, &content);
        gens.push(content);
        ts.create("c1", "p2");
        let points = ts.engine.catalog().expect("catalog").points;
        assert_eq!(points.len(), 2);
        Fixture {
            ts,
            gens,
            other: other_content,
            points,
        }
    }

    fn storage(&self) -> LocalStorage {
        LocalStorage::new(self.ts.store_path())
    }

    fn file(&self, key: &str) -> PathBuf {
        self.ts.store_path().join(key)
    }

    /// Key of the map of point `p`'s disk `disk`.
    fn map_key(&self, p: usize, disk: &str) -> String {
        let d = self.points[p]
            .disks
            .iter()
            .find(|d| d.name == disk)
            .expect("disk");
        layout::map(self.points[p].vm_id, d.disk_id, d.drp_id)
    }

    /// The pack and frame holding block `block` of point `p`'s disk `disk` (its first page).
    fn frame_of(&self, p: usize, disk: &str, block: u64) -> (Uuid, u32) {
        let key = self.map_key(p, disk);
        let storage = self.storage();
        let obj = storage.open(&key).expect("open map");
        let map = PageMap::open(&key, &*obj).expect("map");
        let page = block * SLOTS;
        let (i, at) = pagemap::locate(page);
        let entries = map.read_page(&key, &*obj, i as u32).expect("map page");
        let r = pagemap::decode_entry(entries[at]).expect("a data page");
        (map.packs[r.pack as usize - 1], r.frame)
    }

    /// Offset in its pack file of the middle of the stored bytes of frame `frame` of `pack`.
    fn frame_offset(&self, pack: Uuid, frame: u32) -> (PathBuf, u64) {
        let key = layout::shared_pack(pack);
        let storage = self.storage();
        let obj = storage.open(&key).expect("open pack");
        let fp = FramePack::open(&key, &*obj, pack, BS as u32).expect("pack");
        let (chunk, at) = table_position(frame);
        let e = fp.table_chunk(&key, &*obj, chunk).expect("table")[at];
        (self.file(&key), e.offset + u64::from(e.stored_len) / 2)
    }

    fn check(&self, args: &[&str], code: i32) -> (String, String) {
        expect_exit(self.ts.cli().arg("check").args(args), code)
    }

    /// `rpfs cat c1/<point> --disk <disk>`: its bytes, or None when it failed.
    fn cat(&self, point: &str, disk: &str) -> Option<Vec<u8>> {
        let out = self
            .ts
            .cli()
            .args(["cat", &format!("c1/{point}"), "--disk", disk])
            .output()
            .expect("run");
        out.status.success().then_some(out.stdout)
    }
}

fn flip(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x20;
    f.write_all_at(&b, offset).expect("write");
}

fn index_segments(store: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(store.join(layout::INDEX))
        .expect("index dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    out.sort();
    out
}

#[test]
fn undamaged_paged_store_checks_clean_and_repair_changes_nothing() {
    let f = Fixture::new();
    let (out, err) = f.check(&["--read-data"], 0);
    assert!(out.contains("0 problems"), "{out}");
    assert!(!err.contains("problem"), "{err}");
    // Every referenced frame was verified: 32 + 8 blocks of p1, one more of p2.
    assert!(out.contains("41 blocks verified"), "{out}");
    let before = snapshot(&f.ts.store_path());
    let (out, _) = f.check(&["--repair", "--yes"], 0);
    assert!(out.contains("0 unreachable files removed"), "{out}");
    assert_eq!(snapshot(&f.ts.store_path()), before);
    assert_eq!(f.cat("p1", "disk").as_deref(), Some(&f.gens[0][..]));
    assert_eq!(f.cat("p2", "disk").as_deref(), Some(&f.gens[1][..]));
}

#[test]
fn damaged_frame_is_named_by_point_disk_and_block() {
    let f = Fixture::new();
    let (pack, frame) = f.frame_of(0, "disk", STABLE);
    assert_eq!(f.frame_of(1, "disk", STABLE), (pack, frame), "p2 shares it");
    let (file, off) = f.frame_offset(pack, frame);
    flip(&file, off);
    // The structure is intact: only reading the data finds it.
    f.check(&[], 0);
    let (_, err) = f.check(&["--read-data"], 10);
    for p in ["p1", "p2"] {
        assert!(
            err.contains(&format!(
                "restore point c1/{p} disk 'disk' block {STABLE} (offset {}): damaged",
                STABLE * BS
            )),
            "{p} not reported:\n{err}"
        );
    }
    assert!(!err.contains("disk 'other'"), "{err}");
    assert!(
        err.contains("hash mismatch") || err.contains("decompress"),
        "{err}"
    );
    // Reading the damaged disk fails; the other disk still reads.
    assert_eq!(f.cat("p1", "disk"), None);
    assert_eq!(f.cat("p1", "other").as_deref(), Some(&f.other[..]));
    // A repair names the damaged points and keeps them.
    let (out, _) = f.check(&["--repair", "--yes"], 10);
    assert!(
        out.contains("cannot keep restore point c1/p1 whole"),
        "{out}"
    );
    assert!(f.ts.engine.catalog().expect("catalog").points.len() == 2);
}

#[test]
fn damaged_map_page_is_reported() {
    let f = Fixture::new();
    let key = f.map_key(0, "disk");
    // The first map page is stored right after the 64-byte header.
    flip(&f.file(&key), pagemap::HEADER_LEN as u64 + 8);
    let (_, err) = f.check(&[], 10);
    assert!(
        err.contains("restore point c1/p1 disk 'disk': page map damaged"),
        "{err}"
    );
    assert!(!err.contains("c1/p2 disk"), "{err}");
    assert_eq!(f.cat("p1", "disk"), None);
    assert_eq!(f.cat("p2", "disk").as_deref(), Some(&f.gens[1][..]));
    // What the damaged map references is unknown: a repair frees nothing and names the point.
    let before = snapshot(&f.ts.store_path());
    let (out, _) = f.check(&["--repair", "--yes"], 10);
    assert!(
        out.contains("cannot keep restore point c1/p1 whole"),
        "{out}"
    );
    assert_eq!(snapshot(&f.ts.store_path()), before);
}

#[test]
fn removed_pack_is_missing_data_of_the_points_referencing_it() {
    let f = Fixture::new();
    let (pack, _) = f.frame_of(0, "disk", STABLE);
    let key = layout::shared_pack(pack);
    fs::remove_file(f.file(&key)).expect("remove pack");
    let (_, err) = f.check(&[], 10);
    assert!(err.contains(&format!("pack {key}: missing")), "{err}");
    // p2's block CHANGED is in p2's own pack.
    for (p, blocks) in [("p1", "0-31"), ("p2", "0-8, 10-31")] {
        assert!(
            err.contains(&format!(
                "restore point c1/{p} disk 'disk': blocks {blocks} are in packs that cannot be read"
            )),
            "{p}:\n{err}"
        );
    }
    assert!(!err.contains("disk 'other'"), "{err}");
}

#[test]
fn damaged_index_segment_is_removed_by_repair() {
    let f = Fixture::new();
    let segments = index_segments(&f.ts.store_path());
    assert!(!segments.is_empty());
    let seg = &segments[0];
    // An id in the first entry block, after the header's 4 KiB.
    flip(seg, 4096 + 10);
    let name = seg
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (_, err) = f.check(&[], 10);
    assert!(
        err.contains(&format!("problem: index/{name}: damaged")),
        "{err}"
    );
    let (out, _) = f.check(&["--repair"], 10);
    assert!(out.contains(&format!("would remove index/{name}")), "{out}");
    assert!(seg.exists());
    let (out, _) = f.check(&["--repair", "--yes"], 0);
    assert!(out.contains(&format!("removed index/{name}")), "{out}");
    assert!(!seg.exists());
    f.check(&["--read-data"], 0);
    // Only dedup savings were lost: every point reads as before.
    assert_eq!(f.cat("p1", "disk").as_deref(), Some(&f.gens[0][..]));
    assert_eq!(f.cat("p2", "disk").as_deref(), Some(&f.gens[1][..]));
}

#[test]
fn garbage_packs_are_noted_and_freed_by_repair() {
    let f = Fixture::new();
    let (pack, _) = f.frame_of(0, "other", 0);
    let stray = Uuid::new_v4();
    let key = layout::shared_pack(stray);
    fs::create_dir_all(f.file(&key).parent().expect("dir")).expect("mkdir");
    fs::copy(f.file(&layout::shared_pack(pack)), f.file(&key)).expect("plant");
    // Not damage: a sweep frees it.
    let (_, err) = f.check(&["--read-data"], 0);
    assert!(
        err.contains(&format!("note: {key}: referenced by no committed point")),
        "{err}"
    );
    let (out, _) = f.check(&["--repair"], 10);
    assert!(out.contains(&format!("would remove {key}")), "{out}");
    assert!(f.file(&key).exists());
    let (out, _) = f.check(&["--repair", "--yes"], 0);
    assert!(out.contains(&format!("removed {key}")), "{out}");
    assert!(!f.file(&key).exists());
    // A second repair changes nothing.
    let before = snapshot(&f.ts.store_path());
    let (out, err) = f.check(&["--repair", "--yes"], 0);
    assert!(out.contains("0 unreachable files removed"), "{out}");
    assert!(!err.contains("note:"), "{err}");
    assert_eq!(snapshot(&f.ts.store_path()), before);
    assert_eq!(f.cat("p1", "other").as_deref(), Some(&f.other[..]));
}

#[test]
fn owed_sweep_is_noted() {
    let f = Fixture::new();
    // A creation's shared hold on the creation lock makes the deletion's sweep wait: its debt
    // is recorded and the deleted point's pages stay until it is paid.
    let storage = f.storage();
    let hold = storage
        .try_lock_shared(layout::GC_LOCK)
        .expect("lock")
        .expect("free");
    f.ts.cli()
        .args(["point", "delete", "c1/p2"])
        .assert()
        .success();
    assert!(f.file(layout::GC_OWED).exists());
    let (_, err) = f.check(&[], 0);
    assert!(err.contains("note: gc-owed: a sweep is owed"), "{err}");
    assert!(err.contains("referenced by no committed point"), "{err}");
    drop(hold);
    // Opening the store pays the debt (recovery); the repair then has nothing to do.
    let (_, err) = f.check(&["--repair", "--yes"], 0);
    assert!(!err.contains("note:"), "{err}");
    assert!(!f.file(layout::GC_OWED).exists());
    assert_eq!(f.cat("p1", "disk").as_deref(), Some(&f.gens[0][..]));
}

#[test]
fn wrong_fingerprint_is_found_by_read_data() {
    let f = Fixture::new();
    let (pack, frame) = f.frame_of(0, "disk", STABLE);
    let key = layout::shared_pack(pack);
    let storage = f.storage();
    let obj = storage.open(&key).expect("open pack");
    let fp = FramePack::open(&key, &*obj, pack, BS as u32).expect("pack");
    let (chunk, at) = table_position(frame);
    let e = fp.table_chunk(&key, &*obj, chunk).expect("table")[at];
    drop(obj);
    // The trailer's fingerprint section offset (at len - 40), then this frame's first page's.
    let mut bytes = fs::read(f.file(&key)).expect("read");
    let n = bytes.len();
    let fp_offset = u64::from_le_bytes(bytes[n - 40..n - 32].try_into().expect("8 bytes"));
    bytes[(fp_offset + 16 * u64::from(e.first_page)) as usize] ^= 1;
    frames::reseal(&mut bytes);
    fs::write(f.file(&key), &bytes).expect("write");
    f.check(&[], 0);
    let (_, err) = f.check(&["--read-data"], 10);
    for p in ["p1", "p2"] {
        assert!(
            err.contains(&format!(
                "restore point c1/{p} disk 'disk' block {STABLE} (offset {}): damaged: page 0 \
                 does not match its fingerprint",
                STABLE * BS
            )),
            "{p}:\n{err}"
        );
    }
    // The frame's hash still holds: the data reads.
    assert_eq!(f.cat("p1", "disk").as_deref(), Some(&f.gens[0][..]));
}

#[test]
fn index_entry_naming_other_bytes_is_damage_found_by_read_data() {
    let f = Fixture::new();
    // The largest segment: p2's holds only the one new page of its changed block.
    let seg = index_segments(&f.ts.store_path())
        .into_iter()
        .max_by_key(|p| fs::metadata(p).expect("segment").len())
        .expect("a segment");
    let mut bytes = fs::read(&seg).expect("read");
    // Byte 30 of an entry's id: neither its fence (bytes 0..8) nor its filter bits (8..24), and
    // the order of ids stays; resealed, the segment verifies. An entry of a page at a slot
    // other than 0: an entry at slot 0 of a partial frame may be a whole frame's id that a
    // sweep made stale, which check tells apart from damage only by the slot.
    let at = (0..index::BLOCK_ENTRIES)
        .map(|i| 4096 + i * index::ENTRY_LEN)
        .find(|&e| u32::from_le_bytes(bytes[e + 32..e + 36].try_into().expect("4")) & 0xf != 0)
        .expect("an entry of a page at slot > 0 in the first block");
    bytes[at + 30] ^= 1;
    index::reseal(&mut bytes);
    fs::write(&seg, &bytes).expect("write");
    let name = seg
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    f.check(&[], 0);
    let (_, err) = f.check(&["--read-data"], 10);
    assert!(
        err.contains(&format!(
            "problem: index/{name}: damaged (1 entries name pages whose bytes have another id)"
        )),
        "{err}"
    );
    let (out, _) = f.check(&["--repair", "--yes"], 0);
    assert!(out.contains(&format!("removed index/{name}")), "{out}");
    f.check(&["--read-data"], 0);
}

/// Rewrites the summary of the map at `path` as `edit` makes it, everything else kept.
fn rewrite_summary(path: &Path, edit: impl FnOnce(RefSet) -> RefSet) {
    let b = fs::read(path).expect("read map");
    let t = b.len() - pagemap::TRAILER_LEN;
    let field =
        |at: usize| u64::from_le_bytes(b[t + at..t + at + 8].try_into().expect("8 bytes")) as usize;
    let (s, len, packs_at, dir_at) = (field(8), field(16), field(24), field(32));
    let set = RefSet::decode("map", &b[s..s + len], 1 << 30).expect("summary");
    let new = edit(set).encode();
    let mut out = b[..s].to_vec();
    out.extend_from_slice(&new);
    out.extend_from_slice(&b[packs_at..]);
    let t2 = out.len() - pagemap::TRAILER_LEN;
    let moved = |v: usize| ((v + new.len() - len) as u64).to_le_bytes();
    out[t2 + 16..t2 + 24].copy_from_slice(&(new.len() as u64).to_le_bytes());
    out[t2 + 24..t2 + 32].copy_from_slice(&moved(packs_at));
    out[t2 + 32..t2 + 40].copy_from_slice(&moved(dir_at));
    pagemap::reseal(&mut out);
    fs::write(path, out).expect("write map");
}

#[test]
fn summary_disagreeing_with_entries_is_damage_and_stops_the_sweep() {
    let f = Fixture::new();
    let key = f.map_key(0, "other");
    // The summary forgets one page: a sweep trusting it would free a page p1 reads.
    rewrite_summary(&f.file(&key), |set| {
        let pack = set.packs().next().expect("a pack");
        let (frame, mask) = set.frames(pack)[0];
        let mut one = RefSet::new();
        one.insert(pack, frame, mask.trailing_zeros() as u8);
        set.difference(&one)
    });
    let (_, err) = f.check(&[], 10);
    assert!(
        err.contains("restore point c1/p1 disk 'other': page map damaged: its summary names"),
        "{err}"
    );
    // With garbage to free, the repair frees none of it: what the store references is unsure.
    let (pack, _) = f.frame_of(0, "other", 0);
    let stray = layout::shared_pack(Uuid::new_v4());
    fs::create_dir_all(f.file(&stray).parent().expect("dir")).expect("mkdir");
    fs::copy(f.file(&layout::shared_pack(pack)), f.file(&stray)).expect("plant");
    let before = snapshot(&f.ts.store_path());
    let (out, err) = f.check(&["--repair", "--yes"], 10);
    assert!(err.contains("unreferenced packs and pages kept"), "{err}");
    assert!(
        out.contains("cannot keep restore point c1/p1 whole"),
        "{out}"
    );
    assert_eq!(snapshot(&f.ts.store_path()), before);
    assert_eq!(f.cat("p1", "other").as_deref(), Some(&f.other[..]));
}

#[test]
fn a_frame_entry_whose_frame_lost_pages_is_stale_not_damage() {
    // p1's pack holds block STABLE as a whole frame, entered in the index by the frame's id. A
    // point with one page of that block changed, then p1 and p2 deleted: the sweep frees that
    // page's old version, and the frame is whole no more. `scripts/demo.sh` met this.
    let f = Fixture::new();
    let disk = f.ts.path("disk.img");
    let mut content = f.gens[1].clone();
    // Slot 3: slot 0, which the frame's entry names, stays.
    let at = (STABLE * BS + 3 * 4096) as usize;
    content[at..at + 4096].fill(7);
    write_sparse(&disk, &content);
    f.ts.create("c1", "p3");
    for p in ["c1/p1", "c1/p2"] {
        f.ts.cli().args(["point", "delete", p]).assert().success();
    }
    let (out, err) = f.check(&["--read-data"], 0);
    assert!(out.contains("0 problems"), "{out}\n{err}");
    assert!(err.contains("stale entries"), "{err}");
    assert_eq!(f.cat("p3", "disk").as_deref(), Some(&content[..]));
}
