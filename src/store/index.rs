//! Dedup index segments: where the page with a given id is stored, for every page of the store,
//! as immutable sorted files `index/<segment>.idx` (an LSM without a memtable: a creation writes
//! its new pages as one segment, compaction merges segments into one).
//!
//! ```text
//! offset              size        field
//! 0                   64          header: magic "RPFSINDX", version u16, filter bytes per block
//!                                 u16 (F), reserved (48 zero bytes), crc32c of bytes 0..60
//! 64                  4032        zero padding, not read: entry blocks start 4 KiB-aligned
//! 4096 * (1 + b)      4096        entry block b: up to 102 entries of 40 bytes, sorted by id;
//!                                 unused entries and bytes 4080..4090 zero; entry count u16 at
//!                                 4090; crc32c of bytes 0..4092 at 4092
//!   entry             40          page id (32 bytes), ref u32 = pack slot << 4 | page slot,
//!                                 frame u32
//! packs_at            16 * P      pack list: the pack UUIDs entries name by pack slot, in order
//!                                 of first use
//! fences_at           8 * B       fences: the first 8 bytes of the first id of each block
//! filter_at           F * B       filter: one Bloom filter of F bytes per block (below)
//! len - 64            64          trailer: magic "RPFSIEND", entry count u64, block count u32 (B),
//!                                 pack count u32 (P), packs_at u64, fences_at u64, filter_at u64,
//!                                 crc32c of the pack list u32, of the fences u32, of the filter
//!                                 u32, crc32c of trailer bytes 0..60
//! ```
//!
//! All integers are little-endian. The magics are "RPFS" + "INDX"/"IEND", so a hexdump names the
//! file. Counts live in the trailer because a segment is written streaming, in one pass.
//!
//! Invariants, all checked by the reader:
//! - ids are strictly increasing through the whole segment (sorted, unique), so a block holds a
//!   contiguous id range; fences strictly increase too (the writer refuses 103 ids sharing their
//!   first 64 bits, which BLAKE3 ids never do), so a lookup reads at most two blocks;
//! - every block but the last holds exactly 102 entries, the last holds 1..=102, and
//!   B = ceil(entries / 102): entry `i` is in block `i / 102`;
//! - a block's first id starts with its fence, and its last id's 8 first bytes are at most the
//!   next block's fence;
//! - every pack slot names a listed pack, every page slot is below 16 (a frame has 16 pages),
//!   P ≤ 2^28 and P ≤ entries (the writer lists only packs it uses), and no pack is listed twice;
//! - the sections are contiguous, in the order above, and end where the trailer starts: the
//!   offsets in the trailer equal what the counts imply, and both fit the object's length.
//!
//! **The filter.** Each block has its own Bloom filter of F bytes (the writer uses F = 144, 11.3
//! bits per entry of a full block) with 8 bits per id. Ids are BLAKE3 hashes (keyed in encrypted
//! stores), so the bits come from the id itself: bytes 8..24, as eight u16, each scaled to
//! `F * 8` positions. Every block but the last holds exactly 102 ids, so the false-positive rate
//! is that of a 1,152-bit Bloom filter of 102 keys, (1 - (1 - 1/1152)^816)^8 ≈ 0.45% (0.43% and
//! 0.49% measured). Lookups search the fences first (in memory), then test that block's filter,
//! then read one 4 KiB block. Per-block filters keep the writer streaming (a whole-segment
//! filter must be sized, or built, from every key at once) and let the filter size change
//! without a version bump (F is in the header). A filter missing an id (damage the checksum
//! missed) only loses a dedup: a lookup never returns another id's entry. `Segment::verify`
//! checks the filter, and what else only a full read can, for `check`.
//!
//! A segment is written once and never modified. Per the design (§2.4), it is published only
//! after the point record whose pages it indexes, and compaction removes its inputs only after
//! publishing its output.
//!
//! `xorf`'s `BinaryFuse8` (≈9 bits per key, 0.39%) was vetted and not taken: its construction
//! holds every key plus ~25 bytes of work space per key (GiBs for a large compaction), it can
//! fail and need a fallback, its `contains` panics (index and u32 overflow) on a descriptor read
//! from a damaged file unless every internal invariant is re-checked, and a stored filter would
//! depend on the crate's private hash mixing staying the same across its releases.
//!
//! Memory: an open [`Segment`] holds the pack list, the fences and the filter: ≈ 1.5 bytes per
//! entry (23 MiB for 16 M entries). [`SegmentWriter`] holds the same while writing, plus one
//! block; nothing per entry.

#![warn(clippy::arithmetic_side_effects)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Write};
use std::ops::Range;
use std::sync::Arc;

use super::le;
use super::page::{MAX_FRAME_PAGES, PageId};
use super::storage::{Object, ObjectWriter};
use super::{Corrupt, CorruptKind};
use uuid::Uuid;

/// Format version of index segments written by this build.
pub const VERSION: u16 = 1;
const HEADER_MAGIC: &[u8; 8] = b"RPFSINDX";
const TRAILER_MAGIC: &[u8; 8] = b"RPFSIEND";
/// Size of the fixed header (the first block holds it and zero padding).
pub const HEADER_LEN: usize = 64;
/// Size of an entry block, and where the first one starts.
pub const BLOCK: usize = 4096;
/// Size of one entry.
pub const ENTRY_LEN: usize = 40;
/// Entries in every block but the last.
pub const BLOCK_ENTRIES: usize = 102;
/// Where a block keeps its entry count (u16) and its crc32c (u32).
const COUNT_AT: usize = 4090;
const BLOCK_CRC_AT: usize = 4092;
/// Size of one pack list entry and of one fence.
pub const PACK_LEN: usize = 16;
pub const FENCE_LEN: usize = 8;
/// Size of the fixed trailer.
pub const TRAILER_LEN: usize = 64;
/// Filter bytes per block this build writes: 11.3 bits per entry of a full block, 0.44% false
/// positives.
pub const FILTER_LEN: usize = 144;
/// Largest filter per block a reader accepts: positions are a u16 scaled to the filter's bits.
const MAX_FILTER_LEN: usize = 8192;
/// Bits each id sets in its block's filter.
const FILTER_HASHES: usize = 8;
/// Most packs a segment lists: pack slots are 28 bits.
pub const MAX_PACKS: u32 = 1 << 28;
/// A segment being written starts writeback every this many bytes (see `start_writeback`).
const WRITEBACK_EVERY: u64 = 32 << 20;

const _: () = assert!(HEADER_LEN == 8 + 2 + 2 + 48 + 4);
const _: () = assert!(ENTRY_LEN == 32 + 4 + 4);
const _: () = assert!(BLOCK_ENTRIES * ENTRY_LEN <= COUNT_AT && COUNT_AT + 2 == BLOCK_CRC_AT);
const _: () = assert!(BLOCK_CRC_AT + 4 == BLOCK);
const _: () = assert!(TRAILER_LEN == 8 + 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + 4);
const _: () = assert!(FILTER_LEN <= MAX_FILTER_LEN && MAX_FILTER_LEN * 8 <= 1 << 16);
const _: () = assert!(8 + 2 * FILTER_HASHES <= 32);
const _: () = assert!(MAX_FRAME_PAGES == 16);

/// Where the page with id `id` is stored: page `slot` of frame `frame` of pack `pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    pub id: PageId,
    pub pack: Uuid,
    pub frame: u32,
    pub slot: u8,
}

/// What a published segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub entries: u64,
    pub packs: u32,
    /// Length of the object in bytes.
    pub len: u64,
}

/// Failure to read a segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{key}: {source}")]
    Io { key: String, source: io::Error },
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl SegmentError {
    /// The kind of damage, when the segment is damaged rather than unreadable.
    pub fn corrupt_kind(&self) -> Option<CorruptKind> {
        match self {
            SegmentError::Io { .. } => None,
            SegmentError::Corrupt(c) => Some(c.kind),
        }
    }
}

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, detail)
}

fn hex8(id: &PageId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The fence of an id: its first 8 bytes as a number that orders as the ids do.
fn prefix(id: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&id[..8]);
    u64::from_be_bytes(a)
}

/// The `FILTER_HASHES` (byte, bit mask) positions of `id` in a block filter of `len` bytes.
fn filter_positions(id: &PageId, len: usize) -> impl Iterator<Item = (usize, u8)> {
    let bits = len.saturating_mul(8);
    let (pairs, _) = id[8..].as_chunks::<2>();
    pairs.iter().take(FILTER_HASHES).map(move |p| {
        // A u16 times at most 65,536 bits fits a usize; the shift keeps it below `bits`.
        let pos = usize::from(u16::from_le_bytes(*p)).saturating_mul(bits) >> 16;
        (pos / 8, 1u8 << (pos % 8))
    })
}

/// Writes one segment, streaming: entries must come sorted by id with unique ids.
pub struct SegmentWriter {
    out: Box<dyn ObjectWriter>,
    /// The block being filled.
    block: Vec<u8>,
    in_block: usize,
    entries: u64,
    last: Option<PageId>,
    packs: Vec<Uuid>,
    slots: HashMap<Uuid, u32>,
    fences: Vec<u8>,
    filter: Vec<u8>,
    pos: u64,
}

impl SegmentWriter {
    /// Starts a segment: writes its header.
    pub fn new(mut out: Box<dyn ObjectWriter>) -> io::Result<SegmentWriter> {
        let mut h = vec![0u8; BLOCK];
        h[0..8].copy_from_slice(HEADER_MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&(FILTER_LEN as u16).to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&h)?;
        Ok(SegmentWriter {
            out,
            block: vec![0u8; BLOCK],
            in_block: 0,
            entries: 0,
            last: None,
            packs: Vec::new(),
            slots: HashMap::new(),
            fences: Vec::new(),
            filter: Vec::new(),
            pos: BLOCK as u64,
        })
    }

    /// Appends one entry; its id must be greater than the previous one's, its page slot below
    /// 16 (`InvalidInput` otherwise). After an error, drop the writer: nothing is published.
    pub fn push(&mut self, e: IndexEntry) -> io::Result<()> {
        if self.last.is_some_and(|l| l >= e.id) {
            return Err(invalid(format!(
                "index entries out of order or repeated at id {}…",
                hex8(&e.id)
            )));
        }
        if usize::from(e.slot) >= MAX_FRAME_PAGES {
            return Err(invalid(format!("page slot {} is not below 16", e.slot)));
        }
        if self.in_block == 0 {
            if self.fences.len() / FENCE_LEN >= u32::MAX as usize {
                return Err(invalid("more than 2^32 index blocks".into()));
            }
            // Fences strictly increase, so a lookup reads at most two blocks. Only 103 ids
            // sharing their first 64 bits could break this: never, for BLAKE3 ids.
            if self.fences.ends_with(&e.id[..FENCE_LEN]) {
                return Err(invalid(format!(
                    "more than {BLOCK_ENTRIES} ids start with {}",
                    hex8(&e.id)
                )));
            }
        }
        let pack_slot = match self.slots.get(&e.pack) {
            Some(&s) => s,
            None => {
                let s = u32::try_from(self.packs.len())
                    .ok()
                    .filter(|&s| s < MAX_PACKS)
                    .ok_or_else(|| invalid(format!("more than {MAX_PACKS} packs")))?;
                self.slots.insert(e.pack, s);
                self.packs.push(e.pack);
                s
            }
        };
        if self.in_block == 0 {
            self.fences.extend_from_slice(&e.id[..FENCE_LEN]);
            self.filter
                .resize(self.filter.len().saturating_add(FILTER_LEN), 0);
        }
        let (rows, _) = self.block[..BLOCK_ENTRIES * ENTRY_LEN].as_chunks_mut::<ENTRY_LEN>();
        let row = &mut rows[self.in_block];
        row[0..32].copy_from_slice(&e.id);
        // `pack_slot` < 2^28 and `e.slot` < 16 (both checked above).
        let r = pack_slot << 4 | u32::from(e.slot);
        row[32..36].copy_from_slice(&r.to_le_bytes());
        row[36..40].copy_from_slice(&e.frame.to_le_bytes());
        let at = self.filter.len().saturating_sub(FILTER_LEN);
        let bits = &mut self.filter[at..];
        for (byte, mask) in filter_positions(&e.id, FILTER_LEN) {
            bits[byte] |= mask;
        }
        self.in_block = self.in_block.saturating_add(1);
        self.entries = self.entries.saturating_add(1);
        self.last = Some(e.id);
        if self.in_block == BLOCK_ENTRIES {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        // `in_block` ≤ 102.
        let count = self.in_block as u16;
        self.block[COUNT_AT..BLOCK_CRC_AT].copy_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c(&self.block[..BLOCK_CRC_AT]);
        self.block[BLOCK_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        write_counted(&mut *self.out, &mut self.pos, &self.block)?;
        self.block.fill(0);
        self.in_block = 0;
        Ok(())
    }

    /// Number of entries pushed so far.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// True when no entry was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Writes the last block, the pack list, fences, filter and trailer, and publishes the
    /// segment.
    pub fn finish(mut self) -> io::Result<SegmentInfo> {
        if self.in_block > 0 {
            self.flush_block()?;
        }
        let mut packs = Vec::with_capacity(self.packs.len().saturating_mul(PACK_LEN));
        for p in &self.packs {
            packs.extend_from_slice(p.as_bytes());
        }
        let blocks = u32::try_from(self.fences.len() / FENCE_LEN)
            .map_err(|_| invalid("more than 2^32 index blocks".into()))?;
        // Bounded by MAX_PACKS when pushed.
        let pack_count = self.packs.len() as u32;
        let packs_at = self.pos;
        let fences_at = packs_at.saturating_add(packs.len() as u64);
        let filter_at = fences_at.saturating_add(self.fences.len() as u64);
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.entries.to_le_bytes());
        t[16..20].copy_from_slice(&blocks.to_le_bytes());
        t[20..24].copy_from_slice(&pack_count.to_le_bytes());
        t[24..32].copy_from_slice(&packs_at.to_le_bytes());
        t[32..40].copy_from_slice(&fences_at.to_le_bytes());
        t[40..48].copy_from_slice(&filter_at.to_le_bytes());
        t[48..52].copy_from_slice(&crc32c::crc32c(&packs).to_le_bytes());
        t[52..56].copy_from_slice(&crc32c::crc32c(&self.fences).to_le_bytes());
        t[56..60].copy_from_slice(&crc32c::crc32c(&self.filter).to_le_bytes());
        let crc = crc32c::crc32c(&t[..60]);
        t[60..64].copy_from_slice(&crc.to_le_bytes());
        let (fences, filter) = (
            std::mem::take(&mut self.fences),
            std::mem::take(&mut self.filter),
        );
        for bytes in [&packs[..], &fences, &filter, &t] {
            write_counted(&mut *self.out, &mut self.pos, bytes)?;
        }
        let len = self.out.commit()?;
        Ok(SegmentInfo {
            entries: self.entries,
            packs: pack_count,
            len,
        })
    }
}

/// Writes `bytes` at `pos` of `out` and moves `pos` on, starting writeback every
/// `WRITEBACK_EVERY` bytes.
fn write_counted(out: &mut dyn ObjectWriter, pos: &mut u64, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    let end = pos.saturating_add(bytes.len() as u64);
    if *pos / WRITEBACK_EVERY != end / WRITEBACK_EVERY {
        out.start_writeback()?;
    }
    *pos = end;
    Ok(())
}

/// Writes a segment of `entries` (sorted by id, ids unique: `InvalidInput` otherwise) to `out`
/// and publishes it. A failure publishes nothing.
pub fn write_segment(
    out: Box<dyn ObjectWriter>,
    entries: impl IntoIterator<Item = IndexEntry>,
) -> io::Result<SegmentInfo> {
    let mut w = SegmentWriter::new(out)?;
    for e in entries {
        w.push(e)?;
    }
    w.finish()
}

/// A published segment, validated: its counts, pack list, fences and filter, held in memory.
/// Entry blocks are read on demand, each checked when read.
#[derive(Debug, Clone)]
pub struct Segment {
    entries: u64,
    blocks: usize,
    filter_len: usize,
    packs: Vec<Uuid>,
    fences: Vec<u64>,
    filter: Vec<u8>,
}

impl Segment {
    /// Reads and validates the header, trailer, pack list, fences and filter of `obj` (named
    /// `key` in errors).
    pub fn open(key: &str, obj: &dyn Object) -> Result<Segment, SegmentError> {
        let corrupt = |kind: CorruptKind, detail: String| {
            SegmentError::Corrupt(Corrupt::new(key, kind, detail))
        };
        let io = |source| SegmentError::Io {
            key: key.to_string(),
            source,
        };
        use CorruptKind::*;
        let len = obj.len();
        if len < (BLOCK + TRAILER_LEN) as u64 {
            return Err(corrupt(
                Length,
                format!("index segment is {len} bytes, shorter than header and trailer"),
            ));
        }
        let mut h = [0u8; HEADER_LEN];
        obj.read_exact_at(&mut h, 0).map_err(io)?;
        if crc32c::crc32c(&h[..60]) != le::u32_at(&h, 60) {
            return Err(corrupt(
                HeaderChecksum,
                "index segment header checksum mismatch".into(),
            ));
        }
        if &h[0..8] != HEADER_MAGIC {
            return Err(corrupt(Magic, "bad index segment magic".into()));
        }
        let version = le::u16_at(&h, 8);
        if version != VERSION {
            return Err(corrupt(
                Version,
                format!("unsupported index segment version {version}"),
            ));
        }
        let filter_len = usize::from(le::u16_at(&h, 10));
        if !(1..=MAX_FILTER_LEN).contains(&filter_len) {
            return Err(corrupt(
                Bounds,
                format!("filter of {filter_len} bytes per block, outside 1..={MAX_FILTER_LEN}"),
            ));
        }
        let mut t = [0u8; TRAILER_LEN];
        // `len` holds at least the first block and a trailer (checked above).
        obj.read_exact_at(&mut t, len.saturating_sub(TRAILER_LEN as u64))
            .map_err(io)?;
        if crc32c::crc32c(&t[..60]) != le::u32_at(&t, 60) {
            return Err(corrupt(
                TrailerChecksum,
                "index segment trailer checksum mismatch".into(),
            ));
        }
        if &t[0..8] != TRAILER_MAGIC {
            return Err(corrupt(Magic, "bad index segment trailer magic".into()));
        }
        let entries = le::u64_at(&t, 8);
        let blocks = le::u32_at(&t, 16);
        let pack_count = le::u32_at(&t, 20);
        let offsets = [le::u64_at(&t, 24), le::u64_at(&t, 32), le::u64_at(&t, 40)];
        if u64::from(blocks) != entries.div_ceil(BLOCK_ENTRIES as u64)
            || pack_count > MAX_PACKS
            || u64::from(pack_count) > entries
        {
            return Err(corrupt(
                Bounds,
                format!(
                    "{entries} entries, {blocks} blocks and {pack_count} packs do not agree \
                     (102 entries a block, at most one pack per entry and {MAX_PACKS} packs)"
                ),
            ));
        }
        // Where each section must start, from the counts; `None` on overflow.
        let b = u64::from(blocks);
        let packs_at = b.checked_add(1).and_then(|n| n.checked_mul(BLOCK as u64));
        let fences_at = packs_at
            .and_then(|at| at.checked_add(u64::from(pack_count).checked_mul(PACK_LEN as u64)?));
        let filter_at = fences_at.and_then(|at| at.checked_add(b.checked_mul(FENCE_LEN as u64)?));
        let filter_bytes = b.checked_mul(filter_len as u64);
        let end = filter_at
            .zip(filter_bytes)
            .and_then(|(at, n)| at.checked_add(n)?.checked_add(TRAILER_LEN as u64));
        let (Some(packs_at), Some(fences_at), Some(filter_at), Some(filter_bytes), Some(end)) =
            (packs_at, fences_at, filter_at, filter_bytes, end)
        else {
            return Err(corrupt(
                Bounds,
                format!("{blocks} blocks and {pack_count} packs overflow a file length"),
            ));
        };
        if end != len {
            return Err(corrupt(
                Bounds,
                format!(
                    "{entries} entries in {blocks} blocks and {pack_count} packs need a \
                     {end}-byte segment, not {len} bytes"
                ),
            ));
        }
        if offsets != [packs_at, fences_at, filter_at] {
            return Err(corrupt(
                Bounds,
                format!(
                    "sections at {offsets:?}, not where the counts put them \
                     ({packs_at}, {fences_at}, {filter_at})"
                ),
            ));
        }
        // All three sections lie inside the object (checked above): their sizes fit a usize
        // wherever the object could be read at all; refuse rather than truncate where not.
        let size =
            |n: u64| usize::try_from(n).map_err(|_| corrupt(Bounds, format!("a {n}-byte section")));
        let mut lists = vec![0u8; size(filter_at.saturating_sub(packs_at))?];
        obj.read_exact_at(&mut lists, packs_at).map_err(io)?;
        let mut filter = vec![0u8; size(filter_bytes)?];
        obj.read_exact_at(&mut filter, filter_at).map_err(io)?;
        let (packs_raw, fences_raw) = lists.split_at(size(fences_at.saturating_sub(packs_at))?);
        for (name, bytes, at) in [
            ("pack list", packs_raw, 48),
            ("fences", fences_raw, 52),
            ("filter", &filter[..], 56),
        ] {
            if crc32c::crc32c(bytes) != le::u32_at(&t, at) {
                return Err(corrupt(
                    TableChecksum,
                    format!("index segment {name} checksum mismatch"),
                ));
            }
        }
        let (uuids, _) = packs_raw.as_chunks::<PACK_LEN>();
        let packs: Vec<Uuid> = uuids.iter().map(|u| Uuid::from_bytes(*u)).collect();
        let mut sorted = packs.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(corrupt(Entry, format!("pack {} is listed twice", w[0])));
        }
        let (fence_rows, _) = fences_raw.as_chunks::<FENCE_LEN>();
        let fences: Vec<u64> = fence_rows.iter().map(|f| u64::from_be_bytes(*f)).collect();
        if let Some(i) = fences.windows(2).position(|w| w[0] >= w[1]) {
            return Err(corrupt(
                Entry,
                format!(
                    "fence of block {} is not above the one before",
                    i.saturating_add(1)
                ),
            ));
        }
        Ok(Segment {
            entries,
            blocks: fences.len(),
            filter_len,
            packs,
            fences,
            filter,
        })
    }

    /// Number of entries.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The packs the entries name.
    pub fn packs(&self) -> &[Uuid] {
        &self.packs
    }

    /// The blocks that may hold `id`: the last block whose fence is below `id`'s first 8 bytes,
    /// and the next one if its fence equals them (ids sharing a prefix may end one block and
    /// start the next). Fences strictly increase, so at most two.
    fn candidates(&self, id: &PageId) -> Range<usize> {
        let p = prefix(id);
        let first_not_below = self.fences.partition_point(|&f| f < p);
        let equal = self.fences.get(first_not_below) == Some(&p);
        first_not_below.saturating_sub(1)..first_not_below.saturating_add(usize::from(equal))
    }

    /// True when the filter of block `b` may hold `id`.
    fn block_may_contain(&self, b: usize, id: &PageId) -> bool {
        let at = b.saturating_mul(self.filter_len);
        let Some(bits) = self.filter.get(at..at.saturating_add(self.filter_len)) else {
            return false;
        };
        filter_positions(id, self.filter_len).all(|(byte, mask)| bits[byte] & mask != 0)
    }

    /// False when `id` is surely not in the segment; true when it may be (a false positive
    /// costs one block read in [`Segment::lookup`]).
    pub fn may_contain(&self, id: &PageId) -> bool {
        self.candidates(id).any(|b| self.block_may_contain(b, id))
    }

    /// The entry for `id`, if the segment holds one: fences, then filter, then one block read
    /// (rarely more, see `candidates`).
    pub fn lookup(
        &self,
        key: &str,
        obj: &dyn Object,
        id: &PageId,
    ) -> Result<Option<IndexEntry>, SegmentError> {
        self.lookup_via(key, id, |b| self.block_rows(key, obj, b))
    }

    /// All entries in id order, read block by block; stops after the first error.
    pub fn iter<'a>(
        &'a self,
        key: &'a str,
        obj: &'a dyn Object,
    ) -> impl Iterator<Item = Result<IndexEntry, SegmentError>> + 'a {
        Entries {
            segment: self,
            key,
            obj,
            next_block: 0,
            buf: Box::new([0u8; BLOCK]),
            pos: 0,
            count: 0,
            last: None,
            failed: false,
        }
    }

    /// Reads every block and checks what opening could not: ids strictly increasing across
    /// blocks, the filter holding every id, every listed pack used. Returns the entry count.
    pub fn verify(&self, key: &str, obj: &dyn Object) -> Result<u64, SegmentError> {
        let corrupt = |detail: String| Corrupt::new(key, CorruptKind::Entry, detail);
        let slots: HashMap<Uuid, usize> = self
            .packs
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i))
            .collect();
        let mut used = vec![false; self.packs.len()];
        let mut seen = 0u64;
        for (i, e) in self.iter(key, obj).enumerate() {
            let e = e?;
            let block = i / BLOCK_ENTRIES;
            if !self.block_may_contain(block, &e.id) {
                return Err(corrupt(format!(
                    "the filter of block {block} does not hold id {}…",
                    hex8(&e.id)
                ))
                .into());
            }
            if let Some(&slot) = slots.get(&e.pack) {
                used[slot] = true;
            }
            seen = seen.saturating_add(1);
        }
        if seen != self.entries {
            return Err(corrupt(format!("{seen} entries read, {} expected", self.entries)).into());
        }
        if let Some(slot) = used.iter().position(|u| !u) {
            return Err(corrupt(format!(
                "pack {} is listed and no entry names it",
                self.packs[slot]
            ))
            .into());
        }
        Ok(seen)
    }

    /// Entries block `b` holds by the counts: 102, or what is left for the last block.
    /// Like [`Segment::lookup`], with each block's validated rows got through `rows` (a cache
    /// in front of [`Segment::block_rows`]).
    pub fn lookup_via(
        &self,
        key: &str,
        id: &PageId,
        mut rows: impl FnMut(usize) -> Result<Arc<[[u8; ENTRY_LEN]]>, SegmentError>,
    ) -> Result<Option<IndexEntry>, SegmentError> {
        for b in self.candidates(id) {
            if !self.block_may_contain(b, id) {
                continue;
            }
            let rows = rows(b)?;
            if let Ok(i) = rows.binary_search_by(|r| r[..32].cmp(id)) {
                return self.decode(key, &rows[i]).map(Some);
            }
        }
        Ok(None)
    }

    /// The rows of block `b`, read and validated (see [`Segment::lookup_via`]).
    pub fn block_rows(
        &self,
        key: &str,
        obj: &dyn Object,
        b: usize,
    ) -> Result<Arc<[[u8; ENTRY_LEN]]>, SegmentError> {
        let mut buf = [0u8; BLOCK];
        let count = self.read_block(key, obj, b, &mut buf)?;
        let (rows, _) = buf[..BLOCK_ENTRIES * ENTRY_LEN].as_chunks::<ENTRY_LEN>();
        Ok(Arc::from(&rows[..count]))
    }

    fn expected_count(&self, b: usize) -> u64 {
        let before = (b as u64).saturating_mul(BLOCK_ENTRIES as u64);
        self.entries
            .saturating_sub(before)
            .min(BLOCK_ENTRIES as u64)
    }

    /// Reads block `b` into `buf` and validates it; returns its entry count.
    fn read_block(
        &self,
        key: &str,
        obj: &dyn Object,
        b: usize,
        buf: &mut [u8; BLOCK],
    ) -> Result<usize, SegmentError> {
        let corrupt = |kind: CorruptKind, detail: String| {
            SegmentError::Corrupt(Corrupt::new(key, kind, detail))
        };
        // b < blocks ≤ u32::MAX, and the blocks fit the object (checked at open).
        let at = (b as u64).saturating_add(1).saturating_mul(BLOCK as u64);
        obj.read_exact_at(buf, at)
            .map_err(|source| SegmentError::Io {
                key: key.to_string(),
                source,
            })?;
        if crc32c::crc32c(&buf[..BLOCK_CRC_AT]) != le::u32_at(buf, BLOCK_CRC_AT) {
            return Err(corrupt(
                CorruptKind::BodyChecksum,
                format!("index block {b} checksum mismatch"),
            ));
        }
        let count = le::u16_at(buf, COUNT_AT);
        if u64::from(count) != self.expected_count(b) {
            return Err(corrupt(
                CorruptKind::Bounds,
                format!(
                    "index block {b} holds {count} entries, not {}",
                    self.expected_count(b)
                ),
            ));
        }
        let count = usize::from(count);
        let (rows, _) = buf[..BLOCK_ENTRIES * ENTRY_LEN].as_chunks::<ENTRY_LEN>();
        let rows = &rows[..count];
        let entry_err = |detail: String| corrupt(CorruptKind::Entry, detail);
        if let Some(i) = rows.windows(2).position(|w| w[0][..32] >= w[1][..32]) {
            return Err(entry_err(format!(
                "index block {b}: entry {} is not above the one before",
                i.saturating_add(1)
            )));
        }
        if let Some(i) = rows
            .iter()
            .position(|r| (le::u32_at(r, 32) >> 4) as usize >= self.packs.len())
        {
            return Err(entry_err(format!(
                "index block {b}: entry {i} names pack slot {}, beyond the {} listed",
                le::u32_at(&rows[i], 32) >> 4,
                self.packs.len()
            )));
        }
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            // expected_count is at least 1 for every block: a block is only written with entries.
            return Err(entry_err(format!("index block {b} is empty")));
        };
        let fence_ok = self.fences.get(b) == Some(&prefix(first))
            && self
                .fences
                .get(b.saturating_add(1))
                .is_none_or(|&next| prefix(last) <= next);
        if !fence_ok {
            return Err(entry_err(format!(
                "index block {b} holds ids outside its fences"
            )));
        }
        Ok(count)
    }

    /// The entry of a row of a block `read_block` validated.
    fn decode(&self, key: &str, row: &[u8; ENTRY_LEN]) -> Result<IndexEntry, SegmentError> {
        let r = le::u32_at(row, 32);
        let pack = *self.packs.get((r >> 4) as usize).ok_or_else(|| {
            // read_block refuses blocks naming a slot beyond the list.
            Corrupt::new(key, CorruptKind::Entry, "pack slot beyond the list")
        })?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&row[..32]);
        Ok(IndexEntry {
            id,
            pack,
            frame: le::u32_at(row, 36),
            slot: (r & 0xf) as u8,
        })
    }
}

/// The entries of a segment, block by block; see [`Segment::iter`].
struct Entries<'a> {
    segment: &'a Segment,
    key: &'a str,
    obj: &'a dyn Object,
    next_block: usize,
    buf: Box<[u8; BLOCK]>,
    pos: usize,
    count: usize,
    last: Option<PageId>,
    failed: bool,
}

impl Entries<'_> {
    fn next_entry(&mut self) -> Option<Result<IndexEntry, SegmentError>> {
        if self.pos == self.count {
            if self.next_block >= self.segment.blocks {
                return None;
            }
            let b = self.next_block;
            match self
                .segment
                .read_block(self.key, self.obj, b, &mut self.buf)
            {
                Ok(count) => self.count = count,
                Err(e) => return Some(Err(e)),
            }
            self.pos = 0;
            self.next_block = b.saturating_add(1);
            let first = &self.buf[..32];
            if self.last.is_some_and(|l| l[..] >= *first) {
                let detail = format!("index block {b} starts at or below the end of block before");
                return Some(Err(
                    Corrupt::new(self.key, CorruptKind::Entry, detail).into()
                ));
            }
        }
        let (rows, _) = self.buf[..BLOCK_ENTRIES * ENTRY_LEN].as_chunks::<ENTRY_LEN>();
        let e = self.segment.decode(self.key, &rows[self.pos]);
        self.pos = self.pos.saturating_add(1);
        if let Ok(e) = &e {
            self.last = Some(e.id);
        }
        Some(e)
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<IndexEntry, SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.next_entry();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}

/// Sorts an in-memory run by id and drops repeated ids, keeping the first of each (for a
/// creation's new pages).
pub fn sort_run(entries: &mut Vec<IndexEntry>) {
    // Stable, so the first of equal ids stays first; `dedup_by` keeps the first of a run.
    entries.sort_by_key(|e| e.id);
    entries.dedup_by(|later, first| later.id == first.id);
}

/// K-way merge of sorted entry streams (ids unique within each, as [`Segment::iter`] and
/// [`sort_run`] give them; an unsorted input makes an unsorted output, which
/// [`SegmentWriter::push`] refuses) into one sorted stream with unique ids. `keep` drops entries first (e.g. whose pack is gone), so a dropped entry does
/// not hide another input's entry for the same id; of the kept entries for one id, the one from
/// the earliest input wins. The first error from an input is passed on and ends the stream.
pub fn merge<E, I>(
    inputs: Vec<I>,
    keep: impl FnMut(&IndexEntry) -> bool,
) -> impl Iterator<Item = Result<IndexEntry, E>>
where
    I: Iterator<Item = Result<IndexEntry, E>>,
{
    Merge {
        heads: (0..inputs.len()).map(|_| None).collect(),
        inputs,
        heap: BinaryHeap::new(),
        keep,
        started: false,
        done: false,
    }
}

struct Merge<I, K> {
    inputs: Vec<I>,
    /// The next kept entry of each input, if any.
    heads: Vec<Option<IndexEntry>>,
    /// (id, input) of every head, smallest first: among equal ids, the earliest input first.
    heap: BinaryHeap<Reverse<(PageId, usize)>>,
    keep: K,
    started: bool,
    done: bool,
}

impl<E, I, K> Merge<I, K>
where
    I: Iterator<Item = Result<IndexEntry, E>>,
    K: FnMut(&IndexEntry) -> bool,
{
    /// Moves input `i` to its next kept entry.
    fn advance(&mut self, i: usize) -> Result<(), E> {
        for e in self.inputs[i].by_ref() {
            let e = e?;
            if (self.keep)(&e) {
                self.heap.push(Reverse((e.id, i)));
                self.heads[i] = Some(e);
                return Ok(());
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<IndexEntry>, E> {
        if !self.started {
            self.started = true;
            for i in 0..self.inputs.len() {
                self.advance(i)?;
            }
        }
        let Some(Reverse((id, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let winner = self.heads[i].take();
        self.advance(i)?;
        while let Some(Reverse((next, j))) = self.heap.peek().copied()
            && next == id
        {
            self.heap.pop();
            self.heads[j] = None;
            self.advance(j)?;
        }
        Ok(winner)
    }
}

impl<E, I, K> Iterator for Merge<I, K>
where
    I: Iterator<Item = Result<IndexEntry, E>>,
    K: FnMut(&IndexEntry) -> bool,
{
    type Item = Result<IndexEntry, E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Makes every checksum of a segment right again after `bytes` were edited (tests and fuzzing:
/// so damage reaches the checks behind the checksums). Offsets are taken from the trailer and
/// clamped to the file; a file too short for a header and a trailer is left as it is.
#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::arithmetic_side_effects,
    reason = "offsets are clamped to the file, whose length is at least a block and a trailer"
)]
pub fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    if n < BLOCK + TRAILER_LEN {
        return;
    }
    let crc = crc32c::crc32c(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    let t = n - TRAILER_LEN;
    let at = |field: usize| usize::try_from(le::u64_at(bytes, t + field)).map_or(t, |v| v.min(t));
    let (packs_at, fences_at, filter_at) = (at(24), at(32), at(40));
    let blocks_end = packs_at.max(BLOCK).min(t);
    for block in bytes[BLOCK..blocks_end].chunks_exact_mut(BLOCK) {
        let crc = crc32c::crc32c(&block[..BLOCK_CRC_AT]);
        block[BLOCK_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }
    let sections = [
        (packs_at, fences_at, 48),
        (fences_at, filter_at, 52),
        (filter_at, t, 56),
    ];
    for (from, to, field) in sections {
        let crc = crc32c::crc32c(&bytes[from.min(to)..to]);
        bytes[t + field..t + field + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes[t..t + 60]);
    bytes[t + 60..].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::arithmetic_side_effects,
        reason = "tests compute offsets into the small files they build"
    )]

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;

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
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/index_segment");
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
}
