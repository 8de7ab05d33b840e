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
//! `classify` holds the classification; this module runs the pipeline and writes the packs,
//! their index segments and the map.
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

mod classify;

use std::collections::HashMap;

use parking_lot::Mutex;
use uuid::Uuid;

use self::classify::{BlockOut, Classifier, Page};
use super::index::{self as dedup, IndexSet};
use super::read::PagedDisk;
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
use crate::store::page::{IdKey, PAGE_SIZE};
use crate::store::pagemap::{self, PageMapWriter, PageRef};
use crate::store::storage::AlignedBuf;

/// Upper bound on one batch.
const BATCH_BYTES: u64 = 4 << 20;
/// A pack is finished and a new one started after this many pages (4 GiB before compression),
/// which bounds a pack's repack and the index entries held in memory (40 MiB).
const PACK_PAGES: u32 = 1 << 20;

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
