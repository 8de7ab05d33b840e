//! Reading an index segment: [`Segment`] validates, when it opens one, the header, the trailer,
//! the pack list, the fences and the filter, and holds the last three in memory; it reads entry
//! blocks on demand, each checked when read.
//!
//! Invariants: every invariant of the format (listed in `index`) is checked before what it
//! guards is used: at open, the checksums, the counts and the section offsets against the
//! object's length, packs listed once and fences strictly increasing; on each block read, the
//! block's checksum, its entry count, its ids increasing, its pack slots listed and its ids
//! within its fences; on iteration, ids increasing across blocks; in [`Segment::verify`] (a full
//! read, for `check`), the filter holding every id and every listed pack named by an entry. A
//! lookup never returns another id's entry: a damaged block fails only the lookups that read it.
//!
//! Memory: an open [`Segment`] holds the pack list, the fences and the filter: ≈ 1.5 bytes per
//! entry (23 MiB for 16 M entries).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use crate::store::le;
use crate::store::page::PageId;
use crate::store::storage::Object;
use crate::store::{Corrupt, CorruptKind};
use uuid::Uuid;

use super::entry::{
    BLOCK, BLOCK_CRC_AT, BLOCK_ENTRIES, COUNT_AT, ENTRY_LEN, FENCE_LEN, HEADER_LEN, HEADER_MAGIC,
    IndexEntry, MAX_PACKS, PACK_LEN, SegmentError, TRAILER_LEN, TRAILER_MAGIC, VERSION, hex8,
    prefix,
};
use super::filter::{MAX_FILTER_LEN, filter_positions};

/// A published segment, validated: its counts, pack list, fences and filter, held in memory.
/// Entry blocks are read on demand, each checked when read.
#[derive(Debug, Clone)]
pub struct Segment {
    entries: u64,
    blocks: usize,
    filter_len: usize,
    packs: Vec<Uuid>,
    pub(super) fences: Vec<u64>,
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
