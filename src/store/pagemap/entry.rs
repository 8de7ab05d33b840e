//! Page map entries and the layout every part of a map shares (the format is described in the
//! parent module, `pagemap.rs`): the sizes and magics of the fixed regions, the encoding of an
//! entry, its prediction and its validation, and the directory entry of a map page.
//!
//! Invariants: [`entry_problem`] is the one definition of a valid entry, used by the writer
//! (which refuses what it names) and by the reader (which calls it damage), so whatever is
//! written reads back; a hole is exactly 0; [`predict`] is the same function on both sides and
//! total (the last slot of the last frame predicts itself), so XORing with it again undoes the
//! XOR; a directory entry encodes to [`DIR_ENTRY_LEN`] bytes, an all-holes one with every other
//! field zero. This module depends on no other part of the map.

#![warn(clippy::arithmetic_side_effects)]

use crate::store::page::PAGE_SHIFT;

/// Format version of page maps (block maps of format-2 stores).
pub const VERSION: u16 = 2;
pub(super) const HEADER_MAGIC: &[u8; 8] = b"RPFSBMAP";
pub(super) const TRAILER_MAGIC: &[u8; 8] = b"RPFSMEND";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Size of the fixed trailer.
pub const TRAILER_LEN: usize = 72;
/// Size of one directory entry.
pub const DIR_ENTRY_LEN: usize = 20;
/// Entries in a map page (16 MiB of disk).
pub const ENTRIES_PER_PAGE: usize = 4096;
const ENTRIES_SHIFT: u32 = 12;
/// Most pages a disk can have (16 TiB).
pub const MAX_PAGES: u64 = 1 << 32;
/// Most packs a map can name (pack slots are 24 bits, 0 being a hole).
pub const MAX_PACKS: u32 = (1 << 24) - 1;
/// Largest stored map page: a 32 KiB page that zstd could not shrink, with its frame overhead.
pub(super) const MAX_STORED_PAGE: u32 = 64 << 10;
pub(super) const FLAG_ALL_HOLES: u8 = 1;

const _: () = assert!(HEADER_LEN == 8 + 2 + 2 + 4 + 8 + 8 + 28 + 4);
const _: () = assert!(TRAILER_LEN == 8 + 8 * 5 + 4 * 2 + 4 * 3 + 4);
const _: () = assert!(DIR_ENTRY_LEN == 8 + 4 + 4 + 2 + 1 + 1);
const _: () = assert!(ENTRIES_PER_PAGE <= u16::MAX as usize);
const _: () = assert!(ENTRIES_PER_PAGE == 1 << ENTRIES_SHIFT);

const PACK_SHIFT: u32 = 40;
const FRAME_SHIFT: u32 = 8;
const SLOT_MASK: u64 = 0xf;
const RESERVED_MASK: u64 = 0xf0;

/// Where one page of a disk lives: page `slot` of frame `frame` of the map's `pack`-th pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageRef {
    /// 1-based index into the map's pack list (24 bits).
    pub pack: u32,
    pub frame: u32,
    pub slot: u8,
}

/// The entry for a page (`None`: a hole). Bits of `pack` above 24 and of `slot` above 4 are
/// dropped; a `pack` of 0 makes an entry every reader refuses.
pub fn encode_entry(r: Option<PageRef>) -> u64 {
    r.map_or(0, |r| {
        (u64::from(r.pack & MAX_PACKS) << PACK_SHIFT)
            | (u64::from(r.frame) << FRAME_SHIFT)
            | (u64::from(r.slot) & SLOT_MASK)
    })
}

/// The page an entry names, `None` for pack slot 0 (a hole). Validates nothing.
pub fn decode_entry(e: u64) -> Option<PageRef> {
    let pack = (e >> PACK_SHIFT) as u32;
    (pack != 0).then_some(PageRef {
        pack,
        frame: (e >> FRAME_SHIFT) as u32,
        slot: (e & SLOT_MASK) as u8,
    })
}

/// Why an entry is invalid in a map of `packs` packs with `slots`-page frames, if it is.
pub(super) fn entry_problem(e: u64, packs: usize, slots: u32) -> Option<String> {
    let pack = e >> PACK_SHIFT;
    if pack == 0 {
        return (e != 0).then(|| format!("a hole entry with bits set ({e:#x})"));
    }
    if pack > packs as u64 {
        return Some(format!("pack slot {pack} of {packs}"));
    }
    if e & RESERVED_MASK != 0 {
        return Some(format!("reserved bits set ({e:#x})"));
    }
    if (e & SLOT_MASK) >= u64::from(slots) {
        return Some(format!(
            "page slot {} of a {slots}-page frame",
            e & SLOT_MASK
        ));
    }
    None
}

/// The entry expected after `prev` in a map of `slots`-page frames (see the parent module doc).
pub(super) fn predict(prev: u64, slots: u32) -> u64 {
    if prev == 0 {
        return 0;
    }
    let slot = prev & SLOT_MASK;
    if slot.saturating_add(1) < u64::from(slots) {
        return (prev & !SLOT_MASK) | slot.saturating_add(1);
    }
    match ((prev >> FRAME_SHIFT) as u32).checked_add(1) {
        Some(next) => {
            (prev & !((u64::from(u32::MAX) << FRAME_SHIFT) | 0xff))
                | (u64::from(next) << FRAME_SHIFT)
        }
        None => prev,
    }
}

/// Pages covering `disk_size` bytes.
pub fn page_count(disk_size: u64) -> u64 {
    disk_size.div_ceil(1 << PAGE_SHIFT)
}

/// Map pages covering `pages` pages.
pub fn map_page_count(pages: u64) -> u64 {
    pages.div_ceil(ENTRIES_PER_PAGE as u64)
}

/// Which map page holds disk page `page`, and at which index.
pub fn locate(page: u64) -> (u64, usize) {
    (page >> ENTRIES_SHIFT, (page & 0xfff) as usize)
}

pub(super) fn valid_frame_size(f: u32) -> bool {
    f.is_power_of_two() && (4096..=65536).contains(&f)
}

/// One map page's directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct DirEntry {
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) crc: u32,
    pub(super) data_pages: u16,
    pub(super) all_holes: bool,
}

impl DirEntry {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.data_pages.to_le_bytes());
        out.push(if self.all_holes { FLAG_ALL_HOLES } else { 0 });
        out.push(0);
    }
}

/// Entries of map page `i` of a map of `pages` pages.
pub(super) fn entries_in(pages: u64, i: u64) -> usize {
    let start = i.saturating_mul(ENTRIES_PER_PAGE as u64);
    pages.saturating_sub(start).min(ENTRIES_PER_PAGE as u64) as usize
}
