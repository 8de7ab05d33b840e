//! Damage to a segment, region by region: what `Segment::open`, a block read, iteration and
//! `Segment::verify` each refuse, with its kind and diagnosis.

use super::*;

/// 250 entries over 3 packs: blocks of 102, 102 and 46 entries.
fn damage_fixture() -> (Vec<IndexEntry>, Vec<u8>) {
    let entries = sample(250, 3);
    let bytes = encode(&entries).expect("encode");
    (entries, bytes)
}

struct Layout {
    packs_at: usize,
    fences_at: usize,
    filter_at: usize,
    t: usize,
}

fn layout(bytes: &[u8]) -> Layout {
    let t = bytes.len() - TRAILER_LEN;
    let at = |f: usize| le::u64_at(bytes, t + f) as usize;
    Layout {
        packs_at: at(24),
        fences_at: at(32),
        filter_at: at(40),
        t,
    }
}

fn resealed(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = bytes.to_vec();
    edit(&mut b);
    reseal(&mut b);
    b
}

/// One damage per documented byte range, each refused at open with its kind and diagnosis.
#[test]
fn each_region_of_damage_has_its_kind() {
    let (_, good) = damage_fixture();
    let len = good.len();
    let Layout {
        packs_at,
        fences_at,
        filter_at,
        t,
    } = layout(&good);
    assert_eq!(
        (packs_at, fences_at, filter_at, t),
        (
            4 * BLOCK,
            4 * BLOCK + 48,
            4 * BLOCK + 72,
            4 * BLOCK + 72 + 3 * FILTER_LEN
        )
    );
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x40;
        b
    };
    let put = |at: usize, v: &[u8]| resealed(&good, |b| b[at..at + v.len()].copy_from_slice(v));
    let mut longer = good.clone();
    longer.push(0);
    let first_pack = good[packs_at..packs_at + 16].to_vec();
    use CorruptKind::*;
    let cases: Vec<(Vec<u8>, CorruptKind, &str)> = vec![
        (
            good[..BLOCK + TRAILER_LEN - 1].to_vec(),
            Length,
            "shorter than header and trailer",
        ),
        (
            good[..len - 1].to_vec(),
            TrailerChecksum,
            "trailer checksum mismatch",
        ),
        (longer, TrailerChecksum, "trailer checksum mismatch"),
        (flip(3), HeaderChecksum, "header checksum mismatch"),
        (flip(40), HeaderChecksum, "header checksum mismatch"),
        (put(0, b"RPFSXXXX"), Magic, "bad index segment magic"),
        (
            put(8, &9u16.to_le_bytes()),
            Version,
            "unsupported index segment version 9",
        ),
        (
            put(10, &0u16.to_le_bytes()),
            Bounds,
            "filter of 0 bytes per block",
        ),
        (
            put(10, &9000u16.to_le_bytes()),
            Bounds,
            "filter of 9000 bytes per block",
        ),
        (put(10, &72u16.to_le_bytes()), Bounds, "need a"),
        (
            flip(packs_at + 1),
            TableChecksum,
            "pack list checksum mismatch",
        ),
        (
            flip(fences_at + 1),
            TableChecksum,
            "fences checksum mismatch",
        ),
        (
            flip(filter_at + 1),
            TableChecksum,
            "filter checksum mismatch",
        ),
        (flip(t + 9), TrailerChecksum, "trailer checksum mismatch"),
        (flip(len - 1), TrailerChecksum, "trailer checksum mismatch"),
        (
            put(t, b"RPFSXXXX"),
            Magic,
            "bad index segment trailer magic",
        ),
        (put(t + 8, &400u64.to_le_bytes()), Bounds, "do not agree"),
        (put(t + 16, &4u32.to_le_bytes()), Bounds, "do not agree"),
        (put(t + 20, &251u32.to_le_bytes()), Bounds, "do not agree"),
        (put(t + 20, &u32::MAX.to_le_bytes()), Bounds, "do not agree"),
        (put(t + 20, &4u32.to_le_bytes()), Bounds, "need a"),
        // Counts beyond the file: a million entries in a 17 KiB file.
        (
            resealed(&good, |b| {
                b[t + 8..t + 16].copy_from_slice(&1_000_000u64.to_le_bytes());
                b[t + 16..t + 20].copy_from_slice(&9804u32.to_le_bytes());
            }),
            Bounds,
            "need a",
        ),
        (
            resealed(&good, |b| {
                b[t + 8..t + 16].copy_from_slice(&u64::MAX.to_le_bytes());
                b[t + 16..t + 20].copy_from_slice(&u32::MAX.to_le_bytes());
            }),
            Bounds,
            "do not agree",
        ),
        (
            put(t + 24, &(packs_at as u64 + 1).to_le_bytes()),
            Bounds,
            "sections at",
        ),
        (
            put(t + 40, &(t as u64).to_le_bytes()),
            Bounds,
            "sections at",
        ),
        (put(packs_at + 32, &first_pack), Entry, "is listed twice"),
        (
            put(fences_at + 8, &[0xff; 8]),
            Entry,
            "fence of block 2 is not above the one before",
        ),
    ];
    for (i, (bytes, want_kind, want)) in cases.into_iter().enumerate() {
        let r = open(&bytes).map(|_| ());
        let err = format!("{:?}", r.as_ref().err());
        assert!(err.contains(want), "case {i}: {err}");
        assert!(err.contains(KEY), "case {i}: {err}");
        assert_eq!(kind(r), want_kind, "case {i}: {err}");
    }
}

/// Damage inside an entry block: the segment opens, lookups in that block fail, the others
/// succeed; iteration stops at the block; verify reports it.
#[test]
fn a_damaged_block_fails_only_its_lookups() {
    let (entries, good) = damage_fixture();
    let mut bad = good.clone();
    bad[2 * BLOCK + 100] ^= 0x01;
    let (seg, obj) = open(&bad).expect("the segment opens");
    for (i, e) in entries.iter().enumerate() {
        let r = seg.lookup(KEY, &obj, &e.id);
        if i / BLOCK_ENTRIES == 1 {
            assert_eq!(kind(r), CorruptKind::BodyChecksum, "entry {i}");
        } else {
            assert_eq!(r.expect("lookup"), Some(*e), "entry {i}");
        }
    }
    let read: Vec<_> = seg.iter(KEY, &obj).collect();
    assert_eq!(read.len(), BLOCK_ENTRIES + 1);
    assert!(read[..BLOCK_ENTRIES].iter().all(|e| e.is_ok()));
    let err = read
        .into_iter()
        .last()
        .expect("an error")
        .expect_err("damage");
    assert!(
        err.to_string().contains("index block 1 checksum mismatch"),
        "{err}"
    );
    assert_eq!(kind(seg.verify(KEY, &obj)), CorruptKind::BodyChecksum);
}

/// Blocks with valid checksums but content the format forbids are refused when read.
#[test]
fn hostile_blocks_are_refused() {
    let (entries, good) = damage_fixture();
    let Layout { fences_at, t, .. } = layout(&good);
    let row = |block: usize, i: usize| BLOCK * (1 + block) + i * ENTRY_LEN;
    let swap_rows = resealed(&good, |b| {
        let (a, c) = (row(0, 3), row(0, 4));
        let first = b[a..a + ENTRY_LEN].to_vec();
        b.copy_within(c..c + ENTRY_LEN, a);
        b[c..c + ENTRY_LEN].copy_from_slice(&first);
    });
    let slot_beyond = resealed(&good, |b| {
        let at = row(2, 5) + 32;
        b[at..at + 4].copy_from_slice(&(7u32 << 4).to_le_bytes());
    });
    let short_count = resealed(&good, |b| {
        let at = BLOCK + COUNT_AT;
        b[at..at + 2].copy_from_slice(&101u16.to_le_bytes());
    });
    let entries_beyond = resealed(&good, |b| {
        b[t + 8..t + 16].copy_from_slice(&251u64.to_le_bytes());
    });
    let fence_off = resealed(&good, |b| {
        let at = fences_at + 8;
        let f = u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes")) - 1;
        b[at..at + 8].copy_from_slice(&f.to_be_bytes());
    });
    use CorruptKind::*;
    let cases: [(Vec<u8>, usize, CorruptKind, &str); 5] = [
        (
            swap_rows,
            0,
            Entry,
            "index block 0: entry 4 is not above the one before",
        ),
        (
            slot_beyond,
            2,
            Entry,
            "index block 2: entry 5 names pack slot 7, beyond the 3",
        ),
        (
            short_count,
            0,
            Bounds,
            "index block 0 holds 101 entries, not 102",
        ),
        (
            entries_beyond,
            2,
            Bounds,
            "index block 2 holds 46 entries, not 47",
        ),
        (
            fence_off,
            1,
            Entry,
            "index block 1 holds ids outside its fences",
        ),
    ];
    for (i, (bytes, block, want_kind, want)) in cases.into_iter().enumerate() {
        let (seg, obj) = open(&bytes).expect("opens");
        let victim = entries[block * BLOCK_ENTRIES];
        let r = seg.lookup(KEY, &obj, &victim.id);
        let err = format!("{:?}", r.as_ref().err());
        assert!(err.contains(want), "case {i}: {err}");
        assert_eq!(kind(r), want_kind, "case {i}: {err}");
        assert_eq!(kind(seg.verify(KEY, &obj)), want_kind, "case {i}");
        let other = entries[((block + 1) % 3) * BLOCK_ENTRIES];
        if i != 3 {
            assert_eq!(
                seg.lookup(KEY, &obj, &other.id).expect("other"),
                Some(other)
            );
        }
    }
}

/// Ids sharing their first 8 bytes across a block boundary are found in either block; 103
/// such ids (a block starting where the one before did) are refused by writer and reader.
#[test]
fn shared_prefixes_across_blocks() {
    let with_prefix = |p: u64, i: u64| {
        let mut id = id_of(i);
        id[..8].copy_from_slice(&p.to_be_bytes());
        id
    };
    let mut entries: Vec<IndexEntry> = (0..250u64)
        .map(|i| IndexEntry {
            id: with_prefix(
                if (90..120).contains(&i) {
                    90 << 50
                } else {
                    i << 50
                },
                i,
            ),
            pack: pack(0),
            frame: i as u32,
            slot: 3,
        })
        .collect();
    sort_run(&mut entries);
    let good = encode(&entries).expect("encode");
    let (seg, obj) = open(&good).expect("open");
    assert_eq!(
        seg.fences[1],
        90 << 50,
        "block 1 starts inside the shared run"
    );
    assert_eq!(prefix(&entries[101].id), 90 << 50, "block 0 ends inside it");
    for e in &entries {
        assert_eq!(seg.lookup(KEY, &obj, &e.id).expect("lookup"), Some(*e));
    }
    let absent = with_prefix(90 << 50, 1000);
    assert_eq!(seg.lookup(KEY, &obj, &absent).expect("lookup"), None);

    let same: Vec<IndexEntry> = {
        let mut v: Vec<IndexEntry> = (0..103)
            .map(|i| IndexEntry {
                id: with_prefix(5, i),
                ..entries[0]
            })
            .collect();
        sort_run(&mut v);
        v
    };
    let err = encode(&same).expect_err("refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("more than 102 ids start with"),
        "{err}"
    );
    let Layout { fences_at, .. } = layout(&good);
    let equal = resealed(&good, |b| {
        b.copy_within(fences_at..fences_at + 8, fences_at + 8)
    });
    let r = open(&equal).map(|_| ());
    assert!(format!("{r:?}").contains("fence of block 1 is not above the one before"));
    assert_eq!(kind(r), CorruptKind::Entry);
}

/// Blocks each valid on their own and within their fences, but overlapping: block 0's last
/// id shares block 1's fence and sorts after block 1's first id. Iteration catches it.
#[test]
fn overlapping_blocks_are_caught_by_iteration() {
    let (entries, good) = damage_fixture();
    let Layout {
        fences_at,
        filter_at,
        ..
    } = layout(&good);
    let bad = resealed(&good, |b| {
        let last = BLOCK + (BLOCK_ENTRIES - 1) * ENTRY_LEN;
        b.copy_within(fences_at + 8..fences_at + 16, last);
        b[last + 8..last + 32].fill(0xff);
        let id: PageId = b[last..last + 32].try_into().expect("32 bytes");
        for (byte, mask) in filter_positions(&id, FILTER_LEN) {
            b[filter_at + byte] |= mask;
        }
    });
    let (seg, obj) = open(&bad).expect("opens");
    for e in entries.iter().skip(BLOCK_ENTRIES) {
        assert_eq!(seg.lookup(KEY, &obj, &e.id).expect("lookup"), Some(*e));
    }
    let r = seg.verify(KEY, &obj);
    let err = format!("{:?}", r.as_ref().err());
    assert!(
        err.contains("index block 1 starts at or below the end of block"),
        "{err}"
    );
    assert_eq!(kind(r), CorruptKind::Entry);
}

/// What open cannot see, verify finds: a filter missing ids, a listed pack no entry names.
#[test]
fn verify_checks_the_filter_and_the_pack_list() {
    let (entries, good) = damage_fixture();
    let Layout {
        fences_at,
        filter_at,
        t,
        ..
    } = layout(&good);
    let blank_filter = resealed(&good, |b| b[filter_at..filter_at + FILTER_LEN].fill(0));
    let (seg, obj) = open(&blank_filter).expect("opens");
    // A wrong filter only loses dedup: the lookup misses, it never returns a wrong entry.
    assert_eq!(seg.lookup(KEY, &obj, &entries[0].id).expect("lookup"), None);
    let r = seg.verify(KEY, &obj);
    assert!(format!("{r:?}").contains("the filter of block 0 does not hold id"));
    assert_eq!(kind(r), CorruptKind::Entry);

    let mut extra = good[..fences_at].to_vec();
    extra.extend_from_slice(pack(9).as_bytes());
    extra.extend_from_slice(&good[fences_at..]);
    let t = t + 16;
    extra[t + 20..t + 24].copy_from_slice(&4u32.to_le_bytes());
    extra[t + 32..t + 40].copy_from_slice(&(fences_at as u64 + 16).to_le_bytes());
    extra[t + 40..t + 48].copy_from_slice(&(filter_at as u64 + 16).to_le_bytes());
    reseal(&mut extra);
    let (seg, obj) = open(&extra).expect("opens");
    let r = seg.verify(KEY, &obj);
    assert!(format!("{r:?}").contains("is listed and no entry names it"));
    assert_eq!(kind(r), CorruptKind::Entry);
}
