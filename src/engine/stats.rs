//! `rpfs stats`: what the store holds and what it would free, per collection, per VM and for
//! the store.
//!
//! Figures, for a collection or a VM (a VM's are over all its collections):
//! - **logical**: data pages (format 2) or data blocks (format 1) of every disk of every
//!   committed point, times their size: what the points would take stored whole, holes left out.
//!   Read from map headers (format 2) or maps (format 1); no data is read.
//! - **referenced**: stored bytes of what its maps reference. A frame referenced in part counts
//!   its stored length pro rata of its present pages (exact for raw frames, an estimate for
//!   compressed ones).
//! - **shared**: the part of *referenced* that some other VM also references.
//! - **exclusive**: the part of *referenced* nothing else in the store references: what deleting
//!   it (every point of the collection, or of the VM) frees in frames. Deleting also frees the
//!   points' maps and each freed page's 16-byte fingerprint, and a pack left empty is removed
//!   whole (header and tables); those are not counted here.
//!
//! Algorithm (format 2): the summary of every committed map (the `(pack, frame, pages)` it
//! references) is united per collection; then each pack's frame table is read once, and each
//! present page of each frame is attributed to the collections whose summaries name it. Memory
//! is the per-collection summaries (proportional to the frames referenced) and one pack's table.
//!
//! Format 1 has no sharing across VMs: a pack belongs to one disk of one VM and counts whole
//! (its file size) for each collection whose maps name it; *shared* is zero.
//!
//! Invariants: read-only; runs under the creation lock held shared (format 2), so no sweep
//! removes or repacks a pack during the walk. A creation running meanwhile may have written
//! packs no committed map references yet: they count as *unreferenced*. Packs that cannot be
//! read are named in `warnings` and left out; a point whose map cannot be read fails the whole
//! command (its figures would be wrong).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use uuid::Uuid;

use super::Engine;
use super::catalog::Catalog;
use super::error::{Error, Result};
use super::shared::Shared;
use crate::store::block::Compression;
use crate::store::blockmap::BlockMap;
use crate::store::format;
use crate::store::frames::FramePack;
use crate::store::layout::{self, Name};
use crate::store::page::PAGE_SIZE;
use crate::store::pagemap::PageMap;
use crate::store::refs::RefSet;
use crate::store::storage::Storage;

/// What a collection or a VM holds; bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Data pages (blocks in format 1) of its points' disks, times the page size.
    pub logical_bytes: u64,
    /// Stored bytes of what it references (pro rata of present pages for partly referenced
    /// frames).
    pub referenced_bytes: u64,
    /// Part of `referenced_bytes` some other VM references too.
    pub shared_bytes: u64,
    /// Part of `referenced_bytes` nothing else references: freed by deleting it.
    pub exclusive_bytes: u64,
}

/// One collection's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionStats {
    pub name: String,
    pub id: Uuid,
    pub points: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

/// One VM's figures, and its collections'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStats {
    pub name: String,
    pub id: Uuid,
    pub points: u64,
    #[serde(flatten)]
    pub usage: Usage,
    pub collections: Vec<CollectionStats>,
}

/// The whole store's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    /// On-disk format version (1 or 2).
    pub format: u32,
    /// What new data is compressed with (`lz4`, `zstd:LEVEL`).
    pub compression: Compression,
    /// Sum of every VM's logical bytes.
    pub logical_bytes: u64,
    /// `pack_bytes + index_bytes + map_bytes`.
    pub stored_bytes: u64,
    /// Sizes of the pack objects (`data/` in format 2, the disks' directories in format 1).
    pub pack_bytes: u64,
    /// Sizes of the dedup index segments (`index/`; 0 in format 1).
    pub index_bytes: u64,
    /// Sizes of the committed points' maps.
    pub map_bytes: u64,
    /// Stored bytes of the frames (blocks in format 1) inside the packs: pack bytes without
    /// headers, tables and fingerprints.
    pub frame_bytes: u64,
    /// Part of `frame_bytes` no committed point references (freed by the next sweep).
    pub unreferenced_bytes: u64,
    /// `logical_bytes / stored_bytes` (0 for an empty store).
    pub dedup_ratio: f64,
    pub vms: Vec<VmStats>,
    /// Packs left out because they could not be read, with the reason.
    pub warnings: Vec<String>,
}

impl Engine {
    /// The store's figures; see the module doc. Reads map headers and summaries and pack
    /// tables, never data.
    pub fn stats(&self) -> Result<StoreStats> {
        let cat = Catalog::load(&*self.shared.storage)?;
        let _creation = self.shared.creation_lock()?;
        if self.shared.header.version == format::PAGED {
            paged(&self.shared, &cat)
        } else {
            blocks(&self.shared, &cat)
        }
    }
}

/// Page counters of one owner, turned into bytes frame by frame.
#[derive(Debug, Clone, Copy, Default)]
struct Pages {
    referenced: u64,
    shared: u64,
    exclusive: u64,
}

/// Adds `pages` of a frame of `total` present pages and `stored` bytes, pro rata, to `usage`.
fn add_pro_rata(usage: &mut Usage, pages: Pages, stored: u64, total: u64) {
    // stored < 2^32 and n ≤ 16: no overflow; a frame of no pages has no bytes to share.
    let part = |n: u64| stored.saturating_mul(n).checked_div(total).unwrap_or(0);
    usage.referenced_bytes += part(pages.referenced);
    usage.shared_bytes += part(pages.shared);
    usage.exclusive_bytes += part(pages.exclusive);
}

/// The collections of the catalog in output order (by VM, then name), with the VM each
/// belongs to (an index into `cat.vms`).
fn owners(cat: &Catalog) -> (Vec<VmStats>, Vec<(usize, usize)>) {
    let mut vms: Vec<VmStats> = cat
        .vms
        .iter()
        .map(|v| VmStats {
            name: v.name.clone(),
            id: v.id,
            points: cat.points_of_vm(v.id).count() as u64,
            usage: Usage::default(),
            collections: Vec::new(),
        })
        .collect();
    let mut colls = Vec::new();
    for (vi, v) in cat.vms.iter().enumerate() {
        let mut mine: Vec<_> = cat.collections.iter().filter(|c| c.vm_id == v.id).collect();
        mine.sort_by(|a, b| a.name.cmp(&b.name));
        for c in mine {
            let ci = vms[vi].collections.len();
            vms[vi].collections.push(CollectionStats {
                name: c.name.clone(),
                id: c.id,
                points: cat.points_in(c.id).count() as u64,
                usage: Usage::default(),
            });
            colls.push((vi, ci));
        }
    }
    (vms, colls)
}

fn ratio(logical: u64, stored: u64) -> f64 {
    if stored == 0 {
        0.0
    } else {
        logical as f64 / stored as f64
    }
}

/// Sum of the sizes of the objects directly in `dir` whose names satisfy `keep`, and their
/// keys. A missing directory is empty.
fn objects_in(
    storage: &dyn Storage,
    dir: &str,
    keep: impl Fn(&Name) -> bool,
) -> Result<Vec<(String, u64)>> {
    let names = match storage.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                context: format!("listing {dir}"),
                source: e,
            });
        }
    };
    let mut out = Vec::new();
    for name in names {
        if !keep(&layout::classify(&name)) {
            continue;
        }
        let key = format!("{dir}/{name}");
        // Gone since the listing (a concurrent deletion): nothing to count.
        if let Ok(size) = storage.size(&key) {
            out.push((key, size));
        }
    }
    Ok(out)
}

/// Format 2; see the module doc.
fn paged(shared: &Shared, cat: &Catalog) -> Result<StoreStats> {
    let storage = &*shared.storage;
    let (mut vms, colls) = owners(cat);
    let coll_index: HashMap<Uuid, usize> = colls
        .iter()
        .enumerate()
        .map(|(i, &(vi, ci))| (vms[vi].collections[ci].id, i))
        .collect();
    let mut sets = vec![RefSet::new(); colls.len()];
    let mut map_bytes = 0u64;
    for p in &cat.points {
        let Some(&i) = coll_index.get(&p.collection_id) else {
            continue;
        };
        let (vi, ci) = colls[i];
        for d in &p.disks {
            let key = layout::map(p.vm_id, d.disk_id, d.drp_id);
            let obj = storage
                .open(&key)
                .map_err(Error::io(format!("opening {key} of a committed point")))?;
            let map = PageMap::open(&key, &*obj)?;
            map_bytes += obj.len();
            vms[vi].collections[ci].usage.logical_bytes +=
                map.data_pages.saturating_mul(PAGE_SIZE as u64);
            sets[i].union_with(&map.summary(&key, &*obj)?);
        }
    }

    let mut stats = StoreStats {
        format: shared.header.version,
        compression: shared.header.compression,
        map_bytes,
        ..StoreStats::default()
    };
    stats.index_bytes = objects_in(storage, layout::INDEX, |n| matches!(n, Name::Segment(_)))?
        .iter()
        .map(|(_, s)| s)
        .sum();
    let data_dirs = match storage.list(layout::DATA) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(Error::Io {
                context: "listing data".into(),
                source: e,
            });
        }
    };
    let mut packs = Vec::new();
    for dir in data_dirs {
        let dir = format!("{}/{dir}", layout::DATA);
        for (key, size) in objects_in(storage, &dir, |n| matches!(n, Name::Pack(_)))? {
            stats.pack_bytes += size;
            packs.push(key);
        }
    }

    let mut vm_usage = vec![Usage::default(); vms.len()];
    let mut coll_usage = vec![Usage::default(); colls.len()];
    for key in packs {
        let Some(Name::Pack(pack)) = key.rsplit('/').next().map(layout::classify) else {
            continue;
        };
        if let Err(why) = attribute_pack(
            shared,
            (&key, pack),
            &sets,
            &colls,
            (&mut coll_usage, &mut vm_usage),
            &mut stats,
        ) {
            stats.warnings.push(format!("{key}: {why}"));
        }
    }
    for (i, &(vi, ci)) in colls.iter().enumerate() {
        let c = &mut vms[vi].collections[ci].usage;
        let u = coll_usage[i];
        c.referenced_bytes = u.referenced_bytes;
        c.shared_bytes = u.shared_bytes;
        c.exclusive_bytes = u.exclusive_bytes;
    }
    for (vi, v) in vms.iter_mut().enumerate() {
        v.usage = Usage {
            logical_bytes: v.collections.iter().map(|c| c.usage.logical_bytes).sum(),
            ..vm_usage[vi]
        };
    }
    stats.logical_bytes = vms.iter().map(|v| v.usage.logical_bytes).sum();
    stats.stored_bytes = stats.pack_bytes + stats.index_bytes + stats.map_bytes;
    stats.dedup_ratio = ratio(stats.logical_bytes, stats.stored_bytes);
    stats.vms = vms;
    Ok(stats)
}

/// Reads pack `key`'s table and attributes each present page of each frame to the collections
/// (`sets`, each of VM `colls[i].0`) that reference it.
fn attribute_pack(
    shared: &Shared,
    (key, pack): (&str, Uuid),
    sets: &[RefSet],
    colls: &[(usize, usize)],
    (coll_usage, vm_usage): (&mut [Usage], &mut [Usage]),
    stats: &mut StoreStats,
) -> std::result::Result<(), String> {
    let storage = &*shared.storage;
    let object = storage.open(key).map_err(|e| e.to_string())?;
    let fp = FramePack::open(key, &*object, pack, shared.header.block_size)
        .map_err(|e| e.to_string())?;
    // Frame → the collections referencing it, with their masks.
    let mut refs: BTreeMap<u32, Vec<(usize, u16)>> = BTreeMap::new();
    for (i, set) in sets.iter().enumerate() {
        for &(frame, mask) in set.frames(pack) {
            refs.entry(frame).or_default().push((i, mask));
        }
    }
    let mut table = Vec::new();
    for chunk in 0..fp.table_chunks() {
        table.extend(
            fp.table_chunk(key, &*object, chunk)
                .map_err(|e| e.to_string())?,
        );
    }
    let mut colls_here: Vec<(usize, Pages)> = Vec::new();
    let mut vms_here: Vec<(usize, Pages)> = Vec::new();
    for (f, e) in table.iter().enumerate() {
        let stored = u64::from(e.stored_len);
        let total = u64::from(e.pages());
        stats.frame_bytes += stored;
        let by = u32::try_from(f)
            .ok()
            .and_then(|f| refs.get(&f))
            .map_or(&[][..], Vec::as_slice);
        colls_here.clear();
        vms_here.clear();
        let mut unreferenced = 0u64;
        for slot in (0..16u8).filter(|s| e.mask & (1 << s) != 0) {
            let bit = 1u16 << slot;
            let owners = || {
                by.iter()
                    .filter(move |(_, m)| m & bit != 0)
                    .map(|&(i, _)| i)
            };
            let n_colls = owners().count();
            if n_colls == 0 {
                unreferenced += 1;
                continue;
            }
            let mut vm_ids: Vec<usize> = owners().map(|i| colls[i].0).collect();
            vm_ids.sort_unstable();
            vm_ids.dedup();
            let many_vms = vm_ids.len() > 1;
            for i in owners() {
                let p = entry(&mut colls_here, i);
                p.referenced += 1;
                p.shared += u64::from(many_vms);
                p.exclusive += u64::from(n_colls == 1);
            }
            for v in vm_ids {
                let p = entry(&mut vms_here, v);
                p.referenced += 1;
                p.shared += u64::from(many_vms);
                p.exclusive += u64::from(!many_vms);
            }
        }
        for &(i, p) in &colls_here {
            add_pro_rata(&mut coll_usage[i], p, stored, total);
        }
        for &(v, p) in &vms_here {
            add_pro_rata(&mut vm_usage[v], p, stored, total);
        }
        stats.unreferenced_bytes += stored
            .saturating_mul(unreferenced)
            .checked_div(total)
            .unwrap_or(0);
    }
    Ok(())
}

/// The counters of `owner` in `list`, added if absent (lists are short: one frame's owners).
fn entry(list: &mut Vec<(usize, Pages)>, owner: usize) -> &mut Pages {
    let at = match list.iter().position(|(o, _)| *o == owner) {
        Some(at) => at,
        None => {
            list.push((owner, Pages::default()));
            list.len() - 1
        }
    };
    &mut list[at].1
}

/// Format 1; see the module doc.
fn blocks(shared: &Shared, cat: &Catalog) -> Result<StoreStats> {
    let storage = &*shared.storage;
    let block = u64::from(shared.header.block_size);
    let (mut vms, colls) = owners(cat);
    let coll_index: HashMap<Uuid, usize> = colls
        .iter()
        .enumerate()
        .map(|(i, &(vi, ci))| (vms[vi].collections[ci].id, i))
        .collect();
    // Pack key → the collections whose maps name it.
    let mut named: HashMap<String, Vec<usize>> = HashMap::new();
    let mut map_bytes = 0u64;
    for p in &cat.points {
        let Some(&i) = coll_index.get(&p.collection_id) else {
            continue;
        };
        let (vi, ci) = colls[i];
        for d in &p.disks {
            let key = layout::map(p.vm_id, d.disk_id, d.drp_id);
            let bytes = storage
                .read(&key)
                .map_err(Error::io(format!("reading {key} of a committed point")))?;
            map_bytes += bytes.len() as u64;
            let map = BlockMap::decode(&key, &bytes, shared.header.block_size)?;
            vms[vi].collections[ci].usage.logical_bytes += map.data_blocks().saturating_mul(block);
            for pack in &map.packs {
                let owners = named
                    .entry(layout::pack(p.vm_id, d.disk_id, *pack))
                    .or_default();
                if !owners.contains(&i) {
                    owners.push(i);
                }
            }
        }
    }
    let mut stats = StoreStats {
        format: shared.header.version,
        compression: shared.header.compression,
        map_bytes,
        ..StoreStats::default()
    };
    let mut coll_usage = vec![Usage::default(); colls.len()];
    let mut vm_usage = vec![Usage::default(); vms.len()];
    for v in &cat.vms {
        for d in &v.disks {
            let dir = layout::disk_dir(v.id, d.id);
            for (key, size) in objects_in(storage, &dir, |n| matches!(n, Name::Pack(_)))? {
                stats.pack_bytes += size;
                stats.frame_bytes += size;
                let owners = named.get(&key).map_or(&[][..], Vec::as_slice);
                if owners.is_empty() {
                    stats.unreferenced_bytes += size;
                    continue;
                }
                for &i in owners {
                    let u = &mut coll_usage[i];
                    u.referenced_bytes += size;
                    if owners.len() == 1 {
                        u.exclusive_bytes += size;
                    }
                }
                // Packs belong to one disk of one VM: all of it is the VM's alone.
                let vi = colls[owners[0]].0;
                vm_usage[vi].referenced_bytes += size;
                vm_usage[vi].exclusive_bytes += size;
            }
        }
    }
    for (i, &(vi, ci)) in colls.iter().enumerate() {
        let c = &mut vms[vi].collections[ci].usage;
        c.referenced_bytes = coll_usage[i].referenced_bytes;
        c.exclusive_bytes = coll_usage[i].exclusive_bytes;
    }
    for (vi, v) in vms.iter_mut().enumerate() {
        v.usage = Usage {
            logical_bytes: v.collections.iter().map(|c| c.usage.logical_bytes).sum(),
            ..vm_usage[vi]
        };
    }
    stats.logical_bytes = vms.iter().map(|v| v.usage.logical_bytes).sum();
    stats.stored_bytes = stats.pack_bytes + stats.map_bytes;
    stats.dedup_ratio = ratio(stats.logical_bytes, stats.stored_bytes);
    stats.vms = vms;
    Ok(stats)
}
