//! Damaged and hostile page maps: each region's damage is refused with its kind, failed reads
//! are I/O, and entries, pages and summaries a writer would never produce are refused.

use super::*;

fn sample() -> (Vec<u8>, Vec<Uuid>, Vec<Option<PageRef>>) {
    let packs = ids(3);
    let pages = 3 * ENTRIES_PER_PAGE + 100;
    let mut model = model_of(&[Piece::Run(1, 10, 0, pages)], pages, 16);
    for (i, e) in model.iter_mut().enumerate() {
        if i % 5 == 0 {
            *e = Some(PageRef {
                pack: 2,
                frame: i as u32,
                slot: 3,
            });
        }
    }
    // Map page 1 is all holes.
    for e in &mut model[ENTRIES_PER_PAGE..2 * ENTRIES_PER_PAGE] {
        *e = None;
    }
    let (bytes, _) = write(pages as u64 * 4096 - 1000, 65536, &packs, &model, 777);
    (bytes, packs, model)
}

/// Where the regions of a map are, from its (valid) trailer.
struct Regions {
    summary: usize,
    list: usize,
    dir: usize,
    trailer: usize,
}

fn regions(b: &[u8]) -> Regions {
    let t = b.len() - TRAILER_LEN;
    Regions {
        summary: le::u64_at(b, t + 8) as usize,
        list: le::u64_at(b, t + 24) as usize,
        dir: le::u64_at(b, t + 32) as usize,
        trailer: t,
    }
}

fn resealed(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = bytes.to_vec();
    edit(&mut b);
    reseal(&mut b);
    b
}

/// A sound map in storage whose reads fail (EIO) after the first `ok` of them.
#[derive(Debug)]
struct FailingAfter {
    map: Mem,
    ok: std::sync::atomic::AtomicUsize,
}

impl Object for FailingAfter {
    fn len(&self) -> u64 {
        self.map.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self
            .ok
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.map.read_exact_at(buf, offset)
    }
}

/// Storage that fails to read a sound map is I/O, never damage (a short read still is).
#[test]
fn read_failures_are_io_not_damage() {
    let (bytes, ..) = sample();
    let failing = |ok: usize| FailingAfter {
        map: Mem(bytes.clone()),
        ok: ok.into(),
    };
    let is_io = |r: Result<(), PackError>| matches!(r, Err(PackError::Io(_)));
    // Header, trailer, then pack list and directory: each read of `open` failing.
    for ok in 0..3 {
        assert!(
            is_io(PageMap::open("m", &failing(ok)).map(|_| ())),
            "read {ok}"
        );
    }
    let obj = failing(3);
    let m = PageMap::open("m", &obj).expect("opens");
    let data_page = (0..m.map_pages())
        .find(|&i| !m.page_is_hole(i))
        .expect("a page");
    assert!(is_io(m.read_page("m", &obj, data_page).map(|_| ())));
    assert!(is_io(m.summary("m", &obj).map(|_| ())));
    let err = PageMap::open("m", &Mem(bytes[..bytes.len() - 1].to_vec()));
    assert!(matches!(err, Err(PackError::Corrupt(_))), "{err:?}");
}

/// One damage per documented byte range, each with its kind and diagnosis. Damage inside a
/// map page fails only that page; damage inside the summary fails only the summary.
#[test]
fn each_region_of_damage_has_its_kind() {
    let (good, packs, model) = sample();
    let r = regions(&good);
    let len = good.len();
    assert_eq!(
        reseal_copy(&good),
        good,
        "resealing a good map changes nothing"
    );
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x10;
        b
    };
    let put = |at: usize, v: &[u8]| resealed(&good, |b| b[at..at + v.len()].copy_from_slice(v));
    let dir_entry = |i: usize, field: usize| r.dir + i * DIR_ENTRY_LEN + field;
    let cases: Vec<(Vec<u8>, CorruptKind, &str)> = vec![
        (
            good[..HEADER_LEN + TRAILER_LEN - 1].to_vec(),
            CorruptKind::Length,
            "shorter than header and trailer",
        ),
        (
            good[..len - 1].to_vec(),
            CorruptKind::TrailerChecksum,
            "trailer checksum",
        ),
        (
            flip(5),
            CorruptKind::HeaderChecksum,
            "map header checksum mismatch",
        ),
        (
            flip(40),
            CorruptKind::HeaderChecksum,
            "map header checksum mismatch",
        ),
        (put(0, b"RPFSXXXX"), CorruptKind::Magic, "bad map magic"),
        (
            put(8, &1u16.to_le_bytes()),
            CorruptKind::Version,
            "unsupported map version 1",
        ),
        (
            put(12, &5000u32.to_le_bytes()),
            CorruptKind::BlockSize,
            "frame size 5000",
        ),
        (
            put(12, &(128u32 << 10).to_le_bytes()),
            CorruptKind::BlockSize,
            "frame size 131072",
        ),
        (
            put(24, &7u64.to_le_bytes()),
            CorruptKind::Bounds,
            "7 pages do not describe",
        ),
        (
            put(16, &(1u64 << 60).to_le_bytes()),
            CorruptKind::Bounds,
            "do not describe",
        ),
        (
            flip(r.list + 3),
            CorruptKind::TableChecksum,
            "map pack list checksum mismatch",
        ),
        (
            put(r.list + 16, packs[0].as_bytes()),
            CorruptKind::Entry,
            "twice",
        ),
        (
            flip(r.dir + 1),
            CorruptKind::TableChecksum,
            "map directory checksum mismatch",
        ),
        (
            put(dir_entry(0, 18), &[2]),
            CorruptKind::Entry,
            "directory entry 0 is invalid",
        ),
        (
            put(dir_entry(2, 19), &[1]),
            CorruptKind::Entry,
            "directory entry 2 is invalid",
        ),
        (
            put(dir_entry(1, 0), &[1]),
            CorruptKind::Entry,
            "directory entry 1 is invalid",
        ),
        (
            put(dir_entry(2, 0), &[1]),
            CorruptKind::Entry,
            "directory entry 2 is invalid",
        ),
        (
            put(dir_entry(3, 8), &[1, 0, 1, 0]),
            CorruptKind::Entry,
            "directory entry 3 is invalid",
        ),
        (
            put(dir_entry(3, 16), &[101, 0]),
            CorruptKind::Entry,
            "directory entry 3 is invalid",
        ),
        (
            put(dir_entry(3, 16), &[99, 0]),
            CorruptKind::Bounds,
            "the trailer",
        ),
        (
            flip(r.trailer + 9),
            CorruptKind::TrailerChecksum,
            "map trailer checksum mismatch",
        ),
        (
            flip(len - 1),
            CorruptKind::TrailerChecksum,
            "map trailer checksum mismatch",
        ),
        (
            put(r.trailer, b"RPFSXXXX"),
            CorruptKind::Magic,
            "bad map trailer magic",
        ),
        (
            put(r.trailer + 8, &63u64.to_le_bytes()),
            CorruptKind::Bounds,
            "do not fit",
        ),
        (
            put(r.trailer + 16, &1u64.to_le_bytes()),
            CorruptKind::Bounds,
            "do not fit",
        ),
        (
            put(r.trailer + 48, &4u32.to_le_bytes()),
            CorruptKind::Bounds,
            "do not fit",
        ),
        (
            put(r.trailer + 52, &60u32.to_le_bytes()),
            CorruptKind::Bounds,
            "do not fit",
        ),
        (
            put(r.trailer + 40, &(1u64 << 40).to_le_bytes()),
            CorruptKind::Bounds,
            "do not fit",
        ),
        (
            put(r.trailer + 40, &5u64.to_le_bytes()),
            CorruptKind::Bounds,
            "the trailer 5",
        ),
    ];
    for (i, (bytes, kind, want)) in cases.into_iter().enumerate() {
        let err = PageMap::open("m", &Mem(bytes)).expect_err("damaged");
        assert_eq!(damage(&err).kind, kind, "case {i}: {err}");
        assert!(err.to_string().contains(want), "case {i}: {err}");
        assert_eq!(damage(&err).file, "m");
    }

    // Inside map page 2 (stored after page 0): that page fails, the others and the
    // summary read.
    let m = PageMap::open("m", &Mem(good.clone())).expect("valid");
    let page2 = m.dir[2];
    let bad = Mem(flip(page2.offset as usize + 3));
    let m = PageMap::open("m", &bad).expect("the directory is intact");
    for i in 0..m.map_pages() {
        let r = m.read_page("m", &bad, i);
        if i == 2 {
            let err = r.expect_err("damaged page");
            assert_eq!(damage(&err).kind, CorruptKind::BodyChecksum, "{err}");
            assert!(err.to_string().contains("map page 2 checksum"), "{err}");
        } else {
            let want = &model[i as usize * ENTRIES_PER_PAGE..][..m.page_entries(i)];
            let got: Vec<_> = r
                .expect("intact page")
                .into_iter()
                .map(decode_entry)
                .collect();
            assert_eq!(got, want);
        }
    }
    m.summary("m", &bad).expect("summary intact");
    let err = m.read_page("m", &bad, 4).expect_err("no page 4");
    assert_eq!(damage(&err).kind, CorruptKind::Bounds);

    // Inside the summary: only the summary fails.
    let bad = Mem(flip(r.summary + 2));
    let m = PageMap::open("m", &bad).expect("opens");
    read_all(&m, &bad);
    let err = m.summary("m", &bad).expect_err("damaged summary");
    assert_eq!(damage(&err).kind, CorruptKind::BodyChecksum, "{err}");
    // Resealed, the summary no longer decompresses.
    let bad = Mem(resealed(&good, |b| b[r.summary + 1] ^= 0xff));
    let err = PageMap::open("m", &bad)
        .and_then(|m| m.summary("m", &bad))
        .expect_err("bad");
    assert_eq!(damage(&err).kind, CorruptKind::Compression, "{err}");

    // One fewer data page in page 0's directory entry and in the trailer: the map opens,
    // page 0 disagrees with its entry.
    let bad = resealed(&good, |b| {
        let c0 = le::u16_at(b, dir_entry(0, 16));
        b[dir_entry(0, 16)..][..2].copy_from_slice(&(c0 - 1).to_le_bytes());
        let t = r.trailer + 40;
        let d = le::u64_at(b, t);
        b[t..t + 8].copy_from_slice(&(d - 1).to_le_bytes());
    });
    let bad = Mem(bad);
    let m = PageMap::open("m", &bad).expect("opens");
    let err = m.read_page("m", &bad, 0).expect_err("count mismatch");
    assert_eq!(damage(&err).kind, CorruptKind::Entry, "{err}");
    assert!(
        err.to_string().contains("its directory entry says 4095"),
        "{err}"
    );
    m.read_page("m", &bad, 2).expect("page 2 intact");
}

fn reseal_copy(b: &[u8]) -> Vec<u8> {
    resealed(b, |_| {})
}

/// A map whose writer was made to store `bad` at page 5, bypassing `push`'s checks.
fn with_entry(bad: u64, frame_size: u32) -> Result<Vec<u64>, PackError> {
    let (mut w, dst) = writer(10 * 4096, frame_size);
    w.pack_slot(Uuid::from_u128(1));
    w.push(
        &[encode_entry(Some(PageRef {
            pack: 1,
            frame: 0,
            slot: 0,
        })); 5],
    )
    .expect("push");
    w.page.push(bad);
    w.pushed += 1;
    w.data_pages += u64::from(bad != 0);
    w.push(&[0; 4]).expect("push");
    w.finish().expect("finish");
    let obj = Mem(dst.lock().expect("lock").clone());
    PageMap::open("m", &obj)?.read_page("m", &obj, 0)
}

#[test]
fn hostile_entries_are_refused() {
    let ok = encode_entry(Some(PageRef {
        pack: 1,
        frame: 9,
        slot: 3,
    }));
    assert!(with_entry(ok, 65536).is_ok());
    let cases = [
        (2u64 << 40, 65536, "pack slot 2 of 1"),
        (ok | 0x40, 65536, "reserved bits set"),
        (0x0012_3400, 65536, "a hole entry with bits set"),
        (0x7, 65536, "a hole entry with bits set"),
        (ok, 8192, "page slot 3 of a 2-page frame"),
    ];
    for (bad, frame_size, want) in cases {
        let err = with_entry(bad, frame_size).expect_err("hostile");
        assert_eq!(damage(&err).kind, CorruptKind::Entry, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("map page 0 entry 5: {want}")),
            "{err}"
        );
        // The writer refuses what the reader would.
        let (mut w, _) = writer(4096, frame_size);
        w.pack_slot(Uuid::from_u128(1));
        let err = w.push(&[bad]).expect_err("refused");
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn hostile_pages_and_summaries_are_refused() {
    // A page that decompresses to the wrong size.
    let (mut w, dst) = writer(4096 * 100, 4096);
    w.pack_slot(Uuid::from_u128(1));
    let scattered: Vec<u64> = (0..100u64)
        .map(|i| 1 << 40 | (i * 7919 % 1000) << 8)
        .collect();
    w.push(&scattered).expect("push");
    w.finish().expect("finish");
    let good = dst.lock().expect("lock").clone();
    let r = regions(&good);
    let short = zstd::bulk::compress(&[0u8; 16], 1).expect("zstd");
    let mut b = good[..HEADER_LEN].to_vec();
    let pad = r.summary - HEADER_LEN - short.len();
    // Same stored length: the short frame, then bytes zstd skips (a skippable frame).
    let mut page = short.clone();
    page.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    page.extend_from_slice(&((pad - 8) as u32).to_le_bytes());
    page.resize(r.summary - HEADER_LEN, 0);
    b.extend_from_slice(&page);
    b.extend_from_slice(&good[r.summary..]);
    let b = resealed(&b, |_| {});
    let obj = Mem(b);
    let err = PageMap::open("m", &obj)
        .and_then(|m| m.read_page("m", &obj, 0))
        .expect_err("short page");
    assert_eq!(damage(&err).kind, CorruptKind::Compression, "{err}");

    // Summaries naming an unlisted pack, a slot past the frame, more pages than the map.
    let one = Uuid::from_u128(1);
    let cases = [
        (Uuid::from_u128(77), 0, 0, "unlisted pack"),
        (one, 0, 1, "pages 0x3 of frame 0"),
        (one, 5, 0, "more than the map's 2 data pages"),
    ];
    for (pack, frame, slot, want) in cases {
        let (mut w, dst) = writer(2 * 4096, 4096);
        w.pack_slot(Uuid::from_u128(1));
        w.pack_slot(Uuid::from_u128(2));
        w.push(&[1 << 40, 1 << 40 | 1 << 8]).expect("push");
        w.summary.insert(pack, frame, slot);
        w.finish().expect("finish");
        let obj = Mem(dst.lock().expect("lock").clone());
        let m = PageMap::open("m", &obj).expect("opens");
        let err = m.summary("m", &obj).expect_err("hostile summary");
        assert_eq!(damage(&err).kind, CorruptKind::Entry, "{err}");
        assert!(err.to_string().contains(want), "{err}");
    }
}
