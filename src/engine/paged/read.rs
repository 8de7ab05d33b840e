//! Reading a format-2 disk restore point: a block (one frame-sized stretch of the disk) is its
//! pages' map entries, each naming `(pack, frame, slot)`, resolved through the metadata cache and
//! the frame cache.
//!
//! Cost at any depth of chain or sharing: one map-page lookup, then per distinct frame one table
//! lookup and one decode (or a cache hit). A block whose pages are exactly one whole frame, in
//! slot order, decodes straight into the caller's buffer, as format 1 did for whole blocks.
//!
//! Invariants: a read never returns bytes whose frame hash does not match; an entry naming a
//! frame or slot its pack lacks is damage of that block alone; holes read as zeros without
//! touching storage.

use std::sync::{Arc, OnceLock};

use uuid::Uuid;

use super::meta::{self, FramePackHandle};
use crate::engine::error::Damage;
use crate::engine::packs::OpenError;
use crate::engine::shared::Shared;
use crate::store::frames::FrameEntry;
use crate::store::pack::{BlockReadError, PackError};
use crate::store::page::{self, MAX_FRAME_PAGES, PAGE_SHIFT, PAGE_SIZE};
use crate::store::pagemap::{self, PageMap, PageRef};
use crate::store::storage::Object;

thread_local! {
    /// Scratch for a frame decoded to serve some of its pages.
    static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The map page this thread resolved a block through last: (disk restore point, page).
    static LAST_MAP_PAGE: std::cell::RefCell<Option<LastMapPage>> =
        const { std::cell::RefCell::new(None) };
}

/// A map page by (disk restore point, page number), with its entries.
type LastMapPage = (Uuid, u32, Arc<[u64]>);

/// The map entries of one frame-sized block (fewer than a frame's slots only at the end of
/// the disk).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockEntries {
    entries: [u64; MAX_FRAME_PAGES],
    len: usize,
}

impl std::ops::Deref for BlockEntries {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        &self.entries[..self.len]
    }
}

/// Why a block could not be read.
pub(crate) enum Cause {
    Io(std::io::Error),
    Damage(Damage),
}

impl Cause {
    /// The engine error for this cause, in `context`.
    pub(crate) fn into_error(self, context: String) -> crate::engine::error::Error {
        use crate::engine::error::Error;
        match self {
            Cause::Io(source) => Error::Io { context, source },
            Cause::Damage(damage) => Error::Damaged { context, damage },
        }
    }
}

impl From<OpenError> for Cause {
    fn from(e: OpenError) -> Cause {
        match e {
            OpenError::Io { source, .. } => Cause::Io(source),
            OpenError::Corrupt(c) => Cause::Damage(Damage::File(c)),
        }
    }
}

/// One format-2 disk restore point's map, open for reading.
pub(crate) struct PagedDisk {
    drp: Uuid,
    key: String,
    object: Arc<dyn Object>,
    map: PageMap,
    packs: Vec<OnceLock<Arc<FramePackHandle>>>,
}

impl PagedDisk {
    /// Opens the map of disk restore point `drp`, stored under `key`.
    pub(crate) fn open(shared: &Shared, drp: Uuid, key: &str) -> Result<PagedDisk, Cause> {
        let object = shared.storage.open(key).map_err(Cause::Io)?;
        let map = PageMap::open(key, &*object).map_err(map_cause)?;
        if map.frame_size != shared.header.block_size {
            let c = crate::store::Corrupt::new(
                key,
                crate::store::CorruptKind::BlockSize,
                format!(
                    "map of {}-byte frames in a store of {}-byte frames",
                    map.frame_size, shared.header.block_size
                ),
            );
            return Err(Cause::Damage(Damage::Map(c)));
        }
        let packs = (0..map.packs.len()).map(|_| OnceLock::new()).collect();
        Ok(PagedDisk {
            drp,
            key: key.to_string(),
            object,
            map,
            packs,
        })
    }

    pub(crate) fn map(&self) -> &PageMap {
        &self.map
    }

    pub(crate) fn size(&self) -> u64 {
        self.map.disk_size
    }

    /// Bytes of the disk that are not holes (whole pages).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.map.data_pages << PAGE_SHIFT
    }

    /// The open pack in (1-based) slot `slot` of the map.
    pub(crate) fn pack(&self, shared: &Shared, slot: u32) -> Result<Arc<FramePackHandle>, Cause> {
        let i = slot as usize - 1;
        if let Some(h) = self.packs[i].get() {
            return Ok(h.clone());
        }
        let h = shared.frame_packs.open(
            &*shared.storage,
            shared.header.block_size,
            self.map.packs[i],
        )?;
        // Another thread may have set it first; both handles are equivalent.
        let _ = self.packs[i].set(h.clone());
        Ok(h)
    }

    /// Opens every pack the map references.
    pub(crate) fn open_all_packs(&self, shared: &Shared) -> Result<(), Cause> {
        for slot in 1..=self.packs.len() as u32 {
            self.pack(shared, slot)?;
        }
        Ok(())
    }

    /// The entries of map page `i`, or `None` when it is all holes. Each thread keeps the map
    /// page it used last, so consecutive blocks skip the shared cache's lock.
    pub(crate) fn entries(&self, shared: &Shared, i: u32) -> Result<Option<Arc<[u64]>>, Cause> {
        if self.map.page_is_hole(i) {
            return Ok(None);
        }
        if let Some(e) = LAST_MAP_PAGE.with_borrow(|last| {
            last.as_ref()
                .filter(|(drp, page, _)| *drp == self.drp && *page == i)
                .map(|(_, _, e)| e.clone())
        }) {
            return Ok(Some(e));
        }
        let e = meta::map_page(
            &shared.meta,
            (self.drp, &self.key),
            &self.map,
            &*self.object,
            i,
        )
        .map_err(map_cause)?;
        LAST_MAP_PAGE.with_borrow_mut(|last| *last = Some((self.drp, i, e.clone())));
        Ok(Some(e))
    }

    /// The entries of frame-sized block `block` (`slots` of them; fewer at the end of the disk),
    /// or `None` when the whole block is holes or lies past the end of the disk (as it does for
    /// the previous point of a disk that has grown).
    pub(crate) fn block_entries(
        &self,
        shared: &Shared,
        block: u64,
    ) -> Result<Option<BlockEntries>, Cause> {
        let slots = u64::from(page::frame_slots(self.map.frame_size));
        let first = block * slots;
        let Some(left) = self.map.pages.checked_sub(first).filter(|&l| l > 0) else {
            return Ok(None);
        };
        let (mp, at) = pagemap::locate(first);
        let Some(entries) = self.entries(shared, mp as u32)? else {
            return Ok(None);
        };
        let n = slots.min(left) as usize;
        // Frames never straddle map pages: 4096 entries hold a whole number of frames.
        Ok(entries.get(at..at + n).map(|e| {
            let mut out = BlockEntries {
                entries: [0; MAX_FRAME_PAGES],
                len: e.len(),
            };
            out.entries[..e.len()].copy_from_slice(e);
            out
        }))
    }

    /// The table entry of `r`'s frame, checked to hold `r`'s slot.
    fn frame_of(
        &self,
        shared: &Shared,
        r: PageRef,
    ) -> Result<(Arc<FramePackHandle>, FrameEntry), Cause> {
        let h = self.pack(shared, r.pack)?;
        let entry = h.frame(&shared.meta, r.frame).map_err(pack_cause)?;
        match entry {
            Some(e) if page::ordinal(e.mask, r.slot).is_some() => Ok((h, e)),
            _ => Err(Cause::Damage(Damage::MissingBlock {
                pack: h.key.clone(),
            })),
        }
    }

    /// Writes the content of frame-sized block `block` into `out` (exactly one frame size, zero
    /// past the end of the disk). `keep` caches frames decoded whole for this block.
    pub(crate) fn read_block(
        &self,
        shared: &Shared,
        block: u64,
        out: &mut [u8],
        keep: bool,
    ) -> Result<(), Cause> {
        let Some(entries) = self.block_entries(shared, block)? else {
            out.fill(0);
            return Ok(());
        };
        let mut refs = [None; MAX_FRAME_PAGES];
        for (r, &e) in refs.iter_mut().zip(entries.iter()) {
            *r = pagemap::decode_entry(e);
        }
        let refs = &refs[..entries.len()];
        // The fast path: the block is one whole frame, slot i at page i.
        if let Some(Some(first)) = refs.first()
            && refs.len() << PAGE_SHIFT == out.len()
            && refs.iter().enumerate().all(|(i, r)| {
                matches!(r, Some(r) if r.pack == first.pack && r.frame == first.frame
                    && usize::from(r.slot) == i)
            })
        {
            let key = self.pack(shared, first.pack)?.frame_key(first.frame);
            if let Some(data) = shared.cache.get(&key)
                && data.len() == out.len()
            {
                out.copy_from_slice(&data);
                return Ok(());
            }
            let (h, e) = self.frame_of(shared, *first)?;
            if e.decoded_len() == out.len() {
                h.pack
                    .read_frame(&*h.object, &e, out)
                    .map_err(|err| frame_cause(&h, err))?;
                if keep && shared.cache.capacity() > 0 {
                    shared.cache.insert(key, Arc::from(&*out));
                }
                return Ok(());
            }
        }
        // Page by page, each distinct frame decoded once for all the pages it serves here.
        let mut done = [false; MAX_FRAME_PAGES];
        for (i, r) in refs.iter().enumerate() {
            let dest = &mut out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            let Some(r) = *r else {
                dest.fill(0);
                continue;
            };
            if done[i] {
                continue;
            }
            self.with_frame(shared, r, keep, |data, mask| {
                for (j, rj) in refs.iter().enumerate().skip(i) {
                    let Some(rj) = rj.filter(|rj| rj.pack == r.pack && rj.frame == r.frame) else {
                        continue;
                    };
                    out[j * PAGE_SIZE..(j + 1) * PAGE_SIZE]
                        .copy_from_slice(self.page_in(data, mask, rj)?);
                    done[j] = true;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Writes `dest.len()` bytes of block `block`, from byte `from` of it, into `dest`: only the
    /// pages they overlap are resolved, each frame through the cache (and kept there: a block
    /// read in parts will likely be read again).
    pub(crate) fn read_part(
        &self,
        shared: &Shared,
        block: u64,
        from: usize,
        dest: &mut [u8],
    ) -> Result<(), Cause> {
        let Some(entries) = self.block_entries(shared, block)? else {
            dest.fill(0);
            return Ok(());
        };
        let end = from.saturating_add(dest.len());
        let mut at = from;
        while at < end {
            let i = at / PAGE_SIZE;
            let upto = ((i + 1) * PAGE_SIZE).min(end);
            let part = &mut dest[at - from..upto - from];
            let within = at - i * PAGE_SIZE..upto - i * PAGE_SIZE;
            match entries.get(i).copied().and_then(pagemap::decode_entry) {
                None => part.fill(0),
                Some(r) => self.with_frame(shared, r, true, |data, mask| {
                    part.copy_from_slice(&self.page_in(data, mask, r)?[within]);
                    Ok(())
                })?,
            }
            at = upto;
        }
        Ok(())
    }

    /// Page `r` in `data`, its frame's decoded pages (present ones: `mask`).
    fn page_in<'d>(&self, data: &'d [u8], mask: u16, r: PageRef) -> Result<&'d [u8], Cause> {
        let Some(ord) = page::ordinal(mask, r.slot) else {
            let pack = self.map.packs[r.pack as usize - 1].to_string();
            return Err(Cause::Damage(Damage::MissingBlock { pack }));
        };
        Ok(&data[ord * PAGE_SIZE..(ord + 1) * PAGE_SIZE])
    }

    /// Calls `f` with the decoded pages of `r`'s frame and its mask: from the frame cache, or
    /// decoded into this thread's scratch (and cached when `keep`: the frame may serve pages of
    /// other blocks or points; a sequential pass does not keep what it will not read again).
    fn with_frame<T>(
        &self,
        shared: &Shared,
        r: PageRef,
        keep: bool,
        f: impl FnOnce(&[u8], u16) -> Result<T, Cause>,
    ) -> Result<T, Cause> {
        let (h, e) = self.frame_of(shared, r)?;
        let key = h.frame_key(r.frame);
        if let Some(data) = shared.cache.get(&key)
            && data.len() == e.decoded_len()
        {
            return f(&data, e.mask);
        }
        FRAME.with_borrow_mut(|buf| {
            buf.resize(e.decoded_len(), 0);
            h.pack
                .read_frame(&*h.object, &e, buf)
                .map_err(|err| frame_cause(&h, err))?;
            if keep && shared.cache.capacity() > 0 {
                shared.cache.insert(key, Arc::from(&buf[..]));
            }
            f(buf, e.mask)
        })
    }

    /// The first page at or after `page` that is not a hole, or `None`. A map page that cannot
    /// be read counts as data (reading it will report the damage).
    pub(crate) fn next_data_page(&self, shared: &Shared, page: u64) -> Option<u64> {
        self.next_data_page_before(shared, page, self.map.pages)
    }

    /// [`PagedDisk::next_data_page`], looking no further than page `end` (exclusive).
    pub(crate) fn next_data_page_before(
        &self,
        shared: &Shared,
        page: u64,
        end: u64,
    ) -> Option<u64> {
        let mut p = page;
        while p < self.map.pages.min(end) {
            let (mp, at) = pagemap::locate(p);
            let mp32 = u32::try_from(mp).ok()?;
            match self.entries(shared, mp32) {
                Ok(None) => {}
                Ok(Some(e)) => {
                    if let Some(i) = e.iter().skip(at).position(|&x| x != 0) {
                        return Some(p + i as u64);
                    }
                }
                Err(_) => return Some(p),
            }
            p = (mp + 1) * pagemap::ENTRIES_PER_PAGE as u64;
        }
        None
    }

    /// The first page at or after `page` that is a hole, or the page count.
    pub(crate) fn next_hole_page(&self, shared: &Shared, page: u64) -> u64 {
        self.next_hole_page_before(shared, page, self.map.pages)
    }

    /// [`PagedDisk::next_hole_page`], looking no further than page `end`: at most `end` when
    /// there is no hole before it.
    pub(crate) fn next_hole_page_before(&self, shared: &Shared, page: u64, end: u64) -> u64 {
        let mut p = page;
        while p < self.map.pages.min(end) {
            let (mp, at) = pagemap::locate(p);
            let Ok(mp32) = u32::try_from(mp) else {
                break;
            };
            match self.entries(shared, mp32) {
                Ok(None) => return p,
                Ok(Some(e)) => {
                    if let Some(i) = e.iter().skip(at).position(|&x| x == 0) {
                        return p + i as u64;
                    }
                }
                Err(_) => {}
            }
            p = (mp + 1) * pagemap::ENTRIES_PER_PAGE as u64;
        }
        self.map.pages
    }
}

/// A page map's failure as a cause: I/O, or a damaged map.
fn map_cause(e: PackError) -> Cause {
    match e {
        PackError::Io(e) => Cause::Io(e),
        PackError::Corrupt(c) => Cause::Damage(Damage::Map(c)),
    }
}

pub(crate) fn pack_cause(e: PackError) -> Cause {
    match e {
        PackError::Io(e) => Cause::Io(e),
        PackError::Corrupt(c) => Cause::Damage(Damage::File(c)),
    }
}

fn frame_cause(h: &FramePackHandle, e: BlockReadError) -> Cause {
    match e {
        BlockReadError::Io(e) => Cause::Io(e),
        BlockReadError::Decode(cause) => Cause::Damage(Damage::Block {
            pack: h.key.clone(),
            cause,
        }),
    }
}
