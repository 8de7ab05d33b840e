//! Classifying one block of a source disk for a format-2 point, page by page (hole, same as
//! the previous point, found stored, or new; see the parent module), and encoding its new pages
//! as one frame with the store's compression.
//!
//! Invariants: a classification only reads (the previous point's map and packs, the dedup
//! index); it never writes the store. A page is called found only when its candidate checks out
//! in its pack (slot present, same fingerprint), so a stale or colliding index entry costs a
//! dedup, never wrong bytes. Packs opened for lookups are cached per creation in `fresh`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;

use crate::engine::error::{Error, Result};
use crate::engine::paged::index::IndexSet;
use crate::engine::paged::meta::FramePackHandle;
use crate::engine::paged::read::{BlockEntries, Cause, PagedDisk, pack_cause};
use crate::engine::shared::Shared;
use crate::store::block;
use crate::store::page::{self, Fingerprint, IdKey, MAX_FRAME_PAGES, PAGE_SIZE, PageId};
use crate::store::pagemap::{self, PageRef};

/// What a page of a block turned out to be.
#[derive(Debug, Clone, Copy)]
pub(super) enum Page {
    Hole,
    /// Stored already: pack, frame, slot.
    At(Uuid, u32, u8),
    /// New, in this block's frame.
    New,
    /// Same bytes as a new page of an earlier block of the batch: (block in batch, slot).
    Earlier(usize, u8),
}

/// One block's classification, and its new frame if it has new pages.
pub(super) struct BlockOut {
    pub(super) pages: Vec<Page>,
    pub(super) frame: Option<NewFrame>,
}

pub(super) struct NewFrame {
    pub(super) mask: u16,
    pub(super) codec: block::Codec,
    pub(super) hash: u128,
    /// Range of the encoded frame in the batch's output buffer.
    pub(super) at: std::ops::Range<usize>,
    pub(super) fingerprints: Vec<Fingerprint>,
    pub(super) ids: Vec<PageId>,
    /// The id of the whole frame (`IdKey::frame_id`), when every page of it is new.
    pub(super) frame_id: Option<PageId>,
}

/// What workers share to classify blocks.
pub(super) struct Classifier<'a> {
    pub(super) shared: &'a Shared,
    pub(super) fs: usize,
    pub(super) prev: Option<&'a PagedDisk>,
    pub(super) index: &'a IndexSet,
    pub(super) ids: &'a IdKey,
    /// Packs opened by [`Classifier::opened`].
    pub(super) fresh: Mutex<HashMap<Uuid, Option<Arc<FramePackHandle>>>>,
}

impl Classifier<'_> {
    /// The previous point's entries for `block`, or `None` (no previous point, or holes).
    pub(super) fn prev_entries(&self, block: u64) -> Result<Option<BlockEntries>> {
        let Some(prev) = self.prev else {
            return Ok(None);
        };
        prev.block_entries(self.shared, block)
            .map_err(|c| self.prev_error(c))
    }

    pub(super) fn prev_error(&self, cause: Cause) -> Error {
        cause.into_error("the previous restore point of the disk".to_string())
    }

    /// The previous point's page behind `entry`: its location and fingerprint.
    pub(super) fn prev_page(&self, entry: u64) -> Result<Option<(Uuid, PageRef, Fingerprint)>> {
        let (Some(prev), Some(r)) = (self.prev, pagemap::decode_entry(entry)) else {
            return Ok(None);
        };
        let h = prev
            .pack(self.shared, r.pack)
            .map_err(|c| self.prev_error(c))?;
        let fp = fingerprint_at(self.shared, &h, r).map_err(|c| self.prev_error(c))?;
        Ok(fp.map(|fp| (h.pack.pack, r, fp)))
    }

    /// Where a page with id `id` and fingerprint `fp` is stored already, per the index, checked
    /// in its pack. Any trouble is a miss.
    pub(super) fn found(&self, id: &PageId, fp: Fingerprint) -> Option<(Uuid, u32, u8)> {
        for c in self.index.candidates(id, &self.shared.meta) {
            let Some(h) = self.opened(c.pack) else {
                continue;
            };
            let r = PageRef {
                pack: 0,
                frame: c.frame,
                slot: c.slot,
            };
            if let Ok(Some(stored)) = fingerprint_at(self.shared, &h, r)
                && stored == fp
            {
                return Some((c.pack, c.frame, c.slot));
            }
        }
        None
    }

    /// Pack `pack` as it is now, opened once for this creation: a handle another reader of the
    /// process opened earlier may predate a repack (by another process) that dropped pages this
    /// creation must not adopt. `None` when it cannot be opened (a missed saving).
    pub(super) fn opened(&self, pack: Uuid) -> Option<Arc<FramePackHandle>> {
        let mut fresh = self.fresh.lock();
        fresh
            .entry(pack)
            .or_insert_with(|| {
                FramePackHandle::open(&*self.shared.storage, self.shared.header.block_size, pack)
                    .ok()
                    .map(Arc::new)
            })
            .clone()
    }

    /// The pages of a whole stored frame whose bytes have id `fid` and xxh3-128 `h` (the
    /// frame hash a pack keeps), checked in its pack.
    pub(super) fn found_frame(&self, fid: &PageId, h: u128) -> Option<Vec<Page>> {
        for c in self.index.candidates(fid, &self.shared.meta) {
            let Some(handle) = self.opened(c.pack) else {
                continue;
            };
            if let Ok(Some(e)) = handle.frame(&self.shared.meta, c.frame)
                && c.slot == 0
                && e.hash == h
                && e.decoded_len() == self.fs
            {
                let slots = self.fs / PAGE_SIZE;
                return Some(
                    (0..slots)
                        .map(|s| Page::At(c.pack, c.frame, s as u8))
                        .collect(),
                );
            }
        }
        None
    }

    /// Classifies block `b` (`data`: up to one frame; less only at the end of the disk) and,
    /// when it has new pages, encodes them onto the end of `out`.
    pub(super) fn classify(
        &self,
        b: u64,
        data: &[u8],
        earlier: &mut HashMap<PageId, (usize, u8)>,
        nth: usize,
        out: &mut Vec<u8>,
    ) -> Result<BlockOut> {
        let n = data.len().div_ceil(PAGE_SIZE);
        let whole = data.len() == self.fs;
        // The block's hash, computed only where it is used (a changed block mixing pages of
        // several frames needs only its pages' fingerprints).
        let hash = std::cell::OnceCell::new();
        let h = || *hash.get_or_init(|| block::hash(data));
        if whole && block::is_zero(data) {
            return Ok(BlockOut {
                pages: vec![Page::Hole; n],
                frame: None,
            });
        }
        let prev = self.prev_entries(b)?;
        // Unchanged whole frame: one compare, as in format 1.
        if let Some(p) = &prev
            && whole
            && let Some(same) = self.same_frame(p, h)?
        {
            return Ok(BlockOut {
                pages: same,
                frame: None,
            });
        }
        // Where nothing was before (a first point, a clone's first point), every page will be
        // looked up by id: hash them now, and when none is a hole look the whole frame up by
        // its id first (a clone's unchanged block: one lookup instead of one per page).
        let mut ids: [Option<PageId>; MAX_FRAME_PAGES] = [None; MAX_FRAME_PAGES];
        if whole && prev.is_none() {
            let (pages, _) = data.as_chunks::<PAGE_SIZE>();
            let data_pages: Vec<usize> = (0..n).filter(|&i| !block::is_zero(&pages[i])).collect();
            let mut hashed = [[0u8; 32]; MAX_FRAME_PAGES];
            let inputs: Vec<&[u8; PAGE_SIZE]> = data_pages.iter().map(|&i| &pages[i]).collect();
            self.ids.page_ids(&inputs, &mut hashed);
            for (&i, id) in data_pages.iter().zip(hashed) {
                ids[i] = Some(id);
            }
            if data_pages.len() == n
                && let Some(pages) = self.found_frame(&self.ids.frame_id(&hashed[..n]), h())
            {
                return Ok(BlockOut { pages, frame: None });
            }
        }
        let mut pages = Vec::with_capacity(n);
        let mut new = NewFrame {
            mask: 0,
            codec: block::Codec::Raw,
            hash: 0,
            at: 0..0,
            fingerprints: Vec::new(),
            ids: Vec::new(),
            frame_id: None,
        };
        for (slot, p) in data.chunks(PAGE_SIZE).enumerate() {
            let slot = slot as u8;
            if block::is_zero(p) {
                pages.push(Page::Hole);
                continue;
            }
            // The last page of a disk whose size is not a multiple of 4 KiB reads as zeros
            // beyond the end.
            let mut padded;
            let p = if p.len() < PAGE_SIZE {
                padded = p.to_vec();
                padded.resize(PAGE_SIZE, 0);
                &padded[..]
            } else {
                p
            };
            let fp = page::fingerprint(p);
            if let Some(e) = prev.as_ref().and_then(|e| e.get(usize::from(slot)))
                && let Some((pack, r, pfp)) = self.prev_page(*e)?
                && pfp == fp
            {
                pages.push(Page::At(pack, r.frame, r.slot));
                continue;
            }
            let id = ids[usize::from(slot)].unwrap_or_else(|| self.ids.page_id(p));
            if let Some(&(blk, s)) = earlier.get(&id) {
                pages.push(Page::Earlier(blk, s));
                continue;
            }
            if let Some((pack, frame, s)) = self.found(&id, fp) {
                pages.push(Page::At(pack, frame, s));
                continue;
            }
            earlier.insert(id, (nth, slot));
            pages.push(Page::New);
            new.mask |= 1 << slot;
            new.fingerprints.push(fp);
            new.ids.push(id);
        }
        if new.mask == 0 {
            return Ok(BlockOut { pages, frame: None });
        }
        if usize::try_from(new.mask.count_ones()).is_ok_and(|c| c * PAGE_SIZE == self.fs) {
            new.frame_id = Some(self.ids.frame_id(&new.ids));
        }
        // Every page new (the common case): the frame is the block itself, whose hash is known.
        let raw;
        let (pages_bytes, hash) = if n * PAGE_SIZE == data.len()
            && u32::try_from(n).is_ok_and(|n| new.mask == page::full_mask(n))
        {
            (data, h())
        } else {
            raw = new_pages(data, new.mask);
            (&raw[..], block::hash(&raw))
        };
        let at = out.len();
        new.codec = block::encode_into(pages_bytes, out, self.shared.header.compression);
        new.hash = hash;
        new.at = at..out.len();
        Ok(BlockOut {
            pages,
            frame: Some(new),
        })
    }

    /// Block `b` (of `n` pages) as the previous point has it, page for page, without reading
    /// the source: for a source that knows the block unchanged (`Source::unchanged_blocks`).
    /// `None` when the previous point has nothing there (the block is then read).
    pub(super) fn reuse(&self, b: u64, n: usize) -> Result<Option<BlockOut>> {
        let (Some(prev), Some(entries)) = (self.prev, self.prev_entries(b)?) else {
            return Ok(None);
        };
        if entries.len() != n {
            return Ok(None);
        }
        let mut pages = Vec::with_capacity(n);
        for &e in entries.iter() {
            pages.push(match pagemap::decode_entry(e) {
                None => Page::Hole,
                Some(r) => {
                    let h = prev
                        .pack(self.shared, r.pack)
                        .map_err(|c| self.prev_error(c))?;
                    Page::At(h.pack.pack, r.frame, r.slot)
                }
            });
        }
        Ok(Some(BlockOut { pages, frame: None }))
    }

    /// When the previous point's `entries` are one whole frame in slot order whose hash is `h()`,
    /// the pages as that frame's.
    pub(super) fn same_frame(
        &self,
        entries: &[u64],
        h: impl Fn() -> u128,
    ) -> Result<Option<Vec<Page>>> {
        let Some(Some(first)) = entries.first().map(|&e| pagemap::decode_entry(e)) else {
            return Ok(None);
        };
        let one_frame = entries.iter().enumerate().all(|(i, &e)| {
            matches!(pagemap::decode_entry(e), Some(r) if r.pack == first.pack
                && r.frame == first.frame && usize::from(r.slot) == i)
        });
        if !one_frame || entries.len() * PAGE_SIZE != self.fs {
            return Ok(None);
        }
        let Some(prev) = self.prev else {
            return Ok(None);
        };
        let handle = prev
            .pack(self.shared, first.pack)
            .map_err(|c| self.prev_error(c))?;
        let entry = handle
            .frame(&self.shared.meta, first.frame)
            .map_err(|e| self.prev_error(pack_cause(e)))?;
        match entry {
            Some(e) if e.decoded_len() == self.fs && e.hash == h() => {
                let pack = handle.pack.pack;
                Ok(Some(
                    (0..entries.len())
                        .map(|s| Page::At(pack, first.frame, s as u8))
                        .collect(),
                ))
            }
            _ => Ok(None),
        }
    }
}

/// The pages of `data` (a block) that `mask` names, concatenated in slot order, the last one
/// padded with zeros to a whole page.
pub(super) fn new_pages(data: &[u8], mask: u16) -> Vec<u8> {
    let mut raw = Vec::with_capacity(mask.count_ones() as usize * PAGE_SIZE);
    for (slot, p) in data.chunks(PAGE_SIZE).enumerate() {
        if mask & (1 << slot) != 0 {
            raw.extend_from_slice(p);
            raw.resize(raw.len().next_multiple_of(PAGE_SIZE), 0);
        }
    }
    raw
}

/// The fingerprint of page `r` (its pack slot ignored) of pack `h`, or `None` when the pack does
/// not hold it.
pub(super) fn fingerprint_at(
    shared: &Shared,
    h: &FramePackHandle,
    r: PageRef,
) -> std::result::Result<Option<Fingerprint>, Cause> {
    let Some(e) = h.frame(&shared.meta, r.frame).map_err(pack_cause)? else {
        return Ok(None);
    };
    let Some(i) = e.page_fingerprint_index(r.slot) else {
        return Ok(None);
    };
    h.fingerprint(&shared.meta, i).map_err(pack_cause)
}
