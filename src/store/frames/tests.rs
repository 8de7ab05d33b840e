#![allow(
    clippy::arithmetic_side_effects,
    reason = "tests compute offsets into the small files they build"
)]

use std::io;

use super::*;
use crate::store::block::{Codec, Compression};
use crate::store::le;
use crate::store::pack::PackError;
use crate::store::page::{self, Fingerprint, PAGE_SIZE};
use crate::store::storage::Object;
use crate::store::storage::Storage;
use crate::store::{CorruptKind, LocalStorage};
use proptest::prelude::*;
use uuid::Uuid;

const KEY: &str = "p.pack";

/// One page: compressible (a slow pattern) or not (xorshift), different per seed.
fn page_of(seed: u32, compressible: bool) -> Vec<u8> {
    if compressible {
        return (0..PAGE_SIZE)
            .map(|i| ((i / 64) as u32 ^ seed) as u8)
            .collect();
    }
    let mut x = u64::from(seed) | 0x9e37_79b9_0000_0000;
    (0..PAGE_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A frame of the model: its mask and its present pages in slot order.
#[derive(Debug, Clone)]
struct Frame {
    mask: u16,
    pages: Vec<Vec<u8>>,
}

fn frame(mask: u16, seed: u32, compressible: impl Fn(u8) -> bool) -> Frame {
    let pages = (0..16u8)
        .filter(|s| mask & (1 << s) != 0)
        .map(|s| {
            page_of(
                seed.wrapping_mul(31).wrapping_add(u32::from(s)),
                compressible(s),
            )
        })
        .collect();
    Frame { mask, pages }
}

fn append(w: &mut FrameWriter, f: &Frame) -> u32 {
    if f.mask == 0 {
        return w.append_empty().expect("append empty");
    }
    // Odd frames zstd, even ones LZ4: a pack may hold both (a repack keeps old frames).
    let how = if w.frames() % 2 == 1 {
        Compression::Zstd(1)
    } else {
        Compression::Lz4
    };
    let enc = encode_frame(&f.pages.concat(), how);
    let fps: Vec<Fingerprint> = f.pages.iter().map(|p| page::fingerprint(p)).collect();
    w.append(f.mask, (&enc).into(), &fps).expect("append")
}

fn write(s: &LocalStorage, id: Uuid, frame_size: u32, frames: &[Frame]) -> u64 {
    let mut w =
        FrameWriter::new(s.create(KEY).expect("create"), id, Uuid::nil(), frame_size).expect("new");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(append(&mut w, f), i as u32);
    }
    assert_eq!(w.frames(), frames.len() as u32);
    w.finish().expect("finish")
}

fn entries(p: &FramePack, obj: &dyn Object) -> Vec<FrameEntry> {
    (0..p.table_chunks())
        .flat_map(|c| p.table_chunk(KEY, obj, c).expect("table chunk"))
        .collect()
}

/// Every page of the model reads back by slot through the current mask, with its
/// fingerprint at the index the entry gives; absent slots resolve to nothing.
fn check(s: &LocalStorage, id: Uuid, frame_size: u32, frames: &[Frame]) {
    let obj = s.open(KEY).expect("open");
    let p = FramePack::open(KEY, &*obj, id, frame_size).expect("valid pack");
    assert_eq!((p.pack, p.frame_size), (id, frame_size));
    assert_eq!(p.frame_count(), frames.len() as u32);
    let pages: usize = frames.iter().map(|f| f.pages.len()).sum();
    assert_eq!(p.page_count() as usize, pages);
    let fps: Vec<Fingerprint> = (0..p.fingerprint_chunks())
        .flat_map(|c| p.fingerprint_chunk(KEY, &*obj, c).expect("fingerprints"))
        .collect();
    assert_eq!(fps.len(), pages);
    let es = entries(&p, &*obj);
    assert_eq!(es.len(), frames.len());
    for (e, f) in es.iter().zip(frames) {
        assert_eq!(e.mask, f.mask);
        let mut out = vec![0u8; e.decoded_len()];
        p.read_frame(&*obj, e, &mut out).expect("frame reads");
        let mut present = f.pages.iter();
        for slot in 0..(frame_size / PAGE_SIZE as u32) as u8 {
            if f.mask & (1 << slot) == 0 {
                assert_eq!(e.page_offset(slot), None);
                assert_eq!(e.page_fingerprint_index(slot), None);
                continue;
            }
            let want = present.next().expect("a model page per present slot");
            let at = e.page_offset(slot).expect("present");
            assert_eq!(&out[at..at + PAGE_SIZE], &want[..]);
            let i = e.page_fingerprint_index(slot).expect("present");
            assert_eq!(fps[i as usize], page::fingerprint(want));
            let (chunk, at) = fingerprint_position(i);
            assert_eq!(i as usize, chunk as usize * 4096 + at);
        }
    }
}

/// What a repack does with one frame: copy it byte for byte, empty it, or keep only the
/// pages of `keep` (re-encoded).
fn repack(s: &LocalStorage, id: Uuid, frame_size: u32, keep: &[u16]) -> Vec<Frame> {
    let obj = s.open(KEY).expect("open");
    let p = FramePack::open(KEY, &*obj, id, frame_size).expect("valid pack");
    let fps: Vec<Fingerprint> = (0..p.fingerprint_chunks())
        .flat_map(|c| p.fingerprint_chunk(KEY, &*obj, c).expect("fingerprints"))
        .collect();
    let mut w = FrameWriter::new(
        s.create("q.pack").expect("create"),
        id,
        Uuid::nil(),
        frame_size,
    )
    .expect("new");
    let mut model = Vec::new();
    for (e, &keep) in entries(&p, &*obj).iter().zip(keep) {
        let mask = e.mask & keep;
        let mut out = vec![0u8; e.decoded_len()];
        p.read_frame(&*obj, e, &mut out).expect("frame reads");
        let live: Vec<u8> = (0..16u8).filter(|s| mask & (1 << s) != 0).collect();
        let pages: Vec<Vec<u8>> = live
            .iter()
            .map(|&s| {
                let at = e.page_offset(s).expect("live pages are present");
                out[at..at + PAGE_SIZE].to_vec()
            })
            .collect();
        let live_fps: Vec<Fingerprint> = live
            .iter()
            .map(|&s| fps[e.page_fingerprint_index(s).expect("present") as usize])
            .collect();
        if mask == 0 {
            w.append_empty().expect("empty");
        } else if mask == e.mask {
            let stored = p.read_stored(&*obj, e).expect("stored bytes");
            let copy = EncodedFrame {
                hash: e.hash,
                codec: e.codec,
                bytes: stored,
            };
            w.append(mask, (&copy).into(), &live_fps).expect("copy");
        } else {
            w.append(
                mask,
                (&encode_frame(&pages.concat(), Compression::Zstd(3))).into(),
                &live_fps,
            )
            .expect("re-encoded");
        }
        model.push(Frame { mask, pages });
    }
    w.finish().expect("finish");
    s.put(KEY, &s.read("q.pack").expect("read")).expect("put");
    model
}

fn frames_strategy() -> impl Strategy<Value = (u32, Vec<(u16, u32, u8, u16)>)> {
    (
        prop_oneof![Just(4096u32), Just(16384), Just(65536)],
        proptest::collection::vec((any::<u16>(), any::<u32>(), 0u8..5, any::<u16>()), 0..20),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random frames (random masks, compressible, random and mixed pages, empty frames) at
    /// every frame size read back as the model says; so does a repack that copies, empties
    /// and thins them while keeping every frame index.
    #[test]
    fn frames_round_trip_and_survive_a_repack((frame_size, spec) in frames_strategy()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let id = Uuid::new_v4();
        let full = page::full_mask(frame_size / PAGE_SIZE as u32);
        let frames: Vec<Frame> = spec
            .iter()
            .map(|&(mask, seed, kind, _)| {
                let mask = if kind == 0 { 0 } else { mask & full };
                frame(mask, seed, |slot| match kind {
                    1 => true,
                    2 => false,
                    _ => slot % 2 == 0,
                })
            })
            .collect();
        write(&s, id, frame_size, &frames);
        check(&s, id, frame_size, &frames);
        let keep: Vec<u16> = spec.iter().map(|&(.., keep)| keep).collect();
        let repacked = repack(&s, id, frame_size, &keep);
        check(&s, id, frame_size, &repacked);
    }
}

/// Enough frames and pages to span several table chunks and two fingerprint chunks, each
/// read and verified alone.
#[test]
fn tables_span_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = LocalStorage::new(dir.path());
    let id = Uuid::new_v4();
    let frames: Vec<Frame> = (0..4900u32)
        .map(|i| frame(if i % 7 == 3 { 0 } else { 1 }, i, |_| true))
        .collect();
    write(&s, id, 4096, &frames);
    let obj = s.open(KEY).expect("open");
    let p = FramePack::open(KEY, &*obj, id, 4096).expect("valid");
    assert_eq!(p.table_chunks(), 5);
    assert_eq!(p.fingerprint_chunks(), 2);
    check(&s, id, 4096, &frames);
    let (chunk, at) = table_position(3000);
    let e = p.table_chunk(KEY, &*obj, chunk).expect("chunk")[at];
    let mut out = vec![0u8; e.decoded_len()];
    p.read_frame(&*obj, &e, &mut out).expect("reads");
    assert_eq!(out, frames[3000].pages.concat());
    assert!(matches!(
        p.table_chunk(KEY, &*obj, 5),
        Err(PackError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput
    ));
    assert!(p.fingerprint_chunk(KEY, &*obj, 2).is_err());
}

#[test]
fn the_writer_refuses_what_the_format_cannot_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = LocalStorage::new(dir.path());
    for bad in [0, 2048, 12288, 131072] {
        assert!(
            FrameWriter::new(s.create(KEY).expect("c"), Uuid::nil(), Uuid::nil(), bad).is_err()
        );
    }
    let mut w =
        FrameWriter::new(s.create(KEY).expect("c"), Uuid::nil(), Uuid::nil(), 16384).expect("new");
    let two = [page_of(1, false), page_of(2, false)].concat();
    let enc = encode_frame(&two, Compression::Lz4);
    assert_eq!(enc.codec, Codec::Raw);
    let fps = [1u128, 2];
    assert!(w.append(0, (&enc).into(), &[]).is_err(), "no pages");
    assert!(
        w.append(0b1_0001, (&enc).into(), &fps).is_err(),
        "slot beyond the frame"
    );
    assert!(
        w.append(0b0111, (&enc).into(), &[1, 2, 3]).is_err(),
        "raw bytes of 2 pages"
    );
    assert!(
        w.append(0b0011, (&enc).into(), &fps[..1]).is_err(),
        "one fingerprint short"
    );
    let zstd = EncodedFrame {
        codec: Codec::Zstd,
        bytes: vec![1; 8192],
        hash: 0,
    };
    assert!(
        w.append(0b0011, (&zstd).into(), &fps).is_err(),
        "zstd no shorter than its pages"
    );
    assert_eq!(w.frames(), 0);
    assert_eq!(w.append(0b0101, (&enc).into(), &fps).expect("valid"), 0);
    assert_eq!(w.append_empty().expect("valid"), 1);
    assert_eq!((w.frames(), w.pages(), w.stored_bytes()), (2, 2, 8192));
}

fn kind_of<T: std::fmt::Debug>(r: Result<T, PackError>) -> CorruptKind {
    match r {
        Err(PackError::Corrupt(c)) => c.kind,
        other => panic!("expected damage, got {other:?}"),
    }
}

const FS: u32 = 16384;

/// Frames 0 and 3 compress, 1 and 4 are raw, 2 is empty: 9 pages.
fn damage_fixture(s: &LocalStorage, id: Uuid) -> Vec<Frame> {
    let frames = vec![
        frame(0b1111, 1, |_| true),
        frame(0b0101, 2, |_| false),
        frame(0, 3, |_| true),
        frame(0b1000, 4, |_| true),
        frame(0b0011, 5, |_| false),
    ];
    write(s, id, FS, &frames);
    frames
}

/// Offsets of the fingerprint section, table and directory of a pack.
fn sections(b: &[u8]) -> (usize, usize, usize, usize) {
    let t = b.len() - TRAILER_LEN;
    (
        le::u64_at(b, t + 8) as usize,
        le::u64_at(b, t + 16) as usize,
        le::u64_at(b, t + 24) as usize,
        t,
    )
}

fn open(s: &LocalStorage, id: Uuid) -> Result<(FramePack, Arc<dyn Object>), PackError> {
    let obj = s.open(KEY).expect("open");
    FramePack::open(KEY, &*obj, id, FS).map(|p| (p, obj))
}

use std::sync::Arc;

/// One damage per documented byte range (header, frames, fingerprints, table, directory,
/// trailer, and a truncated file), each with its kind and diagnosis.
#[test]
fn each_region_of_damage_has_its_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = LocalStorage::new(dir.path());
    let id = Uuid::new_v4();
    damage_fixture(&s, id);
    let good = s.read(KEY).expect("read");
    let len = good.len();
    let (fp, table, dirat, t) = sections(&good);
    assert_eq!(
        (table - fp, dirat - table, t - dirat),
        (9 * 16, 5 * 40, 8 + 4)
    );
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x40;
        b
    };
    let put = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        reseal(&mut b);
        b
    };
    use CorruptKind::*;
    let cases: Vec<(Vec<u8>, CorruptKind, &str)> = vec![
        (
            good[..100].to_vec(),
            Length,
            "shorter than header and trailer",
        ),
        (
            good[..len - 1].to_vec(),
            TrailerChecksum,
            "pack trailer checksum mismatch",
        ),
        (flip(3), HeaderChecksum, "pack header checksum mismatch"),
        (flip(40), HeaderChecksum, "pack header checksum mismatch"),
        (put(0, b"RPFSXXXX"), Magic, "bad pack magic"),
        (
            put(8, &2u16.to_le_bytes()),
            Version,
            "pack version 2 is not a frame pack",
        ),
        (
            put(12, &8192u32.to_le_bytes()),
            BlockSize,
            "store uses 16384",
        ),
        (put(16, &[7; 16]), WrongId, "expected"),
        (
            flip(t + 9),
            TrailerChecksum,
            "pack trailer checksum mismatch",
        ),
        (
            flip(len - 1),
            TrailerChecksum,
            "pack trailer checksum mismatch",
        ),
        (put(t, b"RPFSXXXX"), Magic, "bad pack trailer magic"),
        (
            put(t + 8, &10u64.to_le_bytes()),
            Bounds,
            "sections do not fit",
        ),
        (
            put(t + 16, &(table as u64 + 16).to_le_bytes()),
            Bounds,
            "sections do not fit",
        ),
        (
            put(t + 32, &10u32.to_le_bytes()),
            Bounds,
            "sections do not fit",
        ),
        (
            put(t + 32, &100u32.to_le_bytes()),
            Bounds,
            "100 pages cannot fit 5 frames",
        ),
        (
            put(t + 36, &u32::MAX.to_le_bytes()),
            Bounds,
            "sections do not fit",
        ),
        (
            flip(dirat + 1),
            TableChecksum,
            "pack directory checksum mismatch",
        ),
        (
            put(dirat + 4, &1u32.to_le_bytes()),
            Bounds,
            "table chunk 0 first page 1",
        ),
    ];
    for (i, (bytes, kind, want)) in cases.into_iter().enumerate() {
        s.put(KEY, &bytes).expect("put");
        let r = open(&s, id);
        let err = format!("{:?}", r.as_ref().err());
        assert!(err.contains(want), "case {i}: {err}");
        assert_eq!(kind_of(r), kind, "case {i}: {err}");
    }
    s.put(KEY, &good).expect("put");
    assert_eq!(kind_of(open(&s, Uuid::new_v4())), WrongId);
    let obj = s.open(KEY).expect("open");
    assert_eq!(kind_of(FramePack::open(KEY, &*obj, id, 65536)), BlockSize);

    // The table and the fingerprints are checked when their chunk is read.
    s.put(KEY, &flip(table + 2)).expect("put");
    let (p, obj) = open(&s, id).expect("directory intact");
    let r = p.table_chunk(KEY, &*obj, 0);
    assert!(format!("{r:?}").contains("pack table chunk 0 checksum mismatch"));
    assert_eq!(kind_of(r), TableChecksum);
    assert!(p.fingerprint_chunk(KEY, &*obj, 0).is_ok());
    s.put(KEY, &flip(fp + 3)).expect("put");
    let (p, obj) = open(&s, id).expect("directory intact");
    let r = p.fingerprint_chunk(KEY, &*obj, 0);
    assert!(format!("{r:?}").contains("pack fingerprint chunk 0 checksum mismatch"));
    assert_eq!(kind_of(r), BodyChecksum);
    assert!(p.table_chunk(KEY, &*obj, 0).is_ok());

    // Damage inside a frame: that frame fails to read, the others read.
    s.put(KEY, &good).expect("put");
    let (p, obj) = open(&s, id).expect("valid");
    let es = entries(&p, &*obj);
    for victim in [0, 1, 3] {
        let mut bad = good.clone();
        bad[es[victim].offset as usize + 7] ^= 0x01;
        s.put(KEY, &bad).expect("put");
        let obj = s.open(KEY).expect("open");
        for (i, e) in es.iter().enumerate() {
            let mut out = vec![0u8; e.decoded_len()];
            let r = p.read_frame(&*obj, e, &mut out);
            assert_eq!(r.is_err(), i == victim, "frame {i}, victim {victim}: {r:?}");
        }
    }
}

/// Table entries that pass their chunk's checksum but break the format are refused, each
/// with its diagnosis.
#[test]
fn hostile_table_entries_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = LocalStorage::new(dir.path());
    let id = Uuid::new_v4();
    damage_fixture(&s, id);
    let good = s.read(KEY).expect("read");
    let (fp, table, ..) = sections(&good);
    let (p, obj) = open(&s, id).expect("valid");
    let es = entries(&p, &*obj);
    assert_eq!(
        es.iter().map(|e| e.codec).collect::<Vec<_>>(),
        [Codec::Lz4, Codec::Raw, Codec::Raw, Codec::Zstd, Codec::Raw]
    );
    let entry = |i: usize, field: usize| table + i * ENTRY_LEN + field;
    let put = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        reseal(&mut b);
        b
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            put(entry(4, 0), &(fp as u64).to_le_bytes()),
            "frames region ending at",
        ),
        (put(entry(1, 0), &10u64.to_le_bytes()), "are not after"),
        (
            put(entry(0, 0), &(es[1].offset).to_le_bytes()),
            "are not after",
        ),
        (
            put(entry(0, 18), &0x1fu16.to_le_bytes()),
            "mask 0x1f names slots beyond",
        ),
        (put(entry(0, 16), &[3]), "codec 3 is not raw"),
        (put(entry(0, 16), &[9]), "codec 9 is not raw"),
        (put(entry(1, 8), &5u32.to_le_bytes()), "first page 5 where"),
        (put(entry(0, 17), &[16]), "16 slots in a pack of 4"),
        (put(entry(3, 20), &[1]), "reserved bytes are not zero"),
        (
            put(entry(1, 12), &8191u32.to_le_bytes()),
            "stored length 8191",
        ),
        (
            put(entry(2, 24), &[1]),
            "stored length 0 of a Raw frame of 0 pages",
        ),
        // Frame 3 claims a second page: frame 4 no longer starts where it says.
        (
            put(entry(3, 18), &0b1100u16.to_le_bytes()),
            "first page 7 where",
        ),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        s.put(KEY, &bytes).expect("put");
        let (p, obj) = open(&s, id).expect("header, trailer and directory intact");
        let r = p.table_chunk(KEY, &*obj, 0);
        let err = format!("{r:?}");
        assert!(err.contains(want), "case {i}: {err}");
        assert_eq!(kind_of(r), CorruptKind::Entry, "case {i}: {err}");
    }
    // The last (raw) frame claims a third page: its pages run past the pack's count; one
    // page fewer leaves the chunk short of it.
    for (mask, want) in [(0b0111u16, "go past page 9"), (0b0001, "ends at page 8")] {
        let mut b = put(entry(4, 18), &mask.to_le_bytes());
        let raw_len = mask.count_ones() * PAGE_SIZE as u32;
        b[entry(4, 12)..entry(4, 12) + 4].copy_from_slice(&raw_len.to_le_bytes());
        reseal(&mut b);
        s.put(KEY, &b).expect("put");
        let (p, obj) = open(&s, id).expect("intact");
        let r = p.table_chunk(KEY, &*obj, 0);
        assert!(format!("{r:?}").contains(want), "{r:?}");
        assert_eq!(kind_of(r), CorruptKind::Entry);
    }

    // Entries built by hand cannot make reads allocate beyond a frame.
    s.put(KEY, &good).expect("put");
    let (p, obj) = open(&s, id).expect("valid");
    let mut e = es[0];
    e.stored_len = u32::MAX;
    let mut out = vec![0u8; e.decoded_len()];
    assert!(p.read_frame(&*obj, &e, &mut out).is_err());
    assert!(p.read_stored(&*obj, &e).is_err());
    assert!(p.read_frame(&*obj, &es[0], &mut [0u8; 10]).is_err());
}

/// Writes the seed corpus of the `frame_pack` fuzz target:
/// `cargo test --lib --features testing store::frames::tests::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/frame_pack"]
fn write_fuzz_seeds() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_pack");
    std::fs::create_dir_all(&out).expect("corpus dir");
    let dir = tempfile::tempdir().expect("tempdir");
    let s = LocalStorage::new(dir.path());
    damage_fixture(&s, Uuid::new_v4());
    std::fs::write(out.join("seed-16k"), s.read(KEY).expect("read")).expect("seed");
    write(&s, Uuid::new_v4(), 4096, &[]);
    std::fs::write(out.join("seed-empty"), s.read(KEY).expect("read")).expect("seed");
    let frames: Vec<Frame> = (0..40u32)
        .map(|i| frame(if i % 5 == 2 { 0 } else { 1 }, i, |_| i % 3 != 0))
        .collect();
    write(&s, Uuid::new_v4(), 4096, &frames);
    std::fs::write(out.join("seed-4k"), s.read(KEY).expect("read")).expect("seed");
    let frames = [
        frame(0xf0f1, 9, |s| s < 12),
        frame(0, 1, |_| true),
        frame(0x8000, 2, |_| true),
    ];
    write(&s, Uuid::new_v4(), 65536, &frames);
    std::fs::write(out.join("seed-64k"), s.read(KEY).expect("read")).expect("seed");
}
