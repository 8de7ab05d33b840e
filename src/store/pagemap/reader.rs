//! Reading a page map (the format is described in the parent module, `pagemap.rs`):
//! [`PageMap::open`] reads and validates the header, trailer, pack list and directory;
//! [`PageMap::read_page`] and [`PageMap::summary`] read single map pages and the summary on
//! demand.
//!
//! Invariants: every invariant of the format that does not take every map page is checked here
//! before anything read is returned: by `open`, the fixed regions, their contiguity and the
//! directory (stored pages back to back from the header to the summary, counts summing to the
//! trailer's); by `read_page`, a map page's checksum, size, entries and count; by `summary`,
//! its checksum and that it names only listed packs, existing slots and no more pages than the
//! map's data pages. Damage is [`PackError::Corrupt`] and fails only what it touches (a damaged
//! map page fails that page, not the map); a failed read of a region `open` found is I/O, unless
//! the object is shorter than it said (`Length` damage). An open map holds only its header
//! fields, pack list and directory.

#![warn(clippy::arithmetic_side_effects)]

use std::io;

use super::entry::{
    DIR_ENTRY_LEN, DirEntry, FLAG_ALL_HOLES, HEADER_LEN, HEADER_MAGIC, MAX_PACKS, MAX_PAGES,
    MAX_STORED_PAGE, TRAILER_LEN, TRAILER_MAGIC, VERSION, entries_in, entry_problem,
    map_page_count, page_count, predict, valid_frame_size,
};
use crate::store::le;
use crate::store::pack::PackError;
use crate::store::page::{frame_slots, full_mask};
use crate::store::refs::{self, RefSet};
use crate::store::storage::Object;
use crate::store::{Corrupt, CorruptKind};
use uuid::Uuid;

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
    pub(super) dir: Vec<DirEntry>,
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

    /// The entries of map page `i` (see [`locate`](super::locate)), read from `obj` (named `key`
    /// in errors), verified and validated.
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
