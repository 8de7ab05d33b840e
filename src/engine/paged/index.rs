//! The store-wide dedup index as the engine uses it: the set of published segments a creation
//! looks new pages up in, publishing a segment for each new pack, and compaction.
//!
//! Invariants: a segment is published only after the pack it names (so every entry names a
//! pack that was whole when the entry appeared); an entry is only ever a *candidate* — a
//! creation accepts it only after checking, in the pack as it is now, that the slot is present
//! and holds a page with the same fingerprint (`ingest`). So a stale entry (its pack swept or
//! repacked) or a damaged segment costs a missed saving, never wrong data, and index trouble never
//! fails a creation. Compaction runs under the index lock, writes the merged segment before it
//! removes its inputs, and drops entries whose pack is gone.

use std::sync::Arc;

use uuid::Uuid;

use super::meta::{Meta, MetaCache, MetaKey};
use crate::engine::error::{Error, Result};
use crate::engine::shared::Shared;
use crate::store::index::{self, IndexEntry, Segment};
use crate::store::layout::{self, Name};
use crate::store::page::PageId;
use crate::store::storage::{Object, Storage};

/// Segments beyond this many are merged into one after a creation.
const COMPACT_AT: usize = 16;
/// Lock serialising compactions.
const INDEX_LOCK: &str = "index";

/// The segments a creation looks pages up in.
#[derive(Default)]
pub(crate) struct IndexSet {
    segments: Vec<OpenSegment>,
}

struct OpenSegment {
    id: Uuid,
    key: String,
    obj: Arc<dyn Object>,
    segment: Segment,
}

impl IndexSet {
    /// Opens every published segment; one that cannot be opened is left out (with a warning):
    /// only its savings are lost.
    pub(crate) fn open(storage: &dyn Storage) -> IndexSet {
        let mut segments = Vec::new();
        for (id, key) in segment_keys(storage) {
            let opened = storage
                .open(&key)
                .map_err(|e| e.to_string())
                .and_then(|obj| {
                    Segment::open(&key, &*obj)
                        .map(|s| (obj, s))
                        .map_err(|e| e.to_string())
                });
            match opened {
                Ok((obj, segment)) => segments.push(OpenSegment {
                    id,
                    key,
                    obj,
                    segment,
                }),
                Err(why) => tracing::warn!("dedup index segment {key} left out: {why}"),
            }
        }
        IndexSet { segments }
    }

    /// Candidate locations of a page with id `id`, newest segment first. Blocks are read
    /// through `cache` (a clone's first point looks up every frame of its template, whose
    /// ids fill each block many times over).
    pub(crate) fn candidates<'a>(
        &'a self,
        id: &'a PageId,
        cache: &'a MetaCache,
    ) -> impl Iterator<Item = IndexEntry> + 'a {
        self.segments.iter().rev().filter_map(move |s| {
            if !s.segment.may_contain(id) {
                return None;
            }
            let rows = |b: usize| {
                // A segment has at most u32::MAX blocks (checked at open).
                let ck = MetaKey::IndexBlock(s.id, u32::try_from(b).unwrap_or(u32::MAX));
                if let Some(Meta::IndexRows(r)) = cache.get(&ck) {
                    return Ok(r);
                }
                let r = s.segment.block_rows(&s.key, &*s.obj, b)?;
                cache.insert(ck, Meta::IndexRows(r.clone()));
                Ok(r)
            };
            match s.segment.lookup_via(&s.key, id, rows) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!("dedup index lookup failed: {e}");
                    None
                }
            }
        })
    }
}

/// Ids and keys of every published segment, oldest name first (names are random: order is
/// only stable).
fn segment_keys(storage: &dyn Storage) -> Vec<(Uuid, String)> {
    let names = storage.list(layout::INDEX).unwrap_or_default();
    names
        .into_iter()
        .filter_map(|n| match layout::classify(&n) {
            Name::Segment(id) => Some((id, layout::segment(id))),
            _ => None,
        })
        .collect()
}

/// Publishes a segment of `entries` (any order; duplicates of an id keep the first).
pub(crate) fn publish(storage: &dyn Storage, mut entries: Vec<IndexEntry>) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    index::sort_run(&mut entries);
    let key = layout::segment(Uuid::new_v4());
    let out = storage
        .create(&key)
        .map_err(Error::io(format!("creating {key}")))?;
    index::write_segment(out, entries).map_err(Error::io(format!("publishing {key}")))?;
    Ok(())
}

/// Merges every segment into one when there are more than [`COMPACT_AT`], dropping entries of
/// packs that no longer exist. Best effort: another compaction running, or any failure, leaves
/// the segments as they are.
pub(crate) fn compact(shared: &Shared) {
    let storage = &*shared.storage;
    let keys: Vec<String> = segment_keys(storage).into_iter().map(|(_, k)| k).collect();
    if keys.len() <= COMPACT_AT {
        return;
    }
    let Ok(Some(_lock)) = storage.try_lock(INDEX_LOCK) else {
        return;
    };
    if let Err(e) = merge_all(storage, &keys) {
        tracing::warn!("compacting the dedup index: {e}");
    }
}

fn merge_all(storage: &dyn Storage, keys: &[String]) -> Result<()> {
    let mut opened = Vec::new();
    for key in keys {
        let obj = storage
            .open(key)
            .map_err(Error::io(format!("opening {key}")))?;
        let seg = Segment::open(key, &*obj).map_err(|e| Error::Io {
            context: format!("opening {key}"),
            source: std::io::Error::other(e.to_string()),
        })?;
        opened.push((key.clone(), obj, seg));
    }
    let mut exists = std::collections::HashMap::<Uuid, bool>::new();
    let inputs: Vec<_> = opened
        .iter()
        .rev()
        .map(|(key, obj, seg)| seg.iter(key, &**obj))
        .collect();
    let merged = index::merge(inputs, |e: &IndexEntry| {
        *exists
            .entry(e.pack)
            .or_insert_with(|| storage.size(&layout::shared_pack(e.pack)).is_ok())
    });
    let key = layout::segment(Uuid::new_v4());
    let out = storage
        .create(&key)
        .map_err(Error::io(format!("creating {key}")))?;
    let mut failure = None;
    let entries = merged.map_while(|r| match r {
        Ok(e) => Some(e),
        Err(e) => {
            failure = Some(e.to_string());
            None
        }
    });
    let mut w = index::SegmentWriter::new(out).map_err(Error::io(format!("writing {key}")))?;
    for e in entries {
        w.push(e).map_err(Error::io(format!("writing {key}")))?;
    }
    if let Some(why) = failure {
        // Dropping the writer publishes nothing.
        return Err(Error::Io {
            context: format!("merging into {key}"),
            source: std::io::Error::other(why),
        });
    }
    w.finish().map_err(Error::io(format!("publishing {key}")))?;
    for key in keys {
        let _ = crate::store::storage::remove_if_present(storage, key);
    }
    Ok(())
}
