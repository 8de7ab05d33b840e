//! Garbage collection: removing what no committed point references, and repacking packs that
//! hold some unreferenced blocks.
//!
//! How: for each disk chain, recount which stored blocks the remaining maps reference
//! (reference counting by scan). Packs and maps nothing references are removed first, then packs
//! holding some unreferenced blocks are *repacked*: rewritten whole under the same id with only
//! the referenced blocks, byte for byte, and atomically renamed over the old file. That frees
//! exactly the space only deleted points used, and every remaining point reads the same bytes.
//!
//! Format 2 stores keep their packs store-wide: here only a VM's own files are collected (maps
//! and configurations of no committed point), then the store-wide sweep (`paged::gc`) runs.
//!
//! Invariants: garbage collection runs under the VM's lock and only after every point record of
//! the VM was read successfully (an unreadable record stops it, so nothing a damaged record
//! references is ever collected). It is idempotent, so recovery can rerun it after a crash at
//! any step. A repack that cannot be done now (too little free space, or it fails) is deferred,
//! never fatal: the old pack is a superset of what is needed, so the store stays sound, and the
//! operation marker keeps the debt until a later collection pays it.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::catalog;
use super::error::{Error, Result};
use super::paged;
use super::shared::Shared;
use crate::store::blockmap::BlockMap;
use crate::store::format;
use crate::store::layout::{self, Name};
use crate::store::pack::{PackError, PackIndex, PackWriter};
use crate::store::storage::Object;

/// Free space a repack leaves untouched on the medium, beyond the size of what it writes.
const REPACK_MARGIN: u64 = 64 << 20;

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    pub removed_files: u64,
    pub repacked: u64,
    pub freed_bytes: u64,
    /// Repacks that could not be done now, each with the reason.
    pub deferred: Vec<String>,
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
        let garbage = match layout::classify(&name) {
            Name::Temp { .. } => true,
            Name::Config(id) => !live_points.contains(&id),
            _ => false,
        };
        if garbage {
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
        let Name::Dir(disk) = layout::classify(&name) else {
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
    if shared.header.version == format::PAGED {
        // Format 2's packs are the store's: what this VM no longer references may be another's.
        let swept = paged::gc::sweep(shared)?;
        stats.removed_files += swept.removed_files;
        stats.repacked += swept.repacked;
        stats.freed_bytes += swept.freed_bytes;
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
        match layout::classify(name) {
            Name::Temp { .. } => remove(shared, &format!("{dir}/{name}"), stats)?,
            Name::Map(id) => maps.push(id),
            Name::Pack(id) => packs.push(id),
            _ => {}
        }
    }

    if shared.header.version == format::PAGED {
        for drp in maps.iter().filter(|m| !live_maps.contains(m)) {
            remove(shared, &layout::map(vm, disk, *drp), stats)?;
        }
        return Ok(());
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
