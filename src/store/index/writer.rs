//! Writing an index segment, streaming, in one pass: the header first, each entry block when it
//! is full, then the pack list, fences, filter and trailer, whose counts and offsets are known
//! only at the end.
//!
//! Invariants: the writer refuses (`InvalidInput`) whatever would break an invariant the reader
//! checks: ids not strictly increasing, a page slot not below 16, more than `MAX_PACKS` packs,
//! 103 ids sharing a fence, more than 2^32 blocks; so a segment it publishes opens. It lists a
//! pack when an entry first names it, so every listed pack is used. Nothing is published before
//! [`SegmentWriter::finish`]: a writer that failed or was dropped publishes nothing.
//!
//! Memory: the pack list, the fences and the filter (≈ 1.5 bytes per entry, as an open
//! `Segment`), plus one block; nothing per entry.

use std::collections::HashMap;
use std::io::{self, Write};

#[cfg(any(test, feature = "testing"))]
use crate::store::le;
use crate::store::page::{MAX_FRAME_PAGES, PageId};
use crate::store::storage::ObjectWriter;
use uuid::Uuid;

use super::entry::{
    BLOCK, BLOCK_CRC_AT, BLOCK_ENTRIES, COUNT_AT, ENTRY_LEN, FENCE_LEN, HEADER_MAGIC, IndexEntry,
    MAX_PACKS, PACK_LEN, SegmentInfo, TRAILER_LEN, TRAILER_MAGIC, VERSION, hex8,
};
use super::filter::{FILTER_LEN, filter_positions};

/// A segment being written starts writeback every this many bytes (see `start_writeback`).
const WRITEBACK_EVERY: u64 = 32 << 20;

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, detail)
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
