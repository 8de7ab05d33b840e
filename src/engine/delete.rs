//! Deleting restore points, from anywhere in a chain, and collecting what no point references.
//!
//! How deletion works: every block map is complete, so no point depends on another point's map;
//! points share only stored blocks. Deleting a point removes its record (the commit), then
//! [`collect_garbage`] recounts, for each disk chain, which stored blocks the remaining maps
//! reference (reference counting by scan): packs and maps nothing references are removed first,
//! then packs holding some unreferenced blocks are *repacked* — rewritten whole under the same id
//! with only the referenced blocks, byte for byte, and atomically renamed over the old file. This
//! frees exactly the space only the deleted point used, and every other point reads the same
//! bytes.
//!
//! Invariants: garbage collection runs under the VM's lock and only after every point record of
//! the VM was read successfully (an unreadable record stops it, so nothing a damaged record
//! references is ever collected). It is idempotent, so recovery can rerun it after a crash at
//! any step. A repack that cannot be done now (too little free space, or it fails) is deferred,
//! never fatal: the old pack is a superset of what is needed, so the store stays sound, and the
//! operation marker keeps the debt until a later collection pays it.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::error::{Error, Result};
use super::{Engine, Shared, catalog, now_rfc3339, pending};
use crate::store::blockmap::BlockMap;
use crate::store::layout;
use crate::store::pack::{PackError, PackIndex, PackWriter};
use crate::store::records::{PendingKind, PendingOp, PointRecord};
use crate::store::storage::{Object, TEMP_SUFFIX};

/// Free space a repack leaves untouched on the medium, beyond the size of what it writes.
const REPACK_MARGIN: u64 = 64 << 20;

/// What a deletion did.
#[derive(Debug, Clone)]
pub struct DeleteOutcome {
    pub point: PointRecord,
    /// Bytes of pack and map files freed.
    pub freed_bytes: u64,
    /// Things the user should know that did not stop the deletion (space not freed yet).
    pub warnings: Vec<String>,
}

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    pub removed_files: u64,
    pub repacked: u64,
    pub freed_bytes: u64,
    /// Repacks that could not be done now, each with the reason.
    pub deferred: Vec<String>,
}

impl Engine {
    /// Deletes `collection/name`.
    pub fn delete_point(&self, collection: &str, name: &str) -> Result<DeleteOutcome> {
        let cat = self.catalog()?;
        let (c, p) = cat.point(collection, name)?;
        let vm = cat.vm_by_id(c.vm_id).ok_or_else(|| Error::NotFound {
            what: "VM of collection",
            name: collection.to_string(),
            hint: String::new(),
        })?;
        let _lock = self.vm_lock(vm)?;
        // Re-read under the lock: the point may have gone meanwhile.
        let point = catalog::load_points(&*self.shared.storage, vm.id)?
            .into_iter()
            .find(|x| x.id == p.id)
            .ok_or_else(|| Error::NotFound {
                what: "restore point",
                name: format!("{collection}/{name}"),
                hint: String::new(),
            })?;
        let (freed_bytes, warnings) = delete_locked(&self.shared, &point, collection)?;
        Ok(DeleteOutcome {
            point,
            freed_bytes,
            warnings,
        })
    }
}

/// Deletes a point whose VM lock the caller holds. Returns bytes freed and warnings.
pub(crate) fn delete_locked(
    shared: &Shared,
    point: &PointRecord,
    collection: &str,
) -> Result<(u64, Vec<String>)> {
    let vm = point.vm_id;
    let mut op = PendingOp {
        op: PendingKind::Delete,
        point_id: point.id,
        clones: Vec::new(),
        started: now_rfc3339(),
        frozen: false,
        collection: collection.to_string(),
        gc_owed: false,
    };
    let earlier = pending::begin(shared, vm, &mut op)?;
    let point_key = layout::point(vm, point.id);
    shared
        .storage
        .remove(&point_key)
        .map_err(Error::io(format!("removing {point_key}")))?;
    // The point is gone. From here a failure only delays freeing its space: the marker stays and
    // the next operation on the VM, or the next open of the store, finishes the collection.
    let mut warnings = earlier.warnings;
    match pending::end(shared, vm, &mut op, true) {
        Ok(done) => {
            warnings.extend(
                done.warnings
                    .into_iter()
                    .map(|w| format!("space not freed yet: {w}")),
            );
            Ok((earlier.freed_bytes + done.freed_bytes, warnings))
        }
        Err(e) => {
            warnings.push(format!(
                "the point is deleted, but freeing its space failed ({e}); rpfs retries when it \
                 next opens the store"
            ));
            Ok((earlier.freed_bytes, warnings))
        }
    }
}

fn is_temp(name: &str) -> bool {
    name.ends_with(TEMP_SUFFIX)
}

/// Removes everything under `vms/<vm>/` that no committed point references, and repacks packs
/// holding unreferenced blocks. The caller holds the VM's lock.
pub(crate) fn collect_garbage(shared: &Shared, vm: Uuid) -> Result<GcStats> {
    let storage = &*shared.storage;
    let points = catalog::load_points(storage, vm)?;
    let mut stats = GcStats::default();

    let points_dir = layout::points_dir(vm);
    let live_points: HashSet<Uuid> = points.iter().map(|p| p.id).collect();
    for name in storage
        .list(&points_dir)
        .map_err(Error::io(format!("listing {points_dir}")))?
    {
        let orphan_config =
            layout::parse_name(&name, ".config").is_some_and(|id| !live_points.contains(&id));
        if is_temp(&name) || orphan_config {
            remove(shared, &format!("{points_dir}/{name}"), &mut stats)?;
        }
    }

    let mut live: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    for p in &points {
        for d in &p.disks {
            live.entry(d.disk_id).or_default().insert(d.drp_id);
        }
    }
    let disks_dir = layout::disks_dir(vm);
    for name in storage
        .list(&disks_dir)
        .map_err(Error::io(format!("listing {disks_dir}")))?
    {
        let Some(disk) = layout::parse_name(&name, "") else {
            continue;
        };
        collect_disk(
            shared,
            vm,
            disk,
            live.get(&disk).cloned().unwrap_or_default(),
            &mut stats,
        )?;
    }
    Ok(stats)
}

fn remove(shared: &Shared, key: &str, stats: &mut GcStats) -> Result<()> {
    let size = shared.storage.size(key).unwrap_or(0);
    match shared.storage.remove(key) {
        Ok(()) => {
            stats.removed_files += 1;
            stats.freed_bytes += size;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            context: format!("removing {key}"),
            source: e,
        }),
    }
}

/// A pack of the chain with its table and, per table entry, whether a live map references it.
struct PackUse {
    object: std::sync::Arc<dyn Object>,
    index: PackIndex,
    live: Vec<bool>,
}

/// Garbage collection of one disk chain, given the disk restore points still committed.
fn collect_disk(
    shared: &Shared,
    vm: Uuid,
    disk: Uuid,
    live_maps: HashSet<Uuid>,
    stats: &mut GcStats,
) -> Result<()> {
    let storage = &*shared.storage;
    let bs = shared.header.block_size;
    let dir = layout::disk_dir(vm, disk);
    let names = storage
        .list(&dir)
        .map_err(Error::io(format!("listing {dir}")))?;
    let mut maps = Vec::new();
    let mut packs = Vec::new();
    for name in &names {
        if is_temp(name) {
            remove(shared, &format!("{dir}/{name}"), stats)?;
        } else if let Some(id) = layout::parse_name(name, ".map") {
            maps.push(id);
        } else if let Some(id) = layout::parse_name(name, ".pack") {
            packs.push(id);
        }
    }

    // The live maps, and the packs they reference.
    let mut live = Vec::new();
    for drp in &live_maps {
        let key = layout::map(vm, disk, *drp);
        let bytes = storage
            .read(&key)
            .map_err(Error::io(format!("reading {key} of a committed point")))?;
        live.push(BlockMap::decode(&key, &bytes, bs)?);
    }
    let referenced: HashSet<Uuid> = live.iter().flat_map(|m| m.packs.iter().copied()).collect();

    // Free what nothing references first: it needs no space, and it makes room for repacks.
    for &pack in packs.iter().filter(|p| !referenced.contains(p)) {
        remove(shared, &layout::pack(vm, disk, pack), stats)?;
        shared.packs.forget(pack);
    }
    for drp in maps.iter().filter(|m| !live_maps.contains(m)) {
        remove(shared, &layout::map(vm, disk, *drp), stats)?;
    }

    // Which entries of each referenced pack a live map uses. Maps and tables are both sorted by
    // block, so one cursor per pack walks each table once per map: memory grows with the blocks
    // stored, time with maps times blocks.
    let mut uses: HashMap<Uuid, PackUse> = HashMap::new();
    for &pack in packs.iter().filter(|p| referenced.contains(p)) {
        let key = layout::pack(vm, disk, pack);
        let object = storage
            .open(&key)
            .map_err(Error::io(format!("opening {key}")))?;
        match PackIndex::load(&*object, &key, pack, bs) {
            Ok(index) => {
                let live = vec![false; index.entries.len()];
                uses.insert(
                    pack,
                    PackUse {
                        object,
                        index,
                        live,
                    },
                );
            }
            // A read that failed may work next time: the debt is kept.
            Err(PackError::Io(e)) => stats.deferred.push(format!("reading {key}: {e}")),
            // A damaged pack is left as it is for `check` to report; repacking it could only
            // copy or lose the damage.
            Err(_) => {}
        }
    }
    for map in &live {
        let mut cursors = vec![0usize; map.packs.len()];
        for (b, &e) in map.entries.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let slot = e as usize - 1;
            let Some(u) = uses.get_mut(&map.packs[slot]) else {
                continue;
            };
            let c = &mut cursors[slot];
            while *c < u.index.entries.len() && u.index.entries[*c].block < b as u64 {
                *c += 1;
            }
            if *c < u.index.entries.len() && u.index.entries[*c].block == b as u64 {
                u.live[*c] = true;
            }
        }
    }

    for (pack, u) in uses {
        if u.live.iter().all(|&l| l) {
            continue;
        }
        let key = layout::pack(vm, disk, pack);
        match repack(shared, &key, pack, &u) {
            Ok(new_size) => {
                shared.packs.forget(pack);
                stats.repacked += 1;
                stats.freed_bytes += u.object.len().saturating_sub(new_size);
            }
            Err(why) => stats.deferred.push(format!("repacking {key}: {why}")),
        }
    }
    Ok(())
}

/// Rewrites a pack with only its live entries; returns the new size. Refuses when the medium
/// lacks room for the new copy plus a margin.
fn repack(shared: &Shared, key: &str, pack: Uuid, u: &PackUse) -> std::result::Result<u64, String> {
    let live_bytes: u64 = u
        .index
        .entries
        .iter()
        .zip(&u.live)
        .filter(|(_, l)| **l)
        .map(|(e, _)| u64::from(e.stored_len))
        .sum();
    let free = shared
        .storage
        .space()
        .map_err(|e| e.to_string())?
        .free_bytes;
    if free < live_bytes + REPACK_MARGIN {
        return Err(format!(
            "needs {} MiB free to copy the blocks still in use, the store has {} MiB",
            (live_bytes + REPACK_MARGIN) >> 20,
            free >> 20
        ));
    }
    let out = shared.storage.create(key).map_err(|e| e.to_string())?;
    let mut w = PackWriter::new(out, pack, shared.header.block_size).map_err(|e| e.to_string())?;
    for (e, _) in u.index.entries.iter().zip(&u.live).filter(|(_, l)| **l) {
        let stored = u
            .index
            .read_stored(&*u.object, e)
            .map_err(|e| e.to_string())?;
        w.append(e.block, &stored, e.codec, e.hash)
            .map_err(|e| e.to_string())?;
    }
    w.finish().map_err(|e| e.to_string())
}
