//! Capturing one source disk into a disk restore point.
//!
//! A reader thread walks the source in batches, skipping holes with SEEK_DATA/SEEK_HOLE; each
//! batch is hashed (and compressed where changed) on all cores; new blocks are appended to the
//! point's pack in block order. A block whose hash equals the previous point's block at the same
//! number is not stored again: the new map points at the pack that already holds it. All-zero
//! blocks become holes.
//!
//! Invariants: the pack (if any) and then the block map are durable before this returns; nothing
//! here publishes a point record, so a failure or crash leaves only unreferenced files that
//! cleanup removes.

use std::sync::Arc;

use rayon::prelude::*;
use uuid::Uuid;

use super::Shared;
use super::error::{Error, Result};
use super::progress::Progress;
use super::read::{PackHandle, open_pack};
use super::source::Source;
use crate::store::block::{self, Encoded};
use crate::store::blockmap::{self, BlockMap};
use crate::store::layout;
use crate::store::pack::PackWriter;

/// Upper bound on one batch handed from the reader thread to the hashing workers.
const BATCH_BYTES: u64 = 8 << 20;

/// The previous disk restore point of the same disk, for change detection.
pub(crate) struct Previous {
    map: BlockMap,
    packs: Vec<Arc<PackHandle>>,
}

impl Previous {
    /// Loads the map of disk restore point `drp` and the tables of the packs it references.
    pub(crate) fn load(
        shared: &Shared,
        vm: Uuid,
        disk: Uuid,
        disk_name: &str,
        drp: Uuid,
    ) -> Result<Previous> {
        let key = layout::map(vm, disk, drp);
        let context =
            || format!("the previous restore point of disk '{disk_name}' (block map {key})");
        let bytes = shared.storage.read(&key).map_err(Error::io(context()))?;
        let map = BlockMap::decode(&key, &bytes, shared.header.block_size).map_err(|c| {
            Error::Damaged {
                context: context(),
                detail: c.to_string(),
            }
        })?;
        let packs = map
            .packs
            .iter()
            .map(|&p| open_pack(shared, vm, disk, p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Previous { map, packs })
    }

    /// (pack slot, content hash) of `block`, or `None` for a hole or a block past the end.
    fn stored(&self, block: u64) -> Option<(usize, u128)> {
        let e = *self.map.entries.get(block as usize)?;
        if e == 0 {
            return None;
        }
        let slot = e as usize - 1;
        let entry = self.packs[slot].index.find(block)?;
        Some((slot, entry.hash))
    }
}

/// What ingesting one disk produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub size: u64,
    pub new_blocks: u64,
    pub stored_bytes: u64,
    pub has_pack: bool,
    pub bytes_read: u64,
}

struct Batch {
    first: u64,
    mask: Vec<bool>,
    data: Vec<u8>,
    bytes_read: u64,
}

enum Class {
    Hole,
    /// Unchanged: the previous point's pack slot holds it.
    Same(usize),
    New(Encoded),
}

/// Map entries while ingesting: 0 hole, 1 the new pack, 2 + k the previous point's slot k.
const NEW_PACK: u32 = 1;

fn read_batches(
    source: &Source,
    block_size: u64,
    blocks: u64,
    tx: crossbeam_channel::Sender<Result<Batch>>,
) {
    let per_batch = (BATCH_BYTES / block_size).max(1);
    let mut first = 0;
    while first < blocks {
        let count = per_batch.min(blocks - first);
        let mask = source.data_blocks(first, count, block_size);
        let mut data = vec![0u8; (count * block_size) as usize];
        let mut bytes_read = 0;
        let mut i = 0usize;
        let mut result = Ok(());
        while i < mask.len() {
            if !mask[i] {
                i += 1;
                continue;
            }
            let run = mask[i..].iter().take_while(|m| **m).count();
            let (from, to) = (i * block_size as usize, (i + run) * block_size as usize);
            result = source.read_at(&mut data[from..to], (first + i as u64) * block_size);
            if result.is_err() {
                break;
            }
            bytes_read += (to - from) as u64;
            i += run;
        }
        let msg = result.map(|()| Batch {
            first,
            mask,
            data,
            bytes_read,
        });
        let failed = msg.is_err();
        if tx.send(msg).is_err() || failed {
            return;
        }
        first += count;
    }
}

/// Captures `source` as disk restore point `drp` of disk chain `disk`.
pub(crate) fn ingest(
    shared: &Shared,
    vm: Uuid,
    disk: Uuid,
    drp: Uuid,
    source: &Source,
    prev: Option<&Previous>,
    progress: &dyn Progress,
) -> Result<Ingested> {
    let bs = shared.header.block_size;
    let bsz = u64::from(bs);
    let size = source.info.size;
    let blocks = blockmap::block_count(size, bs);
    if blocks > blockmap::MAX_BLOCKS {
        return Err(Error::Unsupported(format!(
            "disk '{}' has {blocks} blocks of {bs} bytes, more than the {} a map can hold; \
             use a store with a larger block size",
            source.disk,
            blockmap::MAX_BLOCKS
        )));
    }
    let zero_hash = block::hash(&vec![0u8; bs as usize]);
    let pack_key = layout::pack(vm, disk, drp);
    let mut pack: Option<PackWriter> = None;
    let mut entries = vec![0u32; blocks as usize];
    let mut new_blocks = 0u64;
    let mut bytes_read = 0u64;

    let (tx, rx) = crossbeam_channel::bounded(2);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || read_batches(source, bsz, blocks, tx));
        for msg in rx {
            let batch = msg?;
            bytes_read += batch.bytes_read;
            let classes: Vec<Class> = batch
                .data
                .par_chunks(bs as usize)
                .zip(batch.mask.par_iter())
                .enumerate()
                .map(|(i, (data, &present))| {
                    let b = batch.first + i as u64;
                    if !present {
                        return Class::Hole;
                    }
                    let h = block::hash(data);
                    if h == zero_hash && block::is_zero(data) {
                        return Class::Hole;
                    }
                    match prev.and_then(|p| p.stored(b)) {
                        Some((slot, ph)) if ph == h => Class::Same(slot),
                        _ => Class::New(block::encode(data, h)),
                    }
                })
                .collect();
            for (i, class) in classes.into_iter().enumerate() {
                let b = batch.first + i as u64;
                entries[b as usize] = match class {
                    Class::Hole => 0,
                    Class::Same(slot) => 2 + slot as u32,
                    Class::New(enc) => {
                        let writer = match &mut pack {
                            Some(w) => w,
                            None => {
                                let out = shared
                                    .storage
                                    .create(&pack_key)
                                    .map_err(Error::io(format!("creating {pack_key}")))?;
                                pack.insert(
                                    PackWriter::new(out, drp, bs)
                                        .map_err(Error::io(format!("writing {pack_key}")))?,
                                )
                            }
                        };
                        writer
                            .append(b, &enc.bytes, enc.compressed, enc.hash)
                            .map_err(Error::io(format!("writing {pack_key}")))?;
                        new_blocks += 1;
                        NEW_PACK
                    }
                };
            }
            progress.advance((batch.mask.len() as u64 * bsz).min(size - batch.first * bsz));
        }
        Ok(())
    })?;

    let mut stored_bytes = 0;
    let has_pack = pack.is_some();
    if let Some(w) = pack {
        stored_bytes += w
            .finish()
            .map_err(Error::io(format!("publishing {pack_key}")))?;
    }

    // Renumber entries to the packs actually referenced, the new pack first.
    let prev_packs: &[Uuid] = prev.map(|p| p.map.packs.as_slice()).unwrap_or(&[]);
    let mut used = vec![false; prev_packs.len() + 2];
    for &e in &entries {
        used[e as usize] = true;
    }
    let mut renumber = vec![0u32; used.len()];
    let mut packs = Vec::new();
    for (raw, &is_used) in used.iter().enumerate().skip(1) {
        if is_used {
            packs.push(if raw as u32 == NEW_PACK {
                drp
            } else {
                prev_packs[raw - 2]
            });
            renumber[raw] = packs.len() as u32;
        }
    }
    for e in &mut entries {
        *e = renumber[*e as usize];
    }
    let map = BlockMap {
        block_size: bs,
        disk_size: size,
        packs,
        entries,
    };
    let map_key = layout::map(vm, disk, drp);
    let encoded = map.encode();
    shared
        .storage
        .put(&map_key, &encoded)
        .map_err(Error::io(format!("publishing {map_key}")))?;
    stored_bytes += encoded.len() as u64;
    Ok(Ingested {
        size,
        new_blocks,
        stored_bytes,
        has_pack,
        bytes_read,
    })
}
