//! Page maps (block map format version 2, for format-2 stores): for one disk restore point,
//! where each 4 KiB page of the disk lives, as `(pack, frame, slot)`, or that it is a hole.
//! Every map is complete, so resolving a page costs one map page lookup at any chain depth. The
//! map is paged: a reader loads the directory at open and then single map pages on demand.
//!
//! ```text
//! offset      size       field
//! 0           64         header: magic "RPFSBMAP", version u16 (2), reserved u16,
//!                        frame size u32, disk size u64, page count u64 (ceil(disk size / 4096)),
//!                        reserved (28 zero bytes), crc32c of bytes 0..60
//! 64          ...        map pages, back to back, in order, all-hole ones left out: each is
//!                        one zstd frame of its entries (4096, the last one the rest) as u64
//!                        little-endian, each XORed with its prediction (below)
//! S           ...        summary: the RefSet of every entry (`refs.rs` encoding, a zstd frame)
//! P           16*packs   pack list: pack ids; entry pack slot k names the k-th (1-based)
//! D           20*pages   directory, one entry per map page: offset u64, stored length u32,
//!                        crc32c of the stored bytes u32, data pages (non-hole entries) u16,
//!                        flags u8 (bit 0: all holes, not stored; others 0), object u8 (0: this
//!                        map; others reserved for map pages shared with other maps)
//! len - 72    72         trailer: magic "RPFSMEND", summary offset S u64, summary length u64,
//!                        pack list offset P u64, directory offset D u64, data pages u64,
//!                        pack count u32, directory length u32, crc32c of the summary u32,
//!                        crc32c of the pack list u32, crc32c of the directory u32,
//!                        crc32c of trailer bytes 0..68
//! ```
//!
//! An entry (u64) is `pack slot << 40 | frame << 8 | slot`: pack slot 24 bits (1-based; 0 is a
//! hole, and then the whole entry is 0), frame 32 bits, 4 reserved zero bits, page slot 4 bits
//! (below the frame's slot count). Its prediction is the page after the previous entry of the
//! same map page: the next slot of the same frame, or slot 0 of the next frame after the
//! frame's last slot; a hole (or the first entry of a map page) predicts a hole. Runs of the
//! consecutive pages of consecutive frames, and runs of holes, are stored as zeros.
//!
//! Invariants, all checked by [`PageMap::open`] (header, trailer, pack list, directory) and by
//! [`PageMap::read_page`] / [`PageMap::summary`] (the rest): the regions are contiguous in the
//! order above and end at the object's end; the page count describes the disk size and is at
//! most [`MAX_PAGES`]; the frame size is a power of two from 4 KiB to 64 KiB; pack ids are
//! unique; a stored map page holds at least one data page and its count matches its entries;
//! the directory's counts sum to the trailer's data pages; every entry names a listed pack and
//! a slot its frame has; the summary equals what the entries reference (checked by `check`, not
//! here: that takes every map page) and names only listed packs and existing slots. Maps are
//! written once, streaming, and never changed.

#![warn(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::io::{self, Write};

use super::le;
use super::pack::PackError;
use super::page::{PAGE_SHIFT, frame_slots, full_mask};
use super::refs::{self, RefSet, RefSetBuilder};
use super::storage::{Object, ObjectWriter};
use super::{Corrupt, CorruptKind};
use uuid::Uuid;

/// Format version of page maps (block maps of format-2 stores).
pub const VERSION: u16 = 2;
const HEADER_MAGIC: &[u8; 8] = b"RPFSBMAP";
const TRAILER_MAGIC: &[u8; 8] = b"RPFSMEND";
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
const MAX_STORED_PAGE: u32 = 64 << 10;
const FLAG_ALL_HOLES: u8 = 1;
/// zstd level of map pages. Measured on 64 map pages (`compression_levels_on_runs_and_fragments`):
/// runs compress to the same ~19 bytes a page at levels 1 to 3; scattered pages are 3% smaller
/// at level 2 than at 1 for the same time, and level 3 is 25% slower for nothing more.
const LEVEL: i32 = 2;

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
fn entry_problem(e: u64, packs: usize, slots: u32) -> Option<String> {
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

/// The entry expected after `prev` in a map of `slots`-page frames (see the module doc).
fn predict(prev: u64, slots: u32) -> u64 {
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

fn valid_frame_size(f: u32) -> bool {
    f.is_power_of_two() && (4096..=65536).contains(&f)
}

/// One map page's directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct DirEntry {
    offset: u64,
    len: u32,
    crc: u32,
    data_pages: u16,
    all_holes: bool,
}

impl DirEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.data_pages.to_le_bytes());
        out.push(if self.all_holes { FLAG_ALL_HOLES } else { 0 });
        out.push(0);
    }
}

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
    pushed: u64,
    data_pages: u64,
    packs: Vec<Uuid>,
    pack_slots: HashMap<Uuid, u32>,
    page: Vec<u64>,
    raw: Vec<u8>,
    dir: Vec<u8>,
    map_pages: u64,
    summary: RefSetBuilder,
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

/// An open page map: its header, pack list and directory, validated. Map pages and the
/// summary are read on demand.
#[derive(Debug, Clone)]
pub struct PageMap {
    pub frame_size: u32,
    pub disk_size: u64,
    /// Pages of the disk (entries of the map).
    pub pages: u64,
    /// Entries that are not holes.
    pub data_pages: u64,
    /// Entry pack slot `k` names `packs[k - 1]`.
    pub packs: Vec<Uuid>,
    dir: Vec<DirEntry>,
    summary_at: u64,
    summary_len: u64,
    summary_crc: u32,
}

/// A failed read of a map's `what`, a region [`PageMap::open`] found inside the object: cut short,
/// the object is shorter than it said (damage, `Length`); any other failure is the storage's
/// (I/O, not damage: the map may read fine next time).
fn read_error(key: &str, what: &str, e: io::Error) -> PackError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        PackError::Corrupt(Corrupt::new(
            key,
            CorruptKind::Length,
            format!("map {what} cannot be read: {e}"),
        ))
    } else {
        PackError::Io(io::Error::new(
            e.kind(),
            format!("reading the {what} of map {key}: {e}"),
        ))
    }
}

impl PageMap {
    /// Reads and validates the header, trailer, pack list and directory of `obj` (named `key`
    /// in errors).
    pub fn open(key: &str, obj: &dyn Object) -> Result<PageMap, PackError> {
        let corrupt =
            |kind: CorruptKind, detail: String| PackError::Corrupt(Corrupt::new(key, kind, detail));
        let io = |what: &str, e: io::Error| read_error(key, what, e);
        use CorruptKind::*;
        let len = obj.len();
        if len < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt(
                Length,
                format!("map is {len} bytes, shorter than header and trailer"),
            ));
        }
        let mut h = [0u8; HEADER_LEN];
        obj.read_exact_at(&mut h, 0).map_err(|e| io("header", e))?;
        if crc32c::crc32c(&h[..60]) != le::u32_at(&h, 60) {
            return Err(corrupt(
                HeaderChecksum,
                "map header checksum mismatch".into(),
            ));
        }
        if &h[0..8] != HEADER_MAGIC {
            return Err(corrupt(Magic, "bad map magic".into()));
        }
        let version = le::u16_at(&h, 8);
        if version != VERSION {
            return Err(corrupt(
                Version,
                format!("unsupported map version {version}"),
            ));
        }
        let frame_size = le::u32_at(&h, 12);
        if !valid_frame_size(frame_size) {
            return Err(corrupt(
                BlockSize,
                format!("map frame size {frame_size} is not a power of two from 4 KiB to 64 KiB"),
            ));
        }
        let disk_size = le::u64_at(&h, 16);
        let pages = le::u64_at(&h, 24);
        if pages != page_count(disk_size) || pages > MAX_PAGES {
            return Err(corrupt(
                Bounds,
                format!("{pages} pages do not describe a {disk_size}-byte disk within limits"),
            ));
        }
        let mut t = [0u8; TRAILER_LEN];
        // `len` holds at least a header and a trailer (checked above).
        let trailer_at = len.saturating_sub(TRAILER_LEN as u64);
        obj.read_exact_at(&mut t, trailer_at)
            .map_err(|e| io("trailer", e))?;
        if crc32c::crc32c(&t[..68]) != le::u32_at(&t, 68) {
            return Err(corrupt(
                TrailerChecksum,
                "map trailer checksum mismatch".into(),
            ));
        }
        if &t[0..8] != TRAILER_MAGIC {
            return Err(corrupt(Magic, "bad map trailer magic".into()));
        }
        let summary_at = le::u64_at(&t, 8);
        let summary_len = le::u64_at(&t, 16);
        let list_at = le::u64_at(&t, 24);
        let dir_at = le::u64_at(&t, 32);
        let data_pages = le::u64_at(&t, 40);
        let npacks = le::u32_at(&t, 48);
        let dir_len = le::u32_at(&t, 52);
        let map_pages = map_page_count(pages);
        let contiguous = summary_at >= HEADER_LEN as u64
            && summary_at.checked_add(summary_len) == Some(list_at)
            && list_at.checked_add(u64::from(npacks).saturating_mul(16)) == Some(dir_at)
            && dir_at.checked_add(u64::from(dir_len)) == Some(trailer_at)
            && u64::from(dir_len) == map_pages.saturating_mul(DIR_ENTRY_LEN as u64);
        if !contiguous || npacks > MAX_PACKS || data_pages > pages {
            return Err(corrupt(
                Bounds,
                format!(
                    "summary at {summary_at} ({summary_len} bytes), {npacks} packs at {list_at}, \
                     directory at {dir_at} ({dir_len} bytes) and {data_pages} data pages do not \
                     fit a {len}-byte map of {pages} pages"
                ),
            ));
        }
        // Both lie inside the object (checked just above), whose regions the caller can read.
        let mut tail = vec![0u8; (trailer_at.saturating_sub(list_at)) as usize];
        obj.read_exact_at(&mut tail, list_at)
            .map_err(|e| io("pack list", e))?;
        let (list, dirb) = tail.split_at(usize::try_from(npacks).unwrap_or(0).saturating_mul(16));
        if crc32c::crc32c(list) != le::u32_at(&t, 60) {
            return Err(corrupt(
                TableChecksum,
                "map pack list checksum mismatch".into(),
            ));
        }
        if crc32c::crc32c(dirb) != le::u32_at(&t, 64) {
            return Err(corrupt(
                TableChecksum,
                "map directory checksum mismatch".into(),
            ));
        }
        let packs: Vec<Uuid> = list
            .chunks_exact(16)
            .map(|c| Uuid::from_slice(c).unwrap_or_default())
            .collect();
        let mut seen = std::collections::HashSet::with_capacity(packs.len());
        if let Some(dup) = packs.iter().find(|p| !seen.insert(**p)) {
            return Err(corrupt(Entry, format!("map lists pack {dup} twice")));
        }
        let mut dir = Vec::with_capacity(dirb.len() / DIR_ENTRY_LEN);
        let mut next = HEADER_LEN as u64;
        let mut counted = 0u64;
        for (i, b) in dirb.chunks_exact(DIR_ENTRY_LEN).enumerate() {
            let flags = b[18];
            let d = DirEntry {
                offset: le::u64_at(b, 0),
                len: le::u32_at(b, 8),
                crc: le::u32_at(b, 12),
                data_pages: le::u16_at(b, 16),
                all_holes: flags & FLAG_ALL_HOLES != 0,
            };
            let entries = entries_in(pages, i as u64);
            let ok = if d.all_holes {
                d == DirEntry {
                    all_holes: true,
                    ..DirEntry::default()
                }
            } else {
                // Stored pages lie back to back from the header to the summary.
                d.offset == next
                    && d.len > 0
                    && d.len <= MAX_STORED_PAGE
                    && d.data_pages > 0
                    && usize::from(d.data_pages) <= entries
            };
            if !ok || flags & !FLAG_ALL_HOLES != 0 || b[19] != 0 {
                return Err(corrupt(
                    Entry,
                    format!(
                        "map directory entry {i} is invalid: {d:?}, flags {flags:#x}, object {}",
                        b[19]
                    ),
                ));
            }
            if !d.all_holes {
                next = next.saturating_add(u64::from(d.len));
            }
            counted = counted.saturating_add(u64::from(d.data_pages));
            dir.push(d);
        }
        if next != summary_at {
            return Err(corrupt(
                Bounds,
                format!("map pages end at {next}, the summary starts at {summary_at}"),
            ));
        }
        if counted != data_pages {
            return Err(corrupt(
                Bounds,
                format!("map directory counts {counted} data pages, the trailer {data_pages}"),
            ));
        }
        Ok(PageMap {
            frame_size,
            disk_size,
            pages,
            data_pages,
            packs,
            dir,
            summary_at,
            summary_len,
            summary_crc: le::u32_at(&t, 56),
        })
    }

    /// Number of map pages.
    pub fn map_pages(&self) -> u32 {
        u32::try_from(self.dir.len()).unwrap_or(u32::MAX)
    }

    /// True when map page `i` holds only holes (and is not stored), or does not exist.
    pub fn page_is_hole(&self, i: u32) -> bool {
        self.dir.get(i as usize).is_none_or(|d| d.all_holes)
    }

    /// Data pages (non-hole entries) of map page `i`, 0 if it does not exist.
    pub fn page_data_pages(&self, i: u32) -> u32 {
        self.dir
            .get(i as usize)
            .map_or(0, |d| u32::from(d.data_pages))
    }

    /// Entries of map page `i`: 4096, or the rest of the disk for the last one.
    pub fn page_entries(&self, i: u32) -> usize {
        entries_in(self.pages, u64::from(i))
    }

    /// The entries of map page `i` (see [`locate`]), read from `obj` (named `key` in errors),
    /// verified and validated.
    pub fn read_page(&self, key: &str, obj: &dyn Object, i: u32) -> Result<Vec<u64>, PackError> {
        let corrupt =
            |kind: CorruptKind, detail: String| PackError::Corrupt(Corrupt::new(key, kind, detail));
        use CorruptKind::*;
        let Some(d) = self.dir.get(i as usize) else {
            return Err(corrupt(
                Bounds,
                format!("map page {i} of {} asked for", self.dir.len()),
            ));
        };
        let n = self.page_entries(i);
        if d.all_holes {
            return Ok(vec![0; n]);
        }
        // `open` bounded the stored length by MAX_STORED_PAGE.
        let mut stored = vec![0u8; d.len as usize];
        obj.read_exact_at(&mut stored, d.offset)
            .map_err(|e| read_error(key, &format!("page {i}"), e))?;
        if crc32c::crc32c(&stored) != d.crc {
            return Err(corrupt(
                BodyChecksum,
                format!("map page {i} checksum mismatch"),
            ));
        }
        let want = n.saturating_mul(8);
        let mut raw = vec![0u8; want];
        let got = zstd::bulk::Decompressor::new()
            .and_then(|mut z| z.decompress_to_buffer(&stored, &mut raw[..]))
            .map_err(|e| {
                corrupt(
                    Compression,
                    format!("map page {i} does not decompress: {e}"),
                )
            })?;
        if got != want {
            return Err(corrupt(
                Compression,
                format!("map page {i} holds {got} bytes, expected {want}"),
            ));
        }
        let slots = frame_slots(self.frame_size);
        let mut out = Vec::with_capacity(n);
        let mut prev = 0u64;
        for (j, c) in raw.chunks_exact(8).enumerate() {
            let e = le::u64_at(c, 0) ^ predict(prev, slots);
            if let Some(p) = entry_problem(e, self.packs.len(), slots) {
                return Err(corrupt(Entry, format!("map page {i} entry {j}: {p}")));
            }
            out.push(e);
            prev = e;
        }
        let data = out.iter().filter(|&&e| e != 0).count();
        if data != usize::from(d.data_pages) {
            return Err(corrupt(
                Entry,
                format!(
                    "map page {i} holds {data} data pages, its directory entry says {}",
                    d.data_pages
                ),
            ));
        }
        Ok(out)
    }

    /// The map's summary: every `(pack, frame, slot)` its entries reference, read from `obj`
    /// (named `key` in errors) and validated against the pack list and frame size.
    pub fn summary(&self, key: &str, obj: &dyn Object) -> Result<RefSet, PackError> {
        let corrupt =
            |kind: CorruptKind, detail: String| PackError::Corrupt(Corrupt::new(key, kind, detail));
        use CorruptKind::*;
        let len = usize::try_from(self.summary_len)
            .map_err(|_| corrupt(Bounds, "map summary too large to read".into()))?;
        // `open` checked the summary lies inside the object.
        let mut stored = vec![0u8; len];
        obj.read_exact_at(&mut stored, self.summary_at)
            .map_err(|e| read_error(key, "summary", e))?;
        if crc32c::crc32c(&stored) != self.summary_crc {
            return Err(corrupt(
                BodyChecksum,
                "map summary checksum mismatch".into(),
            ));
        }
        // Every referenced frame is referenced by a data page.
        let max = refs::max_raw_len(self.packs.len() as u64, self.data_pages);
        let set = RefSet::decode(key, &stored, max)?;
        let full = full_mask(frame_slots(self.frame_size));
        for p in set.packs() {
            if !self.packs.contains(&p) {
                return Err(corrupt(
                    Entry,
                    format!("map summary names unlisted pack {p}"),
                ));
            }
            if let Some(&(f, m)) = set.frames(p).iter().find(|&&(_, m)| m & !full != 0) {
                return Err(corrupt(
                    Entry,
                    format!("map summary names pages {m:#x} of frame {f} of pack {p}"),
                ));
            }
        }
        if set.page_count() > self.data_pages {
            return Err(corrupt(
                Entry,
                format!(
                    "map summary names {} pages, more than the map's {} data pages",
                    set.page_count(),
                    self.data_pages
                ),
            ));
        }
        Ok(set)
    }
}

/// Entries of map page `i` of a map of `pages` pages.
fn entries_in(pages: u64, i: u64) -> usize {
    let start = i.saturating_mul(ENTRIES_PER_PAGE as u64);
    pages.saturating_sub(start).min(ENTRIES_PER_PAGE as u64) as usize
}

/// Makes every checksum of a map right again (directory entries', the regions', the trailer's
/// and the header's) wherever the trailer's offsets allow, so damage reaches the checks behind
/// the checksums: for tests and fuzzing.
#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::arithmetic_side_effects,
    reason = "offsets below the trailer's start, in a slice at least a trailer long"
)]
pub fn reseal(b: &mut [u8]) {
    let n = b.len();
    if n < HEADER_LEN + TRAILER_LEN {
        return;
    }
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let t = n.saturating_sub(TRAILER_LEN);
    let at = |o: usize| usize::try_from(le::u64_at(b, t.saturating_add(o))).unwrap_or(usize::MAX);
    let (summary_at, summary_len, list_at, dir_at) = (at(8), at(16), at(24), at(32));
    if let Some(s) = summary_at
        .checked_add(summary_len)
        .filter(|&e| e <= t)
        .and_then(|e| b.get(summary_at..e))
    {
        let crc = crc32c::crc32c(s);
        b[t + 56..t + 60].copy_from_slice(&crc.to_le_bytes());
    }
    if list_at <= dir_at && dir_at <= t {
        let crc = crc32c::crc32c(&b[list_at..dir_at]);
        b[t + 60..t + 64].copy_from_slice(&crc.to_le_bytes());
        for e in (dir_at..t).step_by(DIR_ENTRY_LEN) {
            if e.saturating_add(DIR_ENTRY_LEN) > t {
                break;
            }
            let off = usize::try_from(le::u64_at(b, e)).unwrap_or(usize::MAX);
            let len = le::u32_at(b, e.saturating_add(8)) as usize;
            if let Some(s) = off
                .checked_add(len)
                .filter(|&x| x <= t)
                .and_then(|x| b.get(off..x))
            {
                let crc = crc32c::crc32c(s);
                b[e + 12..e + 16].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&b[dir_at..t]);
        b[t + 64..t + 68].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[t..t + 68]);
    b[t + 68..t + 72].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::arithmetic_side_effects,
        reason = "tests compute offsets into the small maps they build"
    )]

    use super::*;
    use proptest::prelude::*;

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
}
