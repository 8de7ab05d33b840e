//! Unit tests of index segments: round trips of written segments through lookup and iteration,
//! the merge against a model, the writer's refusals, the filter's false-positive rate, and
//! publishing through storage; damage, region by region, in `damage`.

#![allow(
    clippy::arithmetic_side_effects,
    reason = "tests compute offsets into the small files they build"
)]

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use uuid::Uuid;

use super::entry::{COUNT_AT, prefix};
use super::filter::filter_positions;
use super::*;
use crate::store::CorruptKind;
use crate::store::le;
use crate::store::page::PageId;
use crate::store::storage::{Object, ObjectWriter};

mod damage;

/// An object held in memory.
#[derive(Debug)]
struct Bytes(Vec<u8>);

impl Object for Bytes {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.0.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self.0[start..end]);
        Ok(())
    }
}

/// A writer that publishes into memory on commit.
struct Sink(Arc<Mutex<Option<Vec<u8>>>>, Vec<u8>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.1.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for Sink {
    fn commit(self: Box<Self>) -> io::Result<u64> {
        let len = self.1.len() as u64;
        *self.0.lock().expect("lock") = Some(self.1);
        Ok(len)
    }
}

/// The bytes of a segment of `entries`, or the writer's error (then nothing was published).
fn encode(entries: &[IndexEntry]) -> io::Result<Vec<u8>> {
    let published = Arc::new(Mutex::new(None));
    let sink = Box::new(Sink(published.clone(), Vec::new()));
    let info = write_segment(sink, entries.iter().copied());
    let bytes = published.lock().expect("lock").take();
    let info = info?;
    let bytes = bytes.expect("published");
    assert_eq!(info.len, bytes.len() as u64);
    assert_eq!(info.entries, entries.len() as u64);
    Ok(bytes)
}

const KEY: &str = "index/s.idx";

fn open(bytes: &[u8]) -> Result<(Segment, Bytes), SegmentError> {
    let obj = Bytes(bytes.to_vec());
    Segment::open(KEY, &obj).map(|s| (s, obj))
}

fn kind<T: std::fmt::Debug>(r: Result<T, SegmentError>) -> CorruptKind {
    match r {
        Err(e) => e
            .corrupt_kind()
            .unwrap_or_else(|| panic!("an I/O error: {e}")),
        Ok(v) => panic!("expected damage, got {v:?}"),
    }
}

fn id_of(n: u64) -> PageId {
    *blake3::hash(&n.to_le_bytes()).as_bytes()
}

fn pack(n: u8) -> Uuid {
    Uuid::from_u128(0x5eed_0000 + u128::from(n))
}

/// `n` entries with uniform ids, spread over `packs` packs, sorted.
fn sample(n: u64, packs: u8) -> Vec<IndexEntry> {
    let mut v: Vec<IndexEntry> = (0..n)
        .map(|i| IndexEntry {
            id: id_of(i),
            pack: pack((i % u64::from(packs)) as u8),
            frame: (i * 7) as u32,
            slot: (i % 16) as u8,
        })
        .collect();
    sort_run(&mut v);
    v
}

/// Packs in order of first use, as the writer lists them.
fn packs_in_use(entries: &[IndexEntry]) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = Vec::new();
    for e in entries {
        if !out.contains(&e.pack) {
            out.push(e.pack);
        }
    }
    out
}

/// Ids, uniform or (so that ids sharing a prefix straddle block boundaries) with one of six
/// prefixes; too few of them to fill a block with one prefix.
fn any_id() -> impl Strategy<Value = PageId> {
    prop_oneof![
        any::<[u8; 32]>(),
        (0..6u8, any::<[u8; 24]>()).prop_map(|(p, rest)| {
            let mut id = [p; 32];
            id[8..].copy_from_slice(&rest);
            id
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every entry written is found by lookup and by iter, in order; ids not written are not.
    #[test]
    fn entries_round_trip(
        model in prop::collection::btree_map(any_id(), (0..4u8, any::<u32>(), 0..16u8), 0..350),
        absent in prop::collection::vec(any_id(), 0..40),
    ) {
        let entries: Vec<IndexEntry> = model
            .iter()
            .map(|(id, &(p, frame, slot))| IndexEntry { id: *id, pack: pack(p), frame, slot })
            .collect();
        let bytes = encode(&entries).expect("encode");
        let (seg, obj) = open(&bytes).expect("open");
        prop_assert_eq!(seg.entries(), entries.len() as u64);
        prop_assert_eq!(seg.packs(), &packs_in_use(&entries)[..]);
        let all: Vec<IndexEntry> = seg.iter(KEY, &obj).map(|e| e.expect("entry")).collect();
        prop_assert_eq!(&all, &entries);
        for e in &entries {
            prop_assert!(seg.may_contain(&e.id));
            prop_assert_eq!(seg.lookup(KEY, &obj, &e.id).expect("lookup"), Some(*e));
        }
        for id in absent.iter().filter(|id| !model.contains_key(*id)) {
            prop_assert_eq!(seg.lookup(KEY, &obj, id).expect("lookup"), None);
        }
        prop_assert_eq!(seg.verify(KEY, &obj).expect("verify"), entries.len() as u64);
    }

    /// The merge equals a model that inserts each input's kept entries in input order,
    /// keeping the first entry of each id.
    #[test]
    fn merge_matches_a_model(
        inputs in prop::collection::vec(
            prop::collection::btree_map(any::<u8>(), any::<u32>(), 0..60),
            0..5,
        ),
        drop_modulus in 2..5u32,
    ) {
        let runs: Vec<Vec<IndexEntry>> = inputs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.iter()
                    .map(|(&k, &frame)| IndexEntry { id: [k; 32], pack: pack(i as u8), frame, slot: 0 })
                    .collect()
            })
            .collect();
        let keep = |e: &IndexEntry| !e.frame.is_multiple_of(drop_modulus);
        let mut model: BTreeMap<PageId, IndexEntry> = BTreeMap::new();
        for e in runs.iter().flatten().filter(|e| keep(e)) {
            model.entry(e.id).or_insert(*e);
        }
        let streams = runs.iter().map(|r| r.iter().copied().map(Ok::<_, ()>)).collect();
        let merged: Vec<IndexEntry> = merge(streams, keep).map(|e| e.expect("ok")).collect();
        prop_assert_eq!(merged, model.into_values().collect::<Vec<_>>());
    }
}

#[test]
fn an_error_ends_the_merge() {
    let a: Vec<Result<IndexEntry, &str>> = sample(3, 1).into_iter().map(Ok).collect();
    let mut b: Vec<Result<IndexEntry, &str>> = sample(2, 2).into_iter().map(Ok).collect();
    b.push(Err("damaged"));
    let out: Vec<_> = merge(vec![a.into_iter(), b.into_iter()], |_| true).collect();
    assert_eq!(out.last(), Some(&Err("damaged")));
    assert!(out[..out.len() - 1].iter().all(|e| e.is_ok()));
}

#[test]
fn sort_run_keeps_the_first_of_equal_ids() {
    let e = |id: u8, frame: u32| IndexEntry {
        id: [id; 32],
        pack: pack(0),
        frame,
        slot: 1,
    };
    let mut run = vec![e(2, 1), e(1, 2), e(2, 3), e(1, 4), e(0, 5)];
    sort_run(&mut run);
    assert_eq!(run, vec![e(0, 5), e(1, 2), e(2, 1)]);
}

#[test]
fn merged_segments_write_a_segment_that_reads_back() {
    let make = |range: std::ops::Range<u64>, packs: u8, first_pack: u8| {
        let mut v: Vec<IndexEntry> = range
            .map(|i| IndexEntry {
                id: id_of(i),
                pack: pack(first_pack + (i % u64::from(packs)) as u8),
                frame: i as u32,
                slot: 0,
            })
            .collect();
        sort_run(&mut v);
        v
    };
    // Ids 200..300 are in both; segment a's entries in pack 1 are dropped.
    let (ea, eb) = (make(0..300, 3, 0), make(200..500, 2, 3));
    let (a, b) = (encode(&ea).expect("a"), encode(&eb).expect("b"));
    let (sa, oa) = open(&a).expect("open a");
    let (sb, ob) = open(&b).expect("open b");
    let gone = pack(1);
    let merged: Result<Vec<IndexEntry>, SegmentError> =
        merge(vec![sa.iter(KEY, &oa), sb.iter(KEY, &ob)], |e| {
            e.pack != gone
        })
        .collect();
    let merged = merged.expect("merge");
    let c = encode(&merged).expect("c");
    let (sc, oc) = open(&c).expect("open c");
    assert_eq!(sc.verify(KEY, &oc).expect("verify"), merged.len() as u64);
    assert!(!sc.packs().contains(&gone));
    for i in 0..500 {
        let in_a = (i < 300 && i % 3 != 1).then(|| ea.iter().find(|e| e.id == id_of(i)));
        let in_b = (i >= 200).then(|| eb.iter().find(|e| e.id == id_of(i)));
        let want = in_a.or(in_b).flatten().copied();
        assert_eq!(
            sc.lookup(KEY, &oc, &id_of(i)).expect("lookup"),
            want,
            "id {i}"
        );
    }
}

#[test]
fn the_writer_refuses_disorder_repeats_and_bad_slots() {
    let v = sample(5, 1);
    for bad in [
        vec![v[1], v[0]],
        vec![v[0], v[1], v[1]],
        vec![IndexEntry { slot: 16, ..v[0] }],
    ] {
        let err = encode(&bad).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
}

#[test]
fn an_empty_segment_round_trips() {
    let bytes = encode(&[]).expect("encode");
    assert_eq!(bytes.len(), BLOCK + TRAILER_LEN);
    let (seg, obj) = open(&bytes).expect("open");
    assert_eq!(seg.entries(), 0);
    assert!(seg.packs().is_empty());
    assert!(!seg.may_contain(&id_of(1)));
    assert_eq!(seg.lookup(KEY, &obj, &id_of(1)).expect("lookup"), None);
    assert_eq!(seg.iter(KEY, &obj).count(), 0);
    assert_eq!(seg.verify(KEY, &obj).expect("verify"), 0);
}

/// A full block of uniform ids has 0.44% false positives; measured over 100,000 ids.
#[test]
fn false_positives_stay_below_one_percent() {
    let entries = sample(20_400, 4);
    let bytes = encode(&entries).expect("encode");
    let (seg, obj) = open(&bytes).expect("open");
    let absent: Vec<PageId> = (1_000_000..1_100_000).map(id_of).collect();
    let positives: Vec<&PageId> = absent.iter().filter(|id| seg.may_contain(id)).collect();
    let rate = positives.len() as f64 / absent.len() as f64;
    eprintln!("false positive rate {:.3}%", rate * 100.0);
    assert!(rate < 0.01, "{rate}");
    for id in positives.iter().take(50) {
        assert_eq!(seg.lookup(KEY, &obj, id).expect("lookup"), None);
    }
}

/// Through the local storage, as the engine will use it.
#[test]
fn segments_publish_through_storage() {
    use crate::store::LocalStorage;
    use crate::store::storage::Storage;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = LocalStorage::new(dir.path());
    let entries = sample(1000, 5);
    let info = write_segment(s.create(KEY).expect("create"), entries.clone()).expect("write");
    assert_eq!(info.entries, 1000);
    assert_eq!(info.packs, 5);
    assert_eq!(info.len, s.size(KEY).expect("size"));
    let obj = s.open(KEY).expect("open");
    let seg = Segment::open(KEY, &*obj).expect("segment");
    assert_eq!(
        seg.lookup(KEY, &*obj, &entries[500].id).expect("lookup"),
        Some(entries[500])
    );
    // A writer dropped part-way publishes nothing.
    let mut w = SegmentWriter::new(s.create("index/t.idx").expect("create")).expect("new");
    w.push(entries[0]).expect("push");
    drop(w);
    assert!(s.open("index/t.idx").is_err());
}

/// Writes the seed corpus of the `index_segment` fuzz target (`fuzz/seed.sh` runs it).
#[test]
#[ignore = "writes fuzz/corpus/index_segment"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/index_segment");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let seeds = [
        ("seed-empty", Vec::new()),
        ("seed-one-block", sample(5, 1)),
        ("seed-three-blocks", sample(250, 3)),
    ];
    for (name, entries) in seeds {
        let bytes = encode(&entries).expect("encode");
        std::fs::write(dir.join(format!("{name}.idx")), bytes).expect("write seed");
    }
}

/// Timing for the lead, not a test of speed: `cargo test --release --lib --features testing
/// store::index::tests::timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing print for 1 M entries"]
fn timing_of_a_million_entries() {
    use crate::store::LocalStorage;
    use crate::store::storage::Storage;
    use std::time::Instant;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = LocalStorage::new(dir.path());
    let entries = sample(1_000_000, 64);
    let start = Instant::now();
    let info = write_segment(s.create(KEY).expect("create"), entries.clone()).expect("write");
    let write = start.elapsed();
    let start = Instant::now();
    let obj = s.open(KEY).expect("open");
    let seg = Segment::open(KEY, &*obj).expect("segment");
    let open = start.elapsed();
    let n = 200_000;
    let start = Instant::now();
    for e in entries.iter().step_by(entries.len() / n) {
        assert!(seg.lookup(KEY, &*obj, &e.id).expect("lookup").is_some());
    }
    let present = start.elapsed();
    let start = Instant::now();
    let mut false_positives = 0;
    for i in 0..n as u64 {
        false_positives += usize::from(seg.may_contain(&id_of(u64::MAX - i)));
    }
    let absent = start.elapsed();
    let start = Instant::now();
    let read = seg.iter(KEY, &*obj).count();
    let iter = start.elapsed();
    eprintln!(
        "1M entries: {} bytes; write {write:?}, open {open:?}, {:.0} present lookups/s \
         (one block read each, page cache warm), {:.0} absent may_contain/s \
         ({false_positives} false positives in {n}), iter of {read} in {iter:?}",
        info.len,
        n as f64 / present.as_secs_f64(),
        n as f64 / absent.as_secs_f64(),
    );
}
