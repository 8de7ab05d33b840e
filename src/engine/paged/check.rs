//! Checking and repairing a format-2 store: page maps, the store-wide frame packs they reference,
//! and the dedup index (see `engine::check` for what is common to both formats).
//!
//! Per disk restore point (under its VM's lock): the map opens, every map page reads, every
//! entry's pack exists and opens, its frame exists (its table chunk reads) and holds the slot,
//! and the map's summary (what a sweep marks) equals what its entries imply. Store-wide, once
//! every VM was read: packs and pages no committed map references, temporaries under `data/` and
//! `index/`, and a `gc-owed` marker are *notes*, not damage (a sweep frees them); every index
//! segment opens and verifies (a damaged one is a problem; an entry naming a freed page is stale,
//! a note: lookups skip it). With `read_data`, every referenced frame is decoded (its hash
//! verified) and every page of it compared with its fingerprint, and every index entry naming a
//! present page is compared with that page's id (a mismatch would make future points link wrong
//! bytes: the segment is damaged); damage is named by point, disk and block, as format 1 names
//! it. That reading back and naming is `verify`'s.
//!
//! Invariants: check changes nothing; it holds each VM's lock while reading its maps and the
//! creation lock shared during the store-wide part (so no sweep repacks a pack it reads whole);
//! memory is bounded by the set of referenced pages (a `RefSet`), at most `OPEN_PACKS` open
//! packs, the metadata cache, and `verify::ID_BATCH` index entries.
//!
//! Repair: damaged segments are removed (only dedup savings are lost: nothing references a
//! segment); unreferenced packs and pages are freed by the sweep (`gc::sweep`), and only when
//! every record and map of the store was read and every summary agreed with its entries, since a
//! sweep marks by summaries. Damaged points are named, never removed (as format 1).

mod verify;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rayon::prelude::*;
use uuid::Uuid;

use super::gc;
use super::meta::FramePackHandle;
use crate::engine::Engine;
use crate::engine::error::{Error, Result};
use crate::engine::packs::OpenError;
use crate::engine::progress::Progress;
use crate::engine::report::{CheckReport, ranges};
use crate::store::frames::FrameEntry;
use crate::store::index::{IndexEntry, Segment, SegmentError};
use crate::store::layout::{self, Name};
use crate::store::pack::PackError;
use crate::store::page::{self, PAGE_SHIFT};
use crate::store::pagemap::{self, PageMap};
use crate::store::records::PointRecord;
use crate::store::refs::{RefSet, RefSetBuilder};
use crate::store::storage::{LockGuard, Storage, remove_if_present};
use verify::{ID_BATCH, MapRef, name_damage, verify_frame, wrong_ids};

/// Packs kept open at once by a check.
const OPEN_PACKS: usize = 64;

/// What the per-VM part of a format-2 check gathered for the store-wide part.
#[derive(Default)]
pub(crate) struct PagedCheck {
    /// Every pack a committed map references: whether it opens (if not, that was reported).
    packs: BTreeMap<Uuid, bool>,
    /// Some of them open, at most `OPEN_PACKS` (a store may hold more packs than a process
    /// may open files).
    open: HashMap<Uuid, Arc<FramePackHandle>>,
    /// Table chunks already reported damaged.
    bad_chunks: BTreeSet<(Uuid, u32)>,
    /// Every page the committed maps' entries reference.
    live: RefSet,
    maps: Vec<MapRef>,
    /// False once a map or summary could not be read or disagreed with its entries: what the
    /// store references is then not known, and no sweep may run.
    certain: bool,
}

impl PagedCheck {
    pub(crate) fn new() -> PagedCheck {
        PagedCheck {
            certain: true,
            ..PagedCheck::default()
        }
    }

    /// Marks the store uncertain (a record could not be read: it may reference anything).
    pub(crate) fn uncertain(&mut self) {
        self.certain = false;
    }

    /// Pack `pack`, open; `None` when it is missing or damaged (reported the first time).
    fn pack(
        &mut self,
        engine: &Engine,
        pack: Uuid,
        report: &mut CheckReport,
    ) -> Option<Arc<FramePackHandle>> {
        if self.packs.get(&pack) == Some(&false) {
            return None;
        }
        if let Some(h) = self.open.get(&pack) {
            return Some(h.clone());
        }
        let shared = &engine.shared;
        match shared
            .frame_packs
            .open(&*shared.storage, shared.header.block_size, pack)
        {
            Ok(h) => {
                if self.open.len() >= OPEN_PACKS {
                    self.open.clear();
                }
                self.open.insert(pack, h.clone());
                self.packs.insert(pack, true);
                Some(h)
            }
            Err(e) => {
                let key = layout::shared_pack(pack);
                report.problems.push(match e {
                    OpenError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        format!("pack {key}: missing")
                    }
                    OpenError::Io { source, .. } => format!("pack {key}: {source}"),
                    OpenError::Corrupt(c) => format!("pack {key}: {c}"),
                });
                self.packs.insert(pack, false);
                None
            }
        }
    }

    /// The table entry of `frame` of open pack `h`: `Ok(None)` when the pack has no such frame,
    /// `Err(())` when its table chunk is damaged (reported once).
    fn frame(
        &mut self,
        engine: &Engine,
        h: &FramePackHandle,
        frame: u32,
        report: &mut CheckReport,
    ) -> std::result::Result<Option<FrameEntry>, ()> {
        let pack = h.pack.pack;
        let chunk = crate::store::frames::table_position(frame).0;
        if self.bad_chunks.contains(&(pack, chunk)) {
            return Err(());
        }
        match h.frame(&engine.shared.meta, frame) {
            Ok(e) => Ok(e),
            Err(e) => {
                report.problems.push(format!("pack {}: {e}", h.key));
                self.bad_chunks.insert((pack, chunk));
                Err(())
            }
        }
    }

    /// Checks the maps of one disk of a VM (its directory `vms/<vm>/disks/<disk>`): `drps` are
    /// the committed points' disk restore points. Returns whether every map could be read.
    #[allow(
        clippy::too_many_arguments,
        reason = "as format 1's check_disk: one disk's check reads all of its context"
    )]
    pub(crate) fn check_disk(
        &mut self,
        engine: &Engine,
        vm: Uuid,
        disk: Uuid,
        drps: &[(&PointRecord, Uuid)],
        short: &dyn Fn(&PointRecord) -> String,
        report: &mut CheckReport,
    ) -> Result<bool> {
        let storage: &dyn Storage = &*engine.shared.storage;
        let frame_size = engine.shared.header.block_size;
        let slots = u64::from(page::frame_slots(frame_size));
        let dir = layout::disk_dir(vm, disk);
        let names = storage
            .list(&dir)
            .map_err(Error::io(format!("listing {dir}")))?;
        let mut certain = true;
        for (p, drp) in drps {
            report.disk_points += 1;
            let d = p.disks.iter().find(|d| d.drp_id == *drp);
            let label = format!(
                "restore point {} disk '{}'",
                short(p),
                d.map_or("?", |d| d.name.as_str())
            );
            let problems_before = report.problems.len();
            let key = layout::map(vm, disk, *drp);
            let opened = storage
                .open(&key)
                .map_err(|e| format!("page map {key}: {e}"))
                .and_then(|obj| {
                    PageMap::open(&key, &*obj)
                        .map(|m| (obj, m))
                        .map_err(|e| map_problem(&e))
                });
            let (obj, map) = match opened {
                Ok(o) => o,
                Err(e) => {
                    report.problems.push(format!("{label}: {e}"));
                    report.damaged_points.insert(short(p));
                    certain = false;
                    continue;
                }
            };
            if map.frame_size != frame_size {
                report.problems.push(format!(
                    "{label}: page map of {}-byte frames in a store of {frame_size}-byte frames",
                    map.frame_size
                ));
                report.damaged_points.insert(short(p));
                certain = false;
                continue;
            }
            if d.is_some_and(|d| d.size != map.disk_size) {
                report.problems.push(format!(
                    "{label}: map size {} differs from the record",
                    map.disk_size
                ));
            }
            let mut refs = RefSetBuilder::new();
            let mut all_read = true;
            let mut missing = Vec::new();
            let mut unreadable = Vec::new();
            for i in 0..map.map_pages() {
                if map.page_is_hole(i) {
                    continue;
                }
                let entries = match map.read_page(&key, &*obj, i) {
                    Ok(e) => e,
                    Err(e) => {
                        report
                            .problems
                            .push(format!("{label}: {}", map_problem(&e)));
                        all_read = false;
                        continue;
                    }
                };
                let first = u64::from(i) * pagemap::ENTRIES_PER_PAGE as u64;
                for (j, &e) in entries.iter().enumerate() {
                    let Some(r) = pagemap::decode_entry(e) else {
                        continue;
                    };
                    let block = (first + j as u64) / slots;
                    // `read_page` validated the pack slot against the map's pack list.
                    let pack = map.packs[r.pack as usize - 1];
                    refs.insert(pack, r.frame, r.slot);
                    let Some(h) = self.pack(engine, pack, report) else {
                        unreadable.push(block);
                        continue;
                    };
                    match self.frame(engine, &h, r.frame, report) {
                        Ok(Some(f)) if has_slot(f.mask, r.slot) => {}
                        Ok(_) => missing.push(block),
                        Err(()) => unreadable.push(block),
                    }
                }
            }
            let refs = refs.finish();
            if all_read {
                match map.summary(&key, &*obj) {
                    Ok(s) if s == refs => {}
                    Ok(s) => {
                        report.problems.push(format!(
                            "{label}: page map damaged: its summary names {} pages in {} packs, \
                             its entries reference {} pages in {} packs",
                            s.page_count(),
                            s.pack_count(),
                            refs.page_count(),
                            refs.pack_count()
                        ));
                        certain = false;
                    }
                    Err(e) => {
                        report
                            .problems
                            .push(format!("{label}: page map summary damaged: {e}"));
                        certain = false;
                    }
                }
            } else {
                certain = false;
            }
            self.live.union_with(&refs);
            for (blocks, what) in [
                (&mut missing, "are missing from their packs"),
                (&mut unreadable, "are in packs that cannot be read"),
            ] {
                blocks.dedup();
                if !blocks.is_empty() {
                    report
                        .problems
                        .push(format!("{label}: blocks {} {what}", ranges(blocks)));
                }
            }
            if report.problems.len() > problems_before {
                report.damaged_points.insert(short(p));
            }
            self.maps.push(MapRef {
                key,
                point: short(p),
                label,
            });
        }
        // Format 2 keeps only maps in a disk's directory.
        let live_maps: std::collections::HashSet<Uuid> = drps.iter().map(|(_, d)| *d).collect();
        for name in &names {
            if !matches!(layout::classify(name), Name::Map(m) if live_maps.contains(&m)) {
                report.problems.push(format!(
                    "{dir}/{name}: not referenced by any committed point"
                ));
                report.unreachable.push(format!("{dir}/{name}"));
            }
        }
        self.certain &= certain;
        Ok(certain)
    }

    /// The store-wide part, once every VM was checked: packs, index, data; with `apply`, the
    /// repair. `repairing` (a repair, applied or not) lists unreferenced packs as files to remove.
    pub(crate) fn finish(
        mut self,
        engine: &Engine,
        read_data: bool,
        repairing: bool,
        apply: bool,
        progress: &dyn Progress,
        report: &mut CheckReport,
    ) -> Result<()> {
        let shared = &engine.shared;
        let storage: &dyn Storage = &*shared.storage;
        // Shared with creations: no sweep repacks a pack while it is read here.
        let gc_lock: Option<LockGuard> = match storage.try_lock_shared(layout::GC_LOCK) {
            Ok(Some(l)) => Some(l),
            Ok(None) => {
                report
                    .warnings
                    .push("a sweep is running: packs may change while they are checked".into());
                None
            }
            Err(e) => {
                tracing::warn!("checking packs without the creation lock: {e}");
                None
            }
        };
        report.packs += self.packs.len();
        let list = |dir: &str| match storage.list(dir) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::Io {
                context: format!("listing {dir}"),
                source: e,
            }),
        };

        // Data: what no committed map references.
        let mut existing: BTreeMap<Uuid, String> = BTreeMap::new();
        let mut garbage: Vec<String> = Vec::new();
        for sub in list(layout::DATA)? {
            let dir = format!("{}/{sub}", layout::DATA);
            for name in list(&dir)? {
                let key = format!("{dir}/{name}");
                match layout::classify(&name) {
                    Name::Pack(id) => {
                        existing.insert(id, key.clone());
                        if !self.packs.contains_key(&id) {
                            report.notes.push(format!(
                                "{key}: referenced by no committed point; a sweep frees it"
                            ));
                            garbage.push(key);
                        }
                    }
                    Name::Temp { .. } => {
                        report.notes.push(format!(
                            "{key}: a temporary of an interrupted write; a sweep frees it"
                        ));
                        garbage.push(key);
                    }
                    _ => report.problems.push(format!("{key}: unexpected file")),
                }
            }
        }
        let mut dead_pages = false;
        // With `read_data`: damaged frames, (pack, frame index) -> why.
        let mut damaged: HashMap<(Uuid, u32), String> = HashMap::new();
        if read_data {
            progress.begin("verifying pages", self.live.page_count() << PAGE_SHIFT);
        }
        let packs: Vec<Uuid> = self.packs.keys().copied().collect();
        for pack in packs {
            let Some(h) = self.pack(engine, pack, report) else {
                continue;
            };
            let live = self.live.frames(pack).to_vec();
            let mut unref = 0u64;
            let mut used = Vec::new();
            for f in 0..h.pack.frame_count() {
                let Ok(Some(e)) = self.frame(engine, &h, f, report) else {
                    continue;
                };
                let mask = live
                    .binary_search_by_key(&f, |&(frame, _)| frame)
                    .map_or(0, |i| live[i].1);
                unref += u64::from((e.mask & !mask).count_ones());
                if e.mask & mask != 0 {
                    used.push((f, e, mask));
                }
            }
            if unref > 0 {
                dead_pages = true;
                report.notes.push(format!(
                    "pack {}: {unref} pages are referenced by no committed point; a sweep frees \
                     them",
                    h.key
                ));
            }
            if read_data {
                let bad: Vec<((Uuid, u32), String)> = used
                    .par_iter()
                    .filter_map(|(f, e, mask)| {
                        let r = verify_frame(shared, &h, e);
                        progress.advance(u64::from(mask.count_ones()) << PAGE_SHIFT);
                        r.err().map(|why| ((pack, *f), why))
                    })
                    .collect();
                let pages: u64 = used.iter().map(|(_, e, _)| u64::from(e.pages())).sum();
                report.blocks_verified += used.len() as u64;
                report.bytes_verified += pages << PAGE_SHIFT;
                damaged.extend(bad);
            }
        }
        if read_data {
            progress.end();
        }
        let owed = gc::owed(shared);
        if owed {
            report.notes.push(format!(
                "{}: a sweep is owed (the next creation or deletion, or a repair, runs it)",
                layout::GC_OWED
            ));
        }

        // The index: damaged segments are problems; stale entries are notes.
        let mut damaged_segments = Vec::new();
        for name in list(layout::INDEX)? {
            let key = format!("{}/{name}", layout::INDEX);
            match layout::classify(&name) {
                Name::Segment(_) => {}
                Name::Temp { .. } => {
                    report.notes.push(format!(
                        "{key}: a temporary of an interrupted write; a sweep frees it"
                    ));
                    garbage.push(key);
                    continue;
                }
                _ => {
                    report.problems.push(format!("{key}: unexpected file"));
                    continue;
                }
            }
            let obj = match storage.open(&key) {
                Ok(o) => o,
                Err(e) => {
                    report.problems.push(format!("{key}: {e}"));
                    continue;
                }
            };
            let segment = Segment::open(&key, &*obj).and_then(|s| {
                s.verify(&key, &*obj)?;
                Ok(s)
            });
            let segment = match segment {
                Ok(s) => s,
                Err(e @ SegmentError::Corrupt(_)) => {
                    report.problems.push(format!(
                        "{key}: damaged ({e}); removing it loses only dedup savings"
                    ));
                    damaged_segments.push(key);
                    continue;
                }
                Err(e) => {
                    report.problems.push(e.to_string());
                    continue;
                }
            };
            let mut stale = 0u64;
            let mut wrong = 0u64;
            let mut batch: Vec<IndexEntry> = Vec::new();
            for e in segment.iter(&key, &*obj) {
                // `verify` read every entry: an error now means the file changed under check.
                let Ok(e) = e else { break };
                let present = existing.contains_key(&e.pack)
                    && shared
                        .frame_packs
                        .open(storage, shared.header.block_size, e.pack)
                        .ok()
                        .and_then(|h| h.frame(&shared.meta, e.frame).ok().flatten())
                        .is_some_and(|f| has_slot(f.mask, e.slot));
                if !present {
                    stale += 1;
                } else if read_data {
                    batch.push(e);
                    if batch.len() >= ID_BATCH {
                        let (w, s) = wrong_ids(shared, &mut batch);
                        (wrong, stale) = (wrong + w, stale + s);
                    }
                }
            }
            let (w, s) = wrong_ids(shared, &mut batch);
            (wrong, stale) = (wrong + w, stale + s);
            if wrong > 0 {
                // Future points would link the wrong bytes for these ids.
                report.problems.push(format!(
                    "{key}: damaged ({wrong} entries name pages whose bytes have another id); \
                     removing it loses only dedup savings"
                ));
                damaged_segments.push(key.clone());
            }
            if stale > 0 {
                report.notes.push(format!(
                    "{key}: {stale} stale entries name pages that were freed; lookups skip them"
                ));
            }
        }

        if !damaged.is_empty() {
            name_damage(&self.maps, engine, &damaged, report);
        }

        // The repair.
        report.unreachable.extend(damaged_segments.iter().cloned());
        if repairing && self.certain {
            report.unreachable.extend(garbage.iter().cloned());
        }
        if apply {
            for key in &damaged_segments {
                remove_if_present(storage, key).map_err(Error::io(format!("removing {key}")))?;
                report.removed.push(key.clone());
            }
            if !garbage.is_empty() || dead_pages || owed {
                if self.certain {
                    drop(gc_lock);
                    let swept = gc::sweep(shared)?;
                    for key in &garbage {
                        if storage.size(key).is_err() {
                            report.removed.push(key.clone());
                        }
                    }
                    if swept.repacked > 0 {
                        report.notes.push(format!(
                            "repacked {} packs without their unreferenced pages",
                            swept.repacked
                        ));
                    }
                    report.warnings.extend(swept.deferred);
                } else {
                    report.problems.push(
                        "unreferenced packs and pages kept: a damaged or unreadable record or map \
                         may reference them"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// What is wrong with a page map that failed to load: the storage could not read it (I/O, not
/// damage), or it is damaged.
fn map_problem(e: &PackError) -> String {
    match e {
        PackError::Io(e) => format!("page map cannot be read: {e}"),
        PackError::Corrupt(c) => format!("page map damaged: {c}"),
    }
}

/// True when `mask` has page `slot` (readers validated the slot; a hostile one is absent).
fn has_slot(mask: u16, slot: u8) -> bool {
    1u16.checked_shl(u32::from(slot))
        .is_some_and(|bit| mask & bit != 0)
}
