//! The `read_data` part of a format-2 check: frames read back against their hashes and their
//! pages' fingerprints, index entries against the ids of the pages they name, and each damaged
//! frame named by the points, disks and blocks that reference it.
//!
//! Invariants: nothing here changes the store. [`verify_frame`] says why a frame is damaged (its
//! hash or a page's fingerprint); the rest skips what it cannot read, so nothing is reported
//! twice: a map or pack that no longer opens changed under check (`super` read it before and
//! reported what it could not read), and a frame that does not decode is `verify_frame`'s to
//! report. Memory is bounded by one decoded frame per verifying task and [`ID_BATCH`] index
//! entries at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use crate::engine::Engine;
use crate::engine::paged::meta::FramePackHandle;
use crate::engine::report::CheckReport;
use crate::engine::shared::Shared;
use crate::store::frames::FrameEntry;
use crate::store::index::IndexEntry;
use crate::store::layout;
use crate::store::page::{self, IdKey, PAGE_SIZE};
use crate::store::pagemap::{self, PageMap};

/// A committed map, for naming the points that reference damaged frames.
pub(super) struct MapRef {
    pub(super) key: String,
    /// "c1/p1"
    pub(super) point: String,
    /// "restore point c1/p1 disk 'os'"
    pub(super) label: String,
}

/// Names each block of a committed point whose pages are in a frame of `damaged` (pack,
/// frame index -> why) by point, disk and offset, as format 1 names damaged blocks.
pub(super) fn name_damage(
    maps: &[MapRef],
    engine: &Engine,
    damaged: &HashMap<(Uuid, u32), String>,
    report: &mut CheckReport,
) {
    let shared = &engine.shared;
    let storage = &*shared.storage;
    let frame_size = u64::from(shared.header.block_size);
    let slots = u64::from(page::frame_slots(shared.header.block_size));
    let mut reported: BTreeSet<(Uuid, u32)> = BTreeSet::new();
    for m in maps {
        // Every map here opened and read before; one that fails now changed under check.
        let Ok(obj) = storage.open(&m.key) else {
            continue;
        };
        let Ok(map) = PageMap::open(&m.key, &*obj) else {
            continue;
        };
        let mut hits: BTreeMap<u64, &str> = BTreeMap::new();
        for i in 0..map.map_pages() {
            if map.page_is_hole(i) {
                continue;
            }
            let Ok(entries) = map.read_page(&m.key, &*obj, i) else {
                continue;
            };
            let first = u64::from(i) * pagemap::ENTRIES_PER_PAGE as u64;
            for (j, &e) in entries.iter().enumerate() {
                let Some(r) = pagemap::decode_entry(e) else {
                    continue;
                };
                let k = (map.packs[r.pack as usize - 1], r.frame);
                if let Some(why) = damaged.get(&k) {
                    hits.entry((first + j as u64) / slots).or_insert(why);
                    reported.insert(k);
                }
            }
        }
        if !hits.is_empty() {
            report.damaged_points.insert(m.point.clone());
        }
        for (b, why) in hits {
            report.problems.push(format!(
                "{} block {b} (offset {}): damaged: {why}",
                m.label,
                b * frame_size
            ));
        }
    }
    let mut rest: Vec<_> = damaged
        .iter()
        .filter(|(k, _)| !reported.contains(k))
        .collect();
    rest.sort();
    for ((pack, f), why) in rest {
        report.problems.push(format!(
            "pack {} frame {f} (referenced by no point): damaged: {why}",
            layout::shared_pack(*pack)
        ));
    }
}

/// Index entries whose ids are compared with their pages' bytes at a time (each frame decoded
/// once per batch); bounds the memory of checking a large segment.
pub(super) const ID_BATCH: usize = 1 << 16;

/// Empties `batch` (entries naming present pages), returning how many name a page whose bytes
/// have another id, and how many are stale. An entry naming a whole full frame at slot 0 has the
/// frame's id; once a sweep freed some of that frame's pages, it names no whole frame any more:
/// stale, not damage (ingest adopts a frame only whole and with its hash, so it skips such an
/// entry as it skips one naming a freed page). A frame that does not decode is skipped:
/// `read_data` reports it.
pub(super) fn wrong_ids(shared: &Shared, batch: &mut Vec<IndexEntry>) -> (u64, u64) {
    // Page ids are unkeyed until the store has an identity key (as ingest computes them).
    let ids = IdKey::Unkeyed;
    batch.sort_unstable_by_key(|e| (e.pack, e.frame));
    let (mut wrong, mut stale) = (0u64, 0u64);
    for group in batch.chunk_by(|a, b| (a.pack, a.frame) == (b.pack, b.frame)) {
        let first = &group[0];
        let Ok(h) = shared
            .frame_packs
            .open(&*shared.storage, shared.header.block_size, first.pack)
        else {
            continue;
        };
        let Ok(Some(f)) = h.frame(&shared.meta, first.frame) else {
            continue;
        };
        let mut out = vec![0u8; f.decoded_len()];
        if h.pack.read_frame(&*h.object, &f, &mut out).is_err() {
            continue;
        }
        // Every present page's id, once; and the id of a whole full frame (slot 0), for
        // entries that name a frame, not a page.
        let (pages, _) = out.as_chunks::<PAGE_SIZE>();
        let mut hashed = [[0u8; 32]; page::MAX_FRAME_PAGES];
        ids.page_ids(&pages.iter().collect::<Vec<_>>(), &mut hashed);
        let hashed = &hashed[..pages.len()];
        let whole = out.len() == shared.header.block_size as usize;
        let frame_id = whole.then(|| ids.frame_id(hashed));
        for e in group {
            let page_id = page::ordinal(f.mask, e.slot).and_then(|o| hashed.get(o));
            let whole_frame = e.slot == 0 && frame_id == Some(e.id);
            if whole_frame || page_id == Some(&e.id) {
                continue;
            }
            if e.slot == 0 && !whole {
                stale += 1;
            } else {
                wrong += 1;
            }
        }
    }
    batch.clear();
    (wrong, stale)
}

/// Decodes frame `e` of pack `h` (verifying its hash) and compares each of its pages with the
/// pack's fingerprint of it; the reason when either fails.
pub(super) fn verify_frame(
    shared: &Shared,
    h: &FramePackHandle,
    e: &FrameEntry,
) -> std::result::Result<(), String> {
    let mut out = vec![0u8; e.decoded_len()];
    h.pack
        .read_frame(&*h.object, e, &mut out)
        .map_err(|err| err.to_string())?;
    for (ord, bytes) in out.chunks_exact(PAGE_SIZE).enumerate() {
        let index = e.first_page.saturating_add(ord as u32);
        match h.fingerprint(&shared.meta, index) {
            Ok(Some(fp)) if fp == page::fingerprint(bytes) => {}
            Ok(Some(_)) => return Err(format!("page {ord} does not match its fingerprint")),
            Ok(None) => return Err(format!("page {ord} has no fingerprint")),
            Err(err) => return Err(format!("fingerprints cannot be read: {err}")),
        }
    }
    Ok(())
}
