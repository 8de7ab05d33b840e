//! Unit tests of page maps: round trips against a model, entry encoding and prediction,
//! compression of runs and the writer's refusals (damage and hostile maps are in `damage`).

#![allow(
    clippy::arithmetic_side_effects,
    reason = "tests compute offsets into the small maps they build"
)]

use super::entry::predict;
use super::*;
use crate::store::le;
use crate::store::pack::PackError;
use crate::store::page::frame_slots;
use crate::store::refs::RefSet;
use crate::store::storage::{Object, ObjectWriter};
use crate::store::{Corrupt, CorruptKind};
use proptest::prelude::*;
use std::io::{self, Write};
use uuid::Uuid;

mod damage;

/// The damage `e` reports (these tests read from memory: never I/O).
fn damage(e: &PackError) -> &Corrupt {
    match e {
        PackError::Corrupt(c) => c,
        PackError::Io(e) => panic!("I/O, not damage: {e}"),
    }
}
use std::sync::{Arc, Mutex};

/// An object held in memory.
#[derive(Debug)]
struct Mem(Vec<u8>);

impl Object for Mem {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = offset as usize;
        let src = self
            .0
            .get(s..s + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A writer that publishes into a shared buffer.
struct MemWriter {
    buf: Vec<u8>,
    dst: Arc<Mutex<Vec<u8>>>,
}

impl Write for MemWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemWriter {
    fn commit(self: Box<Self>) -> io::Result<u64> {
        let n = self.buf.len() as u64;
        *self.dst.lock().expect("lock") = self.buf;
        Ok(n)
    }
}

fn writer(disk_size: u64, frame_size: u32) -> (PageMapWriter, Arc<Mutex<Vec<u8>>>) {
    let dst = Arc::new(Mutex::new(Vec::new()));
    let out = Box::new(MemWriter {
        buf: Vec::new(),
        dst: dst.clone(),
    });
    let w = PageMapWriter::new(out, disk_size, frame_size).expect("new");
    (w, dst)
}

fn ids(n: u128) -> Vec<Uuid> {
    (1..=n)
        .map(|i| Uuid::from_u128(i * 0x1_0000_0001))
        .collect()
}

/// Writes `model` as the map of a `disk_size`-byte disk, pushing in batches of `batch`.
fn write(
    disk_size: u64,
    frame_size: u32,
    packs: &[Uuid],
    model: &[Option<PageRef>],
    batch: usize,
) -> (Vec<u8>, MapInfo) {
    let (mut w, dst) = writer(disk_size, frame_size);
    for (i, p) in packs.iter().enumerate() {
        assert_eq!(w.pack_slot(*p), i as u32 + 1);
    }
    let entries: Vec<u64> = model.iter().map(|r| encode_entry(*r)).collect();
    for c in entries.chunks(batch.max(1)) {
        w.push(c).expect("push");
    }
    let info = w.finish().expect("finish");
    let bytes = dst.lock().expect("lock").clone();
    (bytes, info)
}

fn model_summary(packs: &[Uuid], model: &[Option<PageRef>]) -> RefSet {
    let mut s = RefSet::new();
    for r in model.iter().flatten() {
        s.insert(packs[r.pack as usize - 1], r.frame, r.slot);
    }
    s
}

fn read_all(m: &PageMap, obj: &dyn Object) -> Vec<u64> {
    let mut all = Vec::new();
    for i in 0..m.map_pages() {
        all.extend(m.read_page("m", obj, i).expect("page reads"));
    }
    all
}

/// A piece of a disk: a run of holes, a run of consecutive pages of consecutive frames
/// from `(pack, frame, slot)`, or one page anywhere.
#[derive(Debug, Clone)]
enum Piece {
    Holes(usize),
    Run(u32, u32, u8, usize),
    One(u32, u32, u8),
}

fn pieces(packs: u32) -> impl Strategy<Value = Vec<Piece>> {
    let piece = prop_oneof![
        (1..6000usize).prop_map(Piece::Holes),
        (1..=packs, any::<u32>(), 0..16u8, 1..9000usize)
            .prop_map(|(p, f, s, n)| Piece::Run(p, f, s, n)),
        (1..=packs, any::<u32>(), 0..16u8).prop_map(|(p, f, s)| Piece::One(p, f, s)),
    ];
    proptest::collection::vec(piece, 0..12)
}

/// The model of a disk of `pages` pages made of `pieces` (cut or padded with holes).
fn model_of(pieces: &[Piece], pages: usize, slots: u32) -> Vec<Option<PageRef>> {
    let mut m = Vec::with_capacity(pages);
    for p in pieces {
        match *p {
            Piece::Holes(n) => m.extend(std::iter::repeat_n(None, n)),
            Piece::One(pack, frame, slot) => m.push(Some(PageRef {
                pack,
                frame,
                slot: slot % slots as u8,
            })),
            Piece::Run(pack, frame, slot, n) => {
                let mut at = (u64::from(frame), u32::from(slot) % slots);
                for _ in 0..n {
                    m.push(Some(PageRef {
                        pack,
                        frame: at.0 as u32,
                        slot: at.1 as u8,
                    }));
                    at = if at.1 + 1 < slots {
                        (at.0, at.1 + 1)
                    } else {
                        ((at.0 + 1) & u64::from(u32::MAX), 0)
                    };
                }
            }
        }
    }
    m.resize(pages, None);
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn maps_round_trip_against_the_model(
        pages in prop_oneof![0..10usize, 4090..4100usize, 1..(3 * ENTRIES_PER_PAGE + 50)],
        short in 0..4096u64,
        frame_shift in 0..5u32,
        npacks in 1..4u32,
        pieces in pieces(3),
        batch in 1..10_000usize,
    ) {
        let frame_size = 4096u32 << frame_shift;
        let slots = frame_slots(frame_size);
        let disk_size = (pages as u64 * 4096).saturating_sub(if pages > 0 { short } else { 0 });
        let packs = ids(u128::from(npacks));
        let mut model = model_of(&pieces, pages, slots);
        // Pieces may name packs beyond `npacks`: fold them in.
        for r in model.iter_mut().flatten() {
            r.pack = (r.pack - 1) % npacks + 1;
        }
        let (bytes, info) = write(disk_size, frame_size, &packs, &model, batch);
        let obj = Mem(bytes);
        let m = PageMap::open("m", &obj).expect("opens");
        let data = model.iter().flatten().count() as u64;
        prop_assert_eq!(m.frame_size, frame_size);
        prop_assert_eq!(m.disk_size, disk_size);
        prop_assert_eq!(m.pages, pages as u64);
        prop_assert_eq!(m.data_pages, data);
        prop_assert_eq!(info.data_pages, data);
        prop_assert_eq!(info.stored_len, obj.len());
        prop_assert_eq!(&m.packs, &packs);
        prop_assert_eq!(u64::from(m.map_pages()), map_page_count(pages as u64));
        prop_assert_eq!(u64::from(m.map_pages()), info.map_pages);
        let all = read_all(&m, &obj);
        let back: Vec<Option<PageRef>> = all.iter().map(|&e| decode_entry(e)).collect();
        prop_assert_eq!(&back, &model);
        for i in 0..m.map_pages() {
            let chunk = &model[i as usize * ENTRIES_PER_PAGE..][..m.page_entries(i)];
            prop_assert_eq!(m.page_is_hole(i), chunk.iter().all(Option::is_none));
            prop_assert_eq!(m.page_data_pages(i) as usize, chunk.iter().flatten().count());
        }
        let want = model_summary(&packs, &model);
        prop_assert_eq!(&m.summary("m", &obj).expect("summary"), &want);
        prop_assert_eq!(&info.summary, &want);
    }
}

#[test]
fn entries_encode_and_locate() {
    let r = PageRef {
        pack: MAX_PACKS,
        frame: u32::MAX,
        slot: 15,
    };
    assert_eq!(encode_entry(Some(r)), 0xffff_ffff_ffff_ff0f);
    assert_eq!(decode_entry(encode_entry(Some(r))), Some(r));
    assert_eq!(encode_entry(None), 0);
    assert_eq!(decode_entry(0), None);
    assert_eq!(decode_entry(0xff), None);
    assert_eq!(locate(4097), (1, 1));
    // The last slot of the last frame predicts itself (no frame after it).
    assert_eq!(predict(0xffff_ffff_ffff_ff0f, 16), 0xffff_ffff_ffff_ff0f);
    assert_eq!(predict(0x0100_0000_0300, 1), 0x0100_0000_0400);
    assert_eq!(predict(0x0100_0000_0302, 4), 0x0100_0000_0303);
    assert_eq!(predict(0x0100_0000_0303, 4), 0x0100_0000_0400);
}

/// A 1 GiB disk of consecutive full frames, with a hole in the middle, takes a few KiB,
/// nearly all of it the directory and the summary.
#[test]
fn runs_of_full_frames_compress_to_almost_nothing() {
    let packs = ids(2);
    let pages = (1usize << 30) / 4096;
    let mut model = Vec::with_capacity(pages);
    for i in 0..pages {
        let (pack, frame) = if i < pages / 2 { (1, 7) } else { (2, 0) };
        model.push(Some(PageRef {
            pack,
            frame: frame + (i / 16) as u32,
            slot: (i % 16) as u8,
        }));
    }
    for e in &mut model[100_000..120_000] {
        *e = None;
    }
    let (bytes, info) = write(1 << 30, 65536, &packs, &model, 50_000);
    let m = PageMap::open("m", &Mem(bytes.clone())).expect("opens");
    assert_eq!(m.data_pages, pages as u64 - 20_000);
    assert_eq!((0..m.map_pages()).filter(|&i| m.page_is_hole(i)).count(), 4);
    assert!(
        bytes.len() < 4096,
        "a 1 GiB map of runs takes {} bytes",
        bytes.len()
    );
    assert_eq!(info.summary.page_count(), m.data_pages);
}

/// Sizes and times of zstd levels on map pages of runs and of scattered pages (run with
/// `--ignored --nocapture` to choose `LEVEL`).
#[test]
#[ignore = "a measurement, not a check"]
fn compression_levels_on_runs_and_fragments() {
    let packs = ids(3);
    let pages = 64 * ENTRIES_PER_PAGE;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let runs = model_of(&[Piece::Run(1, 0, 0, pages)], pages, 16);
    let mut frag = runs.clone();
    for e in frag.iter_mut() {
        match next() % 10 {
            0 => *e = None,
            1..=3 => {
                *e = Some(PageRef {
                    pack: 2 + (next() % 2) as u32,
                    frame: (next() % 1_000_000) as u32,
                    slot: (next() % 16) as u8,
                })
            }
            _ => {}
        }
    }
    for (name, model) in [("runs", &runs), ("fragmented", &frag)] {
        let raw: Vec<u8> = {
            let mut w = PageMapWriter::new(
                Box::new(MemWriter {
                    buf: Vec::new(),
                    dst: Arc::default(),
                }),
                pages as u64 * 4096,
                65536,
            )
            .expect("new");
            for p in &packs {
                w.pack_slot(*p);
            }
            let mut out = Vec::new();
            let mut prev = 0;
            for r in model.iter() {
                let e = encode_entry(*r);
                out.extend_from_slice(&(e ^ predict(prev, 16)).to_le_bytes());
                prev = e;
            }
            out
        };
        for level in 1..=3 {
            let t = std::time::Instant::now();
            let mut z = zstd::bulk::Compressor::new(level).expect("zstd");
            let size: usize = raw
                .chunks(ENTRIES_PER_PAGE * 8)
                .map(|c| z.compress(c).expect("compress").len())
                .sum();
            println!("{name}: level {level}: {size} bytes, {:?}", t.elapsed());
        }
    }
}

#[test]
fn the_writer_refuses_a_wrong_number_of_entries_and_bad_sizes() {
    let (mut w, _) = writer(4096 * 3, 65536);
    w.push(&[0, 0]).expect("push");
    assert!(w.push(&[0, 0]).is_err(), "past the end");
    let (w, _) = writer(4096 * 3, 65536);
    assert!(w.finish().is_err(), "short");
    for bad in [0, 2048, 5000, 128 << 10] {
        let out = Box::new(MemWriter {
            buf: Vec::new(),
            dst: Arc::default(),
        });
        assert!(PageMapWriter::new(out, 1, bad).is_err(), "frame size {bad}");
    }
    let out = Box::new(MemWriter {
        buf: Vec::new(),
        dst: Arc::default(),
    });
    assert!(PageMapWriter::new(out, (MAX_PAGES + 1) * 4096, 65536).is_err());
    // An empty disk has an empty map.
    let (w, dst) = writer(0, 65536);
    let info = w.finish().expect("finish");
    assert_eq!((info.data_pages, info.map_pages), (0, 0));
    let obj = Mem(dst.lock().expect("lock").clone());
    let m = PageMap::open("m", &obj).expect("opens");
    assert_eq!((m.pages, m.map_pages()), (0, 0));
    assert!(m.summary("m", &obj).expect("summary").is_empty());
}
