//! Freeing what no committed point of any VM references: the store-wide sweep of format 2.
//!
//! Mark and sweep: the mark is the union of the summaries (the `(pack, frame, pages)` each map
//! references) of every committed point's maps, across all VMs; the sweep removes packs nothing
//! references and *repacks* packs holding some unreferenced pages, keeping every frame index and
//! every referenced page's slot, so every remaining point reads the same bytes.
//!
//! Invariants:
//! - A sweep runs only under the creation lock held exclusively, and every creation holds it
//!   shared from before it looks anything up until its point is committed or abandoned, so the
//!   mark sees every map that may name a page, and no creation adopts a page while it is swept.
//! - It runs only after every point record and committed map of the store was read (an
//!   unreadable one stops it), so nothing a damaged record references is ever freed.
//! - It is idempotent: a crash at any step leaves packs that are whole (old or new generation,
//!   swapped atomically), and the debt marker `gc-owed` until a sweep completes; recovery and the
//!   next creation or deletion pay it.

use uuid::Uuid;

use crate::engine::catalog;
use crate::engine::error::{Error, Result};
use crate::engine::shared::Shared;
use crate::store::frames::{self, FrameEntry, FramePack, FrameWriter};
use crate::store::layout::{self, Name};
use crate::store::page::PAGE_SIZE;
use crate::store::pagemap::PageMap;
use crate::store::refs::RefSet;
use crate::store::storage::{Object, Storage, remove_if_present};

/// Free space a repack leaves untouched on the medium, beyond the size of what it writes.
const REPACK_MARGIN: u64 = 64 << 20;

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub removed_files: u64,
    pub repacked: u64,
    pub freed_bytes: u64,
    /// Work left for a later sweep, each with the reason.
    pub deferred: Vec<String>,
}

/// Records that a sweep is owed (before anything is made unreferenced, so a crash never loses
/// the debt).
pub(crate) fn owe(shared: &Shared) -> Result<()> {
    shared
        .storage
        .put(layout::GC_OWED, b"")
        .map_err(Error::io("recording that a sweep is owed"))
}

/// True when a sweep is owed.
pub(crate) fn owed(shared: &Shared) -> bool {
    shared.storage.size(layout::GC_OWED).is_ok()
}

/// Sweeps the store now if no creation is running; otherwise leaves the debt recorded.
pub(crate) fn sweep(shared: &Shared) -> Result<Swept> {
    let storage = &*shared.storage;
    let Some(_exclusive) = storage
        .try_lock(layout::GC_LOCK)
        .map_err(Error::io("taking the creation lock"))?
    else {
        owe(shared)?;
        return Ok(Swept {
            deferred: vec![
                "a restore point is being created; its space is freed when that ends".into(),
            ],
            ..Swept::default()
        });
    };
    let live = mark(shared)?;
    let mut swept = Swept::default();
    for key in pack_keys(storage)? {
        let Some(Name::Pack(pack)) = key.rsplit('/').next().map(layout::classify) else {
            // A temporary of a pack write that died: garbage now no creation runs.
            remove(storage, &key, &mut swept)?;
            continue;
        };
        let frames = live.frames(pack);
        if frames.is_empty() {
            remove(storage, &key, &mut swept)?;
            shared.frame_packs.forget(pack);
            continue;
        }
        match sweep_pack(shared, &key, pack, frames) {
            Ok(Some(freed)) => {
                shared.frame_packs.forget(pack);
                swept.repacked += 1;
                swept.freed_bytes += freed;
            }
            Ok(None) => {}
            Err(why) => swept.deferred.push(format!("repacking {key}: {why}")),
        }
    }
    drop_dead_segments(storage, &mut swept)?;
    if swept.deferred.is_empty() {
        remove_if_present(storage, layout::GC_OWED)
            .map_err(Error::io("removing the sweep debt marker"))?;
    } else {
        owe(shared)?;
    }
    Ok(swept)
}

/// Everything any committed map of any VM references.
fn mark(shared: &Shared) -> Result<RefSet> {
    let storage = &*shared.storage;
    let mut live = RefSet::new();
    for vm in catalog::vm_ids(storage)? {
        for p in catalog::load_points(storage, vm)? {
            for d in &p.disks {
                let key = layout::map(vm, d.disk_id, d.drp_id);
                let obj = storage
                    .open(&key)
                    .map_err(Error::io(format!("opening {key} of a committed point")))?;
                let map = PageMap::open(&key, &*obj)?;
                live.union_with(&map.summary(&key, &*obj)?);
            }
        }
    }
    Ok(live)
}

/// Keys of every pack (and pack temporary) under `data/`.
fn pack_keys(storage: &dyn Storage) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for dir in storage
        .list(layout::DATA)
        .map_err(Error::io("listing data"))?
    {
        let dir = format!("{}/{dir}", layout::DATA);
        for name in storage
            .list(&dir)
            .map_err(Error::io(format!("listing {dir}")))?
        {
            match layout::classify(&name) {
                Name::Pack(_) | Name::Temp { .. } => keys.push(format!("{dir}/{name}")),
                _ => {}
            }
        }
    }
    Ok(keys)
}

fn remove(storage: &dyn Storage, key: &str, swept: &mut Swept) -> Result<()> {
    let size = storage.size(key).unwrap_or(0);
    match storage.remove(key) {
        Ok(()) => {
            swept.removed_files += 1;
            swept.freed_bytes += size;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            context: format!("removing {key}"),
            source: e,
        }),
    }
}

/// Removes index segments none of whose packs exist any more, and temporaries in `index/`. A
/// segment that cannot be judged now (the storage failed to read it or to look up a pack) is
/// kept and the sweep deferred, so the debt stays recorded and the next sweep judges it.
fn drop_dead_segments(storage: &dyn Storage, swept: &mut Swept) -> Result<()> {
    for name in storage
        .list(layout::INDEX)
        .map_err(Error::io("listing index"))?
    {
        let key = format!("{}/{name}", layout::INDEX);
        let dead = match layout::classify(&name) {
            Name::Temp { .. } => true,
            Name::Segment(_) => segment_is_dead(storage, &key).unwrap_or_else(|why| {
                swept.deferred.push(why);
                false
            }),
            _ => false,
        };
        if dead {
            remove(storage, &key, swept)?;
        }
    }
    Ok(())
}

/// True when none of the packs segment `key` names exists. False for a segment gone already, or
/// damaged (`check`'s to report; lookups skip it); why not, when the storage failed.
fn segment_is_dead(storage: &dyn Storage, key: &str) -> std::result::Result<bool, String> {
    let obj = match storage.open(key) {
        Ok(obj) => obj,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("opening {key}: {e}")),
    };
    let segment = match crate::store::index::Segment::open(key, &*obj) {
        Ok(s) => s,
        Err(e @ crate::store::index::SegmentError::Io { .. }) => return Err(e.to_string()),
        Err(_) => return Ok(false),
    };
    for p in segment.packs() {
        let pack = layout::shared_pack(*p);
        match storage.size(&pack) {
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("looking up {pack} for {key}: {e}")),
        }
    }
    Ok(true)
}

/// Repacks `pack` if some of its pages are not in `live` (sorted `(frame, mask)`); returns the
/// bytes freed, or `None` when every page is live. A damaged pack is left for `check`.
fn sweep_pack(
    shared: &Shared,
    key: &str,
    pack: Uuid,
    live: &[(u32, u16)],
) -> std::result::Result<Option<u64>, String> {
    let storage = &*shared.storage;
    let object = storage.open(key).map_err(|e| e.to_string())?;
    let fp = FramePack::open(key, &*object, pack, shared.header.block_size)
        .map_err(|e| e.to_string())?;
    // Maps name only present pages, so as many live pages as present ones means all are live,
    // known from the directory alone: most packs are never scanned.
    let live_pages: u64 = live.iter().map(|&(_, m)| u64::from(m.count_ones())).sum();
    if live_pages >= u64::from(fp.page_count()) {
        return Ok(None);
    }
    let mut table = Vec::with_capacity(fp.frame_count() as usize);
    for chunk in 0..fp.table_chunks() {
        table.extend(
            fp.table_chunk(key, &*object, chunk)
                .map_err(|e| e.to_string())?,
        );
    }
    let live_mask = |f: u32| {
        live.binary_search_by_key(&f, |&(frame, _)| frame)
            .map_or(0, |i| live[i].1)
    };
    let dead = table
        .iter()
        .enumerate()
        .any(|(f, e)| e.mask & !live_mask(f as u32) != 0);
    if !dead {
        return Ok(None);
    }
    let keep: u64 = table
        .iter()
        .enumerate()
        .filter(|(f, e)| e.mask & live_mask(*f as u32) != 0)
        .map(|(_, e)| u64::from(e.stored_len))
        .sum();
    let free = storage.space().map_err(|e| e.to_string())?.free_bytes;
    if free < keep + REPACK_MARGIN {
        return Err(format!(
            "needs {} MiB free to copy the pages still in use, the store has {} MiB",
            (keep + REPACK_MARGIN) >> 20,
            free >> 20
        ));
    }
    let out = storage.create(key).map_err(|e| e.to_string())?;
    let mut w = FrameWriter::new(out, pack, fp.vm, fp.frame_size).map_err(|e| e.to_string())?;
    for (f, e) in table.iter().enumerate() {
        let mask = e.mask & live_mask(f as u32);
        if mask == 0 {
            w.append_empty().map_err(|e| e.to_string())?;
            continue;
        }
        let fps = fingerprints(&fp, key, &*object, e)?;
        if mask == e.mask {
            let bytes = fp.read_stored(&*object, e).map_err(|e| e.to_string())?;
            let stored = frames::StoredFrame {
                hash: e.hash,
                codec: e.codec,
                bytes: &bytes,
            };
            w.append(mask, stored, &fps).map_err(|e| e.to_string())?;
            continue;
        }
        let mut decoded = vec![0u8; e.decoded_len()];
        fp.read_frame(&*object, e, &mut decoded)
            .map_err(|e| e.to_string())?;
        let mut pages = Vec::new();
        let mut kept = Vec::new();
        for (ord, slot) in (0..16u8).filter(|s| e.mask & (1 << s) != 0).enumerate() {
            if mask & (1 << slot) != 0 {
                pages.extend_from_slice(&decoded[ord * PAGE_SIZE..(ord + 1) * PAGE_SIZE]);
                kept.push(fps[ord]);
            }
        }
        let frame = frames::encode_frame(&pages, shared.header.compression);
        w.append(mask, (&frame).into(), &kept)
            .map_err(|e| e.to_string())?;
    }
    let new_len = w.finish().map_err(|e| e.to_string())?;
    Ok(Some(object.len().saturating_sub(new_len)))
}

/// The fingerprints of frame `e`'s present pages, in slot order.
fn fingerprints(
    fp: &FramePack,
    key: &str,
    obj: &dyn Object,
    e: &FrameEntry,
) -> std::result::Result<Vec<u128>, String> {
    let mut out = Vec::with_capacity(e.pages() as usize);
    let mut chunk: Option<(u32, Vec<u128>)> = None;
    for i in e.first_page..e.first_page + e.pages() {
        let (c, at) = frames::fingerprint_position(i);
        if chunk.as_ref().is_none_or(|(n, _)| *n != c) {
            chunk = Some((
                c,
                fp.fingerprint_chunk(key, obj, c)
                    .map_err(|e| e.to_string())?,
            ));
        }
        let fps = &chunk.as_ref().map(|(_, f)| f).ok_or("no chunk")?;
        out.push(*fps.get(at).ok_or("fingerprint past its chunk")?);
    }
    Ok(out)
}
