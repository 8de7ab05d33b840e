//! Capturing one source disk into a format-2 disk restore point.
//!
//! The pipeline is format 1's (`engine::pipeline`): workers read 4 MiB batches and classify
//! them, the consumer appends in disk order. Each frame-sized block is classified page by page:
//! - **hole**: an all-zero page;
//! - **same**: its fingerprint equals the previous point's page at the same offset (checked
//!   first for the whole block against the previous frame's hash, which costs what format 1's
//!   block compare did), so the new map names the same `(pack, frame, slot)`;
//! - **found**: the whole frame's id (a hash of its pages' BLAKE3 ids) is in the dedup index (a
//!   clone's unchanged block: one lookup for all its pages), or the page's BLAKE3 id is (another
//!   disk, VM or point stored it) and the candidate checks out in its pack (slot present, same
//!   fingerprint), or an earlier page of the same batch has it;
//! - **new**: otherwise. A block's new pages are compressed together as one frame.
//!
//! A block its source knows unchanged since the previous point (only `rpfs migrate`'s sources
//! know this, from the old store's map) is taken page for page from the previous point's map
//! without being read.
//!
//! The new frames go into store-wide packs (`data/`), rolled over every [`PACK_PAGES`] pages;
//! each pack is published, then its index segment, then (after every pack) the map.
//!
//! Invariants: nothing here publishes a point record, so a failure or crash leaves only packs,
//! segments and a map no committed point references; those are the sweep's to remove (a new pack
//! may already be named by a concurrent creation's map through the index, so it is never removed
//! here). The caller holds the store's creation lock shared, so no sweep runs meanwhile and every
//! page a map names stays where it is.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;

use super::index::{self as dedup, IndexSet};
use super::meta::FramePackHandle;
use super::read::{BlockEntries, Cause, PagedDisk, pack_cause};
use crate::engine::error::{Error, Result};
use crate::engine::ingest::Ingested;
use crate::engine::pipeline::{self, Numbered};
use crate::engine::progress::Progress;
use crate::engine::shared::Shared;
use crate::engine::source::Source;
use crate::store::block;
use crate::store::frames::{self, FrameWriter};
use crate::store::index::IndexEntry;
use crate::store::layout;
use crate::store::page::{self, Fingerprint, IdKey, MAX_FRAME_PAGES, PAGE_SIZE, PageId};
use crate::store::pagemap::{self, PageMapWriter, PageRef};
use crate::store::storage::AlignedBuf;

/// Upper bound on one batch.
const BATCH_BYTES: u64 = 4 << 20;
/// A pack is finished and a new one started after this many pages (4 GiB before compression),
/// which bounds a pack's repack and the index entries held in memory (40 MiB).
const PACK_PAGES: u32 = 1 << 20;

/// What a page of a block turned out to be.
#[derive(Debug, Clone, Copy)]
enum Page {
    Hole,
    /// Stored already: pack, frame, slot.
    At(Uuid, u32, u8),
    /// New, in this block's frame.
    New,
    /// Same bytes as a new page of an earlier block of the batch: (block in batch, slot).
    Earlier(usize, u8),
}

/// One block's classification, and its new frame if it has new pages.
struct BlockOut {
    pages: Vec<Page>,
    frame: Option<NewFrame>,
}

struct NewFrame {
    mask: u16,
    codec: block::Codec,
    hash: u128,
    /// Range of the encoded frame in the batch's output buffer.
    at: std::ops::Range<usize>,
    fingerprints: Vec<Fingerprint>,
    ids: Vec<PageId>,
    /// The id of the whole frame (`IdKey::frame_id`), when every page of it is new.
    frame_id: Option<PageId>,
}

struct Buffers {
    data: AlignedBuf,
    out: Vec<u8>,
}

struct Batch {
    index: u64,
    covered: u64,
    bytes_read: u64,
    blocks: Vec<BlockOut>,
    bufs: Buffers,
}

impl Numbered for Batch {
    fn number(&self) -> u64 {
        self.index
    }
}

/// What workers share to classify blocks.
struct Classifier<'a> {
    shared: &'a Shared,
    fs: usize,
    prev: Option<&'a PagedDisk>,
    index: &'a IndexSet,
    ids: &'a IdKey,
    /// Packs opened by [`Classifier::opened`].
    fresh: Mutex<HashMap<Uuid, Option<Arc<FramePackHandle>>>>,
}

impl Classifier<'_> {
    /// The previous point's entries for `block`, or `None` (no previous point, or holes).
    fn prev_entries(&self, block: u64) -> Result<Option<BlockEntries>> {
        let Some(prev) = self.prev else {
            return Ok(None);
        };
        prev.block_entries(self.shared, block)
            .map_err(|c| self.prev_error(c))
    }

    fn prev_error(&self, cause: Cause) -> Error {
        cause.into_error("the previous restore point of the disk".to_string())
    }

    /// The previous point's page behind `entry`: its location and fingerprint.
    fn prev_page(&self, entry: u64) -> Result<Option<(Uuid, PageRef, Fingerprint)>> {
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
    fn found(&self, id: &PageId, fp: Fingerprint) -> Option<(Uuid, u32, u8)> {
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
    fn opened(&self, pack: Uuid) -> Option<Arc<FramePackHandle>> {
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
    fn found_frame(&self, fid: &PageId, h: u128) -> Option<Vec<Page>> {
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
    fn classify(
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
    fn reuse(&self, b: u64, n: usize) -> Result<Option<BlockOut>> {
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
    fn same_frame(&self, entries: &[u64], h: impl Fn() -> u128) -> Result<Option<Vec<Page>>> {
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
fn new_pages(data: &[u8], mask: u16) -> Vec<u8> {
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
fn fingerprint_at(
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

/// Reads batch `index` into `bufs` and classifies its blocks.
fn read_batch(
    source: &Source,
    c: &Classifier<'_>,
    (blocks, per_batch): (u64, u64),
    index: u64,
    mut bufs: Buffers,
) -> Result<Batch> {
    let fs = c.fs as u64;
    let size = source.info.size;
    let first = index * per_batch;
    let count = per_batch.min(blocks - first);
    let covered = (count * fs).min(size - first * fs);
    let mut mask = source.data_blocks(first, count, fs);
    // Blocks a migrated source knows unchanged are the previous point's: not read.
    let mut reused: Vec<Option<BlockOut>> = (0..count).map(|_| None).collect();
    if let Some(unchanged) = source.unchanged_blocks(first, count, fs) {
        for (i, (m, u)) in mask.iter_mut().zip(unchanged).enumerate() {
            if *m && u {
                let len = (covered - i as u64 * fs).min(fs) as usize;
                reused[i] = c.reuse(first + i as u64, len.div_ceil(PAGE_SIZE))?;
                *m = reused[i].is_none();
            }
        }
    }
    // One read from the first block with data to the last (holes between cost a file nothing);
    // around reused blocks, one read per run of blocks to read, since they would cost a decode.
    let any_reused = reused.iter().any(Option::is_some);
    let mut at = 0;
    while let Some(a) = mask[at..].iter().position(|m| *m).map(|a| a + at) {
        let b = if any_reused {
            mask[a..]
                .iter()
                .position(|m| !*m)
                .map_or(mask.len(), |n| a + n)
                - 1
        } else {
            mask.iter().rposition(|m| *m).unwrap_or(a)
        };
        let from = a * c.fs;
        let to = ((b + 1) * c.fs).min(covered as usize);
        source.read_at(
            &mut bufs.data.as_mut_slice()[from..to],
            (first + a as u64) * fs,
        )?;
        at = b + 1;
    }
    let bytes_read = mask.iter().filter(|m| **m).count() as u64 * fs;
    let data = &bufs.data.as_slice()[..covered as usize];
    bufs.out.clear();
    let mut earlier = HashMap::new();
    let mut out_blocks = Vec::with_capacity(count as usize);
    for (i, (&present, block_data)) in mask.iter().zip(data.chunks(c.fs)).enumerate() {
        let b = first + i as u64;
        if let Some(block) = reused[i].take() {
            out_blocks.push(block);
            continue;
        }
        out_blocks.push(if present {
            c.classify(b, block_data, &mut earlier, i, &mut bufs.out)?
        } else {
            BlockOut {
                pages: vec![Page::Hole; block_data.len().div_ceil(PAGE_SIZE)],
                frame: None,
            }
        });
    }
    Ok(Batch {
        index,
        covered,
        bytes_read,
        blocks: out_blocks,
        bufs,
    })
}

/// One disk to capture into disk restore point `drp` of `vm`.
pub(crate) struct DiskJob<'a> {
    pub vm: Uuid,
    pub disk: Uuid,
    pub drp: Uuid,
    pub source: &'a Source,
    pub prev: Option<&'a PagedDisk>,
    pub index: &'a IndexSet,
    pub readers: usize,
}

/// The pack being written and the index entries of its new pages.
struct OpenPack {
    id: Uuid,
    key: String,
    writer: FrameWriter,
    entries: Vec<IndexEntry>,
}

/// What a format-2 ingest adds to format 1's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PagedIngested {
    pub ingested: Ingested,
    /// Pages found stored elsewhere (another disk, VM or an earlier point's other offset).
    pub found_pages: u64,
    /// Packs this ingest published.
    pub packs: Vec<Uuid>,
}

/// Captures one disk; see [`DiskJob`].
pub(crate) fn ingest(
    shared: &Shared,
    job: &DiskJob<'_>,
    progress: &dyn Progress,
) -> Result<PagedIngested> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = job.readers.max(1) + cores;
    let buffers = workers + 2;
    let fs = shared.header.block_size;
    let fsz = u64::from(fs);
    let source = job.source;
    let size = source.info.size;
    let pages = pagemap::page_count(size);
    if pages > pagemap::MAX_PAGES {
        return Err(Error::Unsupported(format!(
            "disk '{}' has {pages} pages of 4 KiB, more than the {} a map can hold",
            source.disk,
            pagemap::MAX_PAGES
        )));
    }
    let blocks = size.div_ceil(fsz);
    let ids = IdKey::Unkeyed;
    let classifier = Classifier {
        shared,
        fs: fs as usize,
        prev: job.prev,
        index: job.index,
        ids: &ids,
        fresh: Mutex::default(),
    };
    let map_key = layout::map(job.vm, job.disk, job.drp);
    let map_out = shared
        .storage
        .create(&map_key)
        .map_err(Error::io(format!("creating {map_key}")))?;
    let mut map =
        PageMapWriter::new(map_out, size, fs).map_err(Error::io(format!("writing {map_key}")))?;
    let mut pack: Option<OpenPack> = None;
    let mut result = PagedIngested::default();
    let mut stored_bytes = 0u64;
    let mut new_pages = 0u64;
    let mut bytes_read = 0u64;

    let per_batch = (BATCH_BYTES / fsz).max(1);
    let batches = blocks.div_ceil(per_batch);
    let pool = (0..buffers)
        .map(|_| Buffers {
            data: AlignedBuf::new((per_batch * fsz) as usize),
            // The last frame is encoded into room for the worst case (`block::encode_into`).
            out: Vec::with_capacity(
                (per_batch * fsz) as usize + block::compress_bound(fs as usize),
            ),
        })
        .collect();
    let make = |index, bufs| read_batch(source, &classifier, (blocks, per_batch), index, bufs);
    // A page in one of these is the previous point's; anywhere else it was found stored.
    let prev_packs: std::collections::HashSet<Uuid> = job
        .prev
        .map(|p| p.map().packs.iter().copied().collect())
        .unwrap_or_default();
    let mut entries: Vec<u64> = Vec::with_capacity((per_batch * fsz) as usize / PAGE_SIZE);
    pipeline::run(workers, pool, batches, make, |batch: Batch| {
        bytes_read += batch.bytes_read;
        entries.clear();
        // Where each block's new frame went: (pack, frame).
        let mut placed: Vec<Option<(Uuid, u32)>> = Vec::with_capacity(batch.blocks.len());
        for blk in &batch.blocks {
            let mut at = None;
            if let Some(f) = &blk.frame {
                if pack
                    .as_ref()
                    .is_some_and(|p| p.writer.pages() >= PACK_PAGES)
                {
                    let done = pack.take().map(|p| finish_pack(shared, p));
                    if let Some(done) = done {
                        let (id, bytes) = done?;
                        result.packs.push(id);
                        stored_bytes += bytes;
                    }
                }
                let p = match &mut pack {
                    Some(p) => p,
                    None => pack.insert(start_pack(shared, job.vm, fs)?),
                };
                let stored = frames::StoredFrame {
                    hash: f.hash,
                    codec: f.codec,
                    bytes: &batch.bufs.out[f.at.clone()],
                };
                let frame = p
                    .writer
                    .append(f.mask, stored, &f.fingerprints)
                    .map_err(Error::io(format!("writing {}", p.key)))?;
                let slots = (0..16u8).filter(|s| f.mask & (1 << s) != 0);
                if let Some(fid) = f.frame_id {
                    p.entries.push(IndexEntry {
                        id: fid,
                        pack: p.id,
                        frame,
                        slot: 0,
                    });
                }
                for (slot, id) in slots.zip(&f.ids) {
                    p.entries.push(IndexEntry {
                        id: *id,
                        pack: p.id,
                        frame,
                        slot,
                    });
                }
                new_pages += u64::from(f.mask.count_ones());
                at = Some((p.id, frame));
            }
            placed.push(at);
            for (slot, pg) in blk.pages.iter().enumerate() {
                let r = match *pg {
                    Page::Hole => None,
                    Page::At(id, frame, s) => {
                        if !prev_packs.contains(&id) {
                            result.found_pages += 1;
                        }
                        Some((id, frame, s))
                    }
                    Page::New => at.map(|(id, frame)| (id, frame, slot as u8)),
                    Page::Earlier(b, s) => {
                        result.found_pages += 1;
                        placed
                            .get(b)
                            .copied()
                            .flatten()
                            .map(|(id, frame)| (id, frame, s))
                    }
                };
                entries.push(pagemap::encode_entry(r.map(|(id, frame, slot)| PageRef {
                    pack: map.pack_slot(id),
                    frame,
                    slot,
                })));
            }
        }
        map.push(&entries)
            .map_err(Error::io(format!("writing {map_key}")))?;
        progress.advance(batch.covered);
        Ok(batch.bufs)
    })?;
    if let Some(p) = pack.take() {
        let (id, bytes) = finish_pack(shared, p)?;
        result.packs.push(id);
        stored_bytes += bytes;
    }
    let info = map
        .finish()
        .map_err(Error::io(format!("publishing {map_key}")))?;
    stored_bytes += info.stored_len;
    result.ingested = Ingested {
        size,
        new_blocks: new_pages,
        stored_bytes,
        has_pack: false,
        bytes_read,
        found_pages: result.found_pages,
    };
    Ok(result)
}

fn start_pack(shared: &Shared, vm: Uuid, fs: u32) -> Result<OpenPack> {
    let id = Uuid::new_v4();
    let key = layout::shared_pack(id);
    let out = shared
        .storage
        .create(&key)
        .map_err(Error::io(format!("creating {key}")))?;
    let writer = FrameWriter::new(out, id, vm, fs).map_err(Error::io(format!("writing {key}")))?;
    Ok(OpenPack {
        id,
        key,
        writer,
        entries: Vec::new(),
    })
}

/// Publishes a pack, then the index segment of its pages; returns its id and length.
fn finish_pack(shared: &Shared, p: OpenPack) -> Result<(Uuid, u64)> {
    let len = p
        .writer
        .finish()
        .map_err(Error::io(format!("publishing {}", p.key)))?;
    dedup::publish(&*shared.storage, p.entries)?;
    Ok((p.id, len))
}

/// Reads the previous point's map of a disk for change detection.
pub(crate) fn previous(shared: &Shared, vm: Uuid, disk: Uuid, drp: Uuid) -> Result<PagedDisk> {
    let key = layout::map(vm, disk, drp);
    PagedDisk::open(shared, drp, &key).map_err(|cause| {
        cause.into_error(format!(
            "the previous restore point of the disk (page map {key})"
        ))
    })
}
