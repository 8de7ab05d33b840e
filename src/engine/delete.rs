//! Deleting restore points, from anywhere in a chain, and collecting what no point references.
//!
//! How deletion works: every block map is complete, so no point depends on another point's map;
//! points share only stored blocks. Deleting a point removes its record (the commit), then
//! [`collect_garbage`] recomputes, for each disk chain, which stored blocks the remaining maps
//! reference (reference counting by scan): packs nothing references are removed, and packs
//! holding some unreferenced blocks are *repacked* — rewritten whole under the same id with only
//! the referenced blocks, byte for byte, and atomically renamed over the old file. This frees
//! exactly the space only the deleted point used, and every other point reads the same bytes.
//!
//! Invariants: garbage collection runs under the VM's lock and only after every point record of
//! the VM was read successfully (an unreadable record stops it, so nothing a damaged record
//! references is ever collected). It is idempotent, so recovery can rerun it after a crash at
//! any step.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::error::{Error, Result};
use super::{Engine, Shared, catalog, now_rfc3339};
use crate::store::blockmap::BlockMap;
use crate::store::layout;
use crate::store::pack::{PackIndex, PackWriter};
use crate::store::records::{PendingKind, PendingOp, PointRecord};
use crate::store::storage::TEMP_SUFFIX;
use crate::store::{kind, write_record};

/// What a deletion did.
#[derive(Debug, Clone)]
pub struct DeleteOutcome {
    pub point: PointRecord,
    /// Bytes of pack and map files freed.
    pub freed_bytes: u64,
}

/// What one garbage collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub removed_files: u64,
    pub repacked: u64,
    pub freed_bytes: u64,
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
        let freed_bytes = delete_locked(&self.shared, &point)?;
        Ok(DeleteOutcome { point, freed_bytes })
    }
}

/// Deletes a point whose VM lock the caller holds. Returns bytes freed.
pub(crate) fn delete_locked(shared: &Shared, point: &PointRecord) -> Result<u64> {
    let storage = &*shared.storage;
    let pending_key = layout::pending(point.vm_id);
    let pending = PendingOp {
        op: PendingKind::Delete,
        point_id: point.id,
        clones: Vec::new(),
        started: now_rfc3339(),
    };
    write_record(storage, &pending_key, kind::PENDING, &pending)
        .map_err(Error::io(format!("writing {pending_key}")))?;
    let point_key = layout::point(point.vm_id, point.id);
    storage
        .remove(&point_key)
        .map_err(Error::io(format!("removing {point_key}")))?;
    let stats = collect_garbage(shared, point.vm_id)?;
    // Removing the marker can fail harmlessly: recovery would rerun an idempotent collection.
    let _ = storage.remove(&pending_key);
    Ok(stats.freed_bytes)
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

/// Garbage collection of one disk chain, given the disk restore points still committed.
fn collect_disk(
    shared: &Shared,
    vm: Uuid,
    disk: Uuid,
    live: HashSet<Uuid>,
    stats: &mut GcStats,
) -> Result<()> {
    let storage = &*shared.storage;
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

    // Which blocks of which pack the live maps reference, as bitsets.
    let mut referenced: HashMap<Uuid, Vec<u64>> = HashMap::new();
    for drp in &live {
        let key = layout::map(vm, disk, *drp);
        let bytes = storage
            .read(&key)
            .map_err(Error::io(format!("reading {key} of a committed point")))?;
        let map = BlockMap::decode(&key, &bytes, shared.header.block_size)?;
        let words = map.entries.len().div_ceil(64);
        let mut slots: Vec<Vec<u64>> = map.packs.iter().map(|_| vec![0u64; words]).collect();
        for (b, &e) in map.entries.iter().enumerate() {
            if e != 0 {
                slots[e as usize - 1][b / 64] |= 1 << (b % 64);
            }
        }
        for (pack, bits) in map.packs.iter().zip(slots) {
            let acc = referenced.entry(*pack).or_default();
            if acc.len() < bits.len() {
                acc.resize(bits.len(), 0);
            }
            for (a, b) in acc.iter_mut().zip(bits) {
                *a |= b;
            }
        }
    }

    for pack in packs {
        let key = layout::pack(vm, disk, pack);
        let Some(bits) = referenced.get(&pack) else {
            remove(shared, &key, stats)?;
            shared.packs.forget(pack);
            continue;
        };
        let is_live = |b: u64| {
            bits.get((b / 64) as usize)
                .is_some_and(|w| w & (1 << (b % 64)) != 0)
        };
        let object = storage
            .open(&key)
            .map_err(Error::io(format!("opening {key}")))?;
        let index = match PackIndex::load(&*object, &key, pack, shared.header.block_size) {
            Ok(i) => i,
            // A damaged pack is left as it is for `check` to report; repacking it could only
            // copy or lose the damage.
            Err(_) => continue,
        };
        if index.entries.iter().all(|e| is_live(e.block)) {
            continue;
        }
        let old_size = object.len();
        let out = storage
            .create(&key)
            .map_err(Error::io(format!("repacking {key}")))?;
        let mut w = PackWriter::new(out, pack, shared.header.block_size)
            .map_err(Error::io(format!("repacking {key}")))?;
        for e in index.entries.iter().filter(|e| is_live(e.block)) {
            let stored = index
                .read_stored(&*object, e)
                .map_err(Error::io(format!("reading {key}")))?;
            w.append(e.block, &stored, e.compressed, e.hash)
                .map_err(Error::io(format!("repacking {key}")))?;
        }
        let new_size = w
            .finish()
            .map_err(Error::io(format!("publishing repacked {key}")))?;
        shared.packs.forget(pack);
        stats.repacked += 1;
        stats.freed_bytes += old_size.saturating_sub(new_size);
    }

    for drp in maps.into_iter().filter(|m| !live.contains(m)) {
        remove(shared, &layout::map(vm, disk, drp), stats)?;
    }
    Ok(())
}
