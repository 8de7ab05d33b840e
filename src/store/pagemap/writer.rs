//! Writing a page map (the format is described in the parent module, `pagemap.rs`):
//! [`PageMapWriter`] streams entries in disk order into a new object and publishes it.
//!
//! Invariants: memory holds one map page, the directory (20 bytes per 16 MiB of disk), the pack
//! list and the summary being built, whatever the disk's size; the writer refuses what a reader
//! would refuse (a frame size outside 4 KiB to 64 KiB, a disk of more than `MAX_PAGES` pages,
//! an invalid entry, more than `MAX_PACKS` packs) and publishes nothing unless exactly one entry
//! per page of the disk was pushed; each pack is listed once, in the order of first use; the
//! summary is built from the pushed entries, so it is what they reference; map pages are
//! written back to back in disk order, all-hole ones left out, followed by the summary, the
//! pack list, the directory and the trailer.

#![warn(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::io::{self, Write};

use super::entry::{
    DirEntry, ENTRIES_PER_PAGE, HEADER_LEN, HEADER_MAGIC, MAX_PACKS, MAX_PAGES, TRAILER_LEN,
    TRAILER_MAGIC, VERSION, decode_entry, entry_problem, page_count, predict, valid_frame_size,
};
use crate::store::page::frame_slots;
use crate::store::refs::{RefSet, RefSetBuilder};
use crate::store::storage::ObjectWriter;
use uuid::Uuid;

/// zstd level of map pages. Measured on 64 map pages (`compression_levels_on_runs_and_fragments`):
/// runs compress to the same ~19 bytes a page at levels 1 to 3; scattered pages are 3% smaller
/// at level 2 than at 1 for the same time, and level 3 is 25% slower for nothing more.
const LEVEL: i32 = 2;

/// What writing a map produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// Entries that are not holes.
    pub data_pages: u64,
    /// Size of the published object.
    pub stored_len: u64,
    /// Map pages, stored or all holes.
    pub map_pages: u64,
    /// Everything the map references (what the summary holds).
    pub summary: RefSet,
}

/// Streams a page map into a new object: entries in disk order, in batches of any size; each
/// full map page is compressed and written as it fills, so memory holds one map page, the
/// directory (20 bytes per 16 MiB of disk), the pack list and the summary being built.
pub struct PageMapWriter {
    out: Box<dyn ObjectWriter>,
    pos: u64,
    pages: u64,
    slots: u32,
    pub(super) pushed: u64,
    pub(super) data_pages: u64,
    packs: Vec<Uuid>,
    pack_slots: HashMap<Uuid, u32>,
    pub(super) page: Vec<u64>,
    raw: Vec<u8>,
    dir: Vec<u8>,
    map_pages: u64,
    pub(super) summary: RefSetBuilder,
    zstd: zstd::bulk::Compressor<'static>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl PageMapWriter {
    /// Starts the map of a `disk_size`-byte disk in a store of `frame_size`-byte frames.
    pub fn new(
        mut out: Box<dyn ObjectWriter>,
        disk_size: u64,
        frame_size: u32,
    ) -> Result<Self, io::Error> {
        if !valid_frame_size(frame_size) {
            return Err(invalid(format!(
                "frame size {frame_size} is not a power of two from 4 KiB to 64 KiB"
            )));
        }
        let pages = page_count(disk_size);
        if pages > MAX_PAGES {
            return Err(invalid(format!(
                "a {disk_size}-byte disk has more than {MAX_PAGES} pages"
            )));
        }
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(HEADER_MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&frame_size.to_le_bytes());
        h[16..24].copy_from_slice(&disk_size.to_le_bytes());
        h[24..32].copy_from_slice(&pages.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&h)?;
        Ok(PageMapWriter {
            out,
            pos: HEADER_LEN as u64,
            pages,
            slots: frame_slots(frame_size),
            pushed: 0,
            data_pages: 0,
            packs: Vec::new(),
            pack_slots: HashMap::new(),
            page: Vec::with_capacity(ENTRIES_PER_PAGE),
            raw: Vec::with_capacity(ENTRIES_PER_PAGE.saturating_mul(8)),
            dir: Vec::new(),
            map_pages: 0,
            summary: RefSetBuilder::new(),
            zstd: zstd::bulk::Compressor::new(LEVEL)?,
        })
    }

    /// The 1-based pack slot entries use for `pack`, added to the pack list on first use.
    /// Beyond [`MAX_PACKS`] packs, `finish` refuses the map.
    pub fn pack_slot(&mut self, pack: Uuid) -> u32 {
        if let Some(&s) = self.pack_slots.get(&pack) {
            return s;
        }
        self.packs.push(pack);
        let s = u32::try_from(self.packs.len()).unwrap_or(u32::MAX);
        self.pack_slots.insert(pack, s);
        s
    }

    /// Appends the next entries, in disk order. Refuses entries past the disk's end and
    /// entries a reader would refuse (unknown pack slot, reserved bits, slot past the frame).
    pub fn push(&mut self, entries: &[u64]) -> io::Result<()> {
        let left = self.pages.saturating_sub(self.pushed);
        if entries.len() as u64 > left {
            return Err(invalid(format!(
                "{} entries pushed past the {} pages of the disk",
                entries.len(),
                self.pages
            )));
        }
        for &e in entries {
            if let Some(p) = entry_problem(e, self.packs.len(), self.slots) {
                return Err(invalid(format!("page {}: {p}", self.pushed)));
            }
            if let Some(r) = decode_entry(e) {
                // `entry_problem` checked the slot names a listed pack.
                let pack = self.packs[(r.pack as usize).saturating_sub(1)];
                self.summary.insert(pack, r.frame, r.slot);
                self.data_pages = self.data_pages.saturating_add(1);
            }
            self.page.push(e);
            self.pushed = self.pushed.saturating_add(1);
            if self.page.len() == ENTRIES_PER_PAGE {
                self.flush_page()?;
            }
        }
        Ok(())
    }

    /// Compresses and writes the map page being filled, or records it as all holes.
    fn flush_page(&mut self) -> io::Result<()> {
        let data = self.page.iter().filter(|&&e| e != 0).count();
        let mut d = DirEntry {
            data_pages: u16::try_from(data).unwrap_or(u16::MAX),
            all_holes: data == 0,
            ..DirEntry::default()
        };
        if data != 0 {
            self.raw.clear();
            let mut prev = 0;
            for &e in &self.page {
                self.raw
                    .extend_from_slice(&(e ^ predict(prev, self.slots)).to_le_bytes());
                prev = e;
            }
            let stored = self.zstd.compress(&self.raw)?;
            self.out.write_all(&stored)?;
            d.offset = self.pos;
            d.len = u32::try_from(stored.len()).unwrap_or(u32::MAX);
            d.crc = crc32c::crc32c(&stored);
            self.pos = self.pos.saturating_add(stored.len() as u64);
        }
        d.encode(&mut self.dir);
        self.page.clear();
        self.map_pages = self.map_pages.saturating_add(1);
        Ok(())
    }

    /// Writes the summary, pack list, directory and trailer and publishes the map. Refuses
    /// unless exactly one entry per page of the disk was pushed.
    pub fn finish(mut self) -> io::Result<MapInfo> {
        if self.pushed != self.pages {
            return Err(invalid(format!(
                "{} entries pushed for a disk of {} pages",
                self.pushed, self.pages
            )));
        }
        if self.packs.len() > MAX_PACKS as usize {
            return Err(invalid(format!(
                "{} packs, more than a map can name",
                self.packs.len()
            )));
        }
        if !self.page.is_empty() {
            self.flush_page()?;
        }
        let summary = self.summary.finish();
        let sum = summary.encode();
        let mut list = Vec::with_capacity(self.packs.len().saturating_mul(16));
        for p in &self.packs {
            list.extend_from_slice(p.as_bytes());
        }
        let too_big = || invalid("map metadata over 4 GiB".into());
        let summary_at = self.pos;
        let list_at = summary_at.saturating_add(sum.len() as u64);
        let dir_at = list_at.saturating_add(list.len() as u64);
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(TRAILER_MAGIC);
        t[8..16].copy_from_slice(&summary_at.to_le_bytes());
        t[16..24].copy_from_slice(&(sum.len() as u64).to_le_bytes());
        t[24..32].copy_from_slice(&list_at.to_le_bytes());
        t[32..40].copy_from_slice(&dir_at.to_le_bytes());
        t[40..48].copy_from_slice(&self.data_pages.to_le_bytes());
        let npacks = u32::try_from(self.packs.len()).map_err(|_| too_big())?;
        t[48..52].copy_from_slice(&npacks.to_le_bytes());
        let dir_len = u32::try_from(self.dir.len()).map_err(|_| too_big())?;
        t[52..56].copy_from_slice(&dir_len.to_le_bytes());
        t[56..60].copy_from_slice(&crc32c::crc32c(&sum).to_le_bytes());
        t[60..64].copy_from_slice(&crc32c::crc32c(&list).to_le_bytes());
        t[64..68].copy_from_slice(&crc32c::crc32c(&self.dir).to_le_bytes());
        let crc = crc32c::crc32c(&t[..68]);
        t[68..72].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&sum)?;
        self.out.write_all(&list)?;
        self.out.write_all(&self.dir)?;
        self.out.write_all(&t)?;
        let stored_len = self.out.commit()?;
        Ok(MapInfo {
            data_pages: self.data_pages,
            stored_len,
            map_pages: self.map_pages,
            summary,
        })
    }
}
