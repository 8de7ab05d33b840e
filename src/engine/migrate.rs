//! `rpfs migrate --from OLD`: copying a store (format 1, or 2) into this format-2 store.
//!
//! Format-1 stores are not converted in place (design §4 of issue 16): they keep working with
//! the format-1 code, and this copy is the way into format 2. It walks the source's VMs, their
//! collections and their points in creation order (`seq`) and recreates each:
//! - a VM record verbatim: same id (so the 500-per-VM limit and disk ids follow), name, disks
//!   and their paths, scripts and settings; the source disks are not opened;
//! - a collection record verbatim: same id, name, location, defaults and schedule;
//! - a point with the same id, name, creation time, `seq`, consistency mode, configuration
//!   bytes and excluded disks. Each disk is ingested through a [`Source`] that reads the old
//!   point's image: its holes are skipped from the old map, and blocks whose old map entry
//!   names the same stored block as the previous migrated point's are taken from that point's
//!   copy without being read (`Source::unchanged_blocks`), so a chain costs its stored data.
//!
//! Each point is verified before it is committed: every block that was read (not known
//! unchanged) is read back through the new map and compared with the old image; a mismatch
//! fails the copy and commits nothing. The point record is written last, as a creation does,
//! under the VM's lock, with the operation marker and the creation lock, so a crash leaves
//! nothing recovery does not collect.
//!
//! Resumable: a point present by (collection, name) is skipped; a VM or collection present by
//! name with the same id is reused. A name present with another id is refused, as is a target
//! VM whose newest point is newer than a point still to copy (order would break).

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::Engine;
use super::catalog;
use super::clock::now_rfc3339;
use super::error::{Error, Result};
use super::ingest;
use super::paged;
use super::pending;
use super::policy;
use super::progress::Progress;
use super::read::DiskImage;
use super::source::Source;
use crate::store::records::{
    CollectionRecord, DiskPointRecord, PendingKind, PendingOp, PointRecord, VmRecord,
};
use crate::store::{envelope, format, kind, layout, write_record};

/// What a migration did.
#[derive(Debug, Clone, Default)]
pub struct MigrateOutcome {
    /// VMs and collections created in this store (names).
    pub vms_added: Vec<String>,
    pub collections_added: Vec<String>,
    /// Points copied, in order.
    pub copied: Vec<MigratedPoint>,
    /// Points already here, by name.
    pub skipped: u64,
}

/// One point copied.
#[derive(Debug, Clone)]
pub struct MigratedPoint {
    pub collection: String,
    pub point: String,
    /// Bytes read from the old point (blocks known unchanged are not read).
    pub bytes_read: u64,
    /// Bytes the copy added to this store.
    pub bytes_stored: u64,
}

/// The stored identity of each block of a format-1 point's disk: its block size, its map's
/// packs and entries (4 bytes per block: 0 for a hole, else 1 + the pack's position).
type StoredBlocks = (u64, Vec<Uuid>, Vec<u32>);

/// The source's previous point of a disk: its point id and its blocks' identities.
struct Previous {
    point: Uuid,
    blocks: Option<Arc<StoredBlocks>>,
}

impl Engine {
    /// Copies every VM, collection and point of `from` into this store; see the module
    /// documentation.
    pub fn migrate_from(&self, from: &Engine, progress: &dyn Progress) -> Result<MigrateOutcome> {
        if self.shared.header.version != format::PAGED {
            return Err(Error::InvalidArgument(format!(
                "this store is format {}; migrate copies into a format {} store \
                 (make one with `rpfs init --format {}`)",
                self.shared.header.version,
                format::PAGED,
                format::PAGED
            )));
        }
        if from.shared.header.store_id == self.shared.header.store_id {
            return Err(Error::InvalidArgument(
                "the store to migrate from is this store".into(),
            ));
        }
        let src = from.catalog()?;
        if let Some(d) = src.damaged.first() {
            return Err(Error::InvalidArgument(format!(
                "the store to migrate from has records that cannot be read ({d}); \
                 run `rpfs check` on it first"
            )));
        }
        let mut out = MigrateOutcome::default();
        for vm in &src.vms {
            self.copy_vm(vm, &mut out)?;
            for c in src.collections.iter().filter(|c| c.vm_id == vm.id) {
                self.copy_collection(c, &mut out)?;
            }
            let mut previous: HashMap<Uuid, Previous> = HashMap::new();
            for p in src.points_of_vm(vm.id) {
                let coll = src.collection_by_id(p.collection_id).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "point '{}' of VM '{}' in the store to migrate from has no collection",
                        p.name, vm.name
                    ))
                })?;
                match self.copy_point(from, vm, coll, p, &previous, progress)? {
                    Some(copied) => out.copied.push(copied),
                    None => out.skipped += 1,
                }
                for d in &p.disks {
                    let blocks = stored_blocks(&from.open_disk(&coll.name, p, &d.name)?);
                    previous.insert(
                        d.disk_id,
                        Previous {
                            point: p.id,
                            blocks: blocks.map(Arc::new),
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    /// Writes `vm`'s record here unless a VM of that name and id is here already.
    fn copy_vm(&self, vm: &VmRecord, out: &mut MigrateOutcome) -> Result<()> {
        let _store = self.store_lock()?;
        let cat = self.catalog()?;
        match (cat.vm(&vm.name).ok(), cat.vm_by_id(vm.id)) {
            (Some(v), _) if v.id == vm.id => return Ok(()),
            (None, None) => {}
            _ => {
                return Err(Error::Exists {
                    what: "VM (a different one, not migrated from this source)",
                    name: vm.name.clone(),
                });
            }
        }
        let key = layout::vm_record(vm.id);
        write_record(&*self.shared.storage, &key, kind::VM, vm)
            .map_err(Error::io(format!("writing {key}")))?;
        out.vms_added.push(vm.name.clone());
        Ok(())
    }

    /// Writes collection `c`'s record here unless one of that name and id is here already.
    fn copy_collection(&self, c: &CollectionRecord, out: &mut MigrateOutcome) -> Result<()> {
        let _store = self.store_lock()?;
        let cat = self.catalog()?;
        match (cat.collection(&c.name).ok(), cat.collection_by_id(c.id)) {
            (Some(x), _) if x.id == c.id && x.vm_id == c.vm_id => return Ok(()),
            (None, None) => {}
            _ => {
                return Err(Error::Exists {
                    what: "collection (a different one, not migrated from this source)",
                    name: c.name.clone(),
                });
            }
        }
        let key = layout::collection(c.vm_id, c.id);
        write_record(&*self.shared.storage, &key, kind::COLLECTION, c)
            .map_err(Error::io(format!("writing {key}")))?;
        out.collections_added.push(c.name.clone());
        Ok(())
    }

    /// Copies point `p` of collection `coll` of `from`, as a creation would commit it, unless
    /// the collection (here the same record as there) has a point of that name (`None`); see
    /// the module documentation.
    fn copy_point(
        &self,
        from: &Engine,
        vm: &VmRecord,
        coll: &CollectionRecord,
        p: &PointRecord,
        previous: &HashMap<Uuid, Previous>,
        progress: &dyn Progress,
    ) -> Result<Option<MigratedPoint>> {
        let storage = &*self.shared.storage;
        let _lock = self.vm_lock(vm)?;
        let points = catalog::load_points(storage, vm.id)?;
        if points
            .iter()
            .any(|x| x.collection_id == coll.id && x.name == p.name)
        {
            return Ok(None);
        }
        if let Some(last) = points.last()
            && last.seq >= p.seq
        {
            return Err(Error::InvalidArgument(format!(
                "VM '{}' here has point '{}' (created {}), newer than point {}/{} still to \
                 copy; migrate into a store whose VMs hold only points migrated from the source",
                vm.name, last.name, last.created, coll.name, p.name
            )));
        }
        policy::refuse_over_limit(vm, points.len())?;
        let mut op = PendingOp {
            op: PendingKind::Create,
            point_id: p.id,
            clones: Vec::new(),
            started: now_rfc3339(),
            frozen: false,
            collection: coll.name.clone(),
            point: p.name.clone(),
            gc_owed: false,
        };
        pending::begin(&self.shared, vm.id, &mut op)?;
        let result = self.shared.creation_lock().and_then(|creating| {
            let r = self.copy_and_commit(from, coll, p, &points, previous, progress);
            drop(creating);
            r
        });
        match result {
            Ok(out) => {
                let _ = pending::end(&self.shared, vm.id, &mut op, false);
                paged::after_creation(&self.shared);
                Ok(Some(out))
            }
            Err(e) => {
                let _ = pending::end(&self.shared, vm.id, &mut op, true);
                Err(e)
            }
        }
    }

    /// Ingests every disk of `p` from `from`, verifies the copy, then writes the configuration
    /// and the point record (last: it commits the point). `here`: this VM's points.
    fn copy_and_commit(
        &self,
        from: &Engine,
        coll: &CollectionRecord,
        p: &PointRecord,
        here: &[PointRecord],
        previous: &HashMap<Uuid, Previous>,
        progress: &dyn Progress,
    ) -> Result<MigratedPoint> {
        let storage = &*self.shared.storage;
        let fs = u64::from(self.shared.header.block_size);
        let config = from.point_config(p)?;
        let index = paged::index::IndexSet::open(storage);
        let mut disks = Vec::new();
        let mut sources = Vec::new();
        let (mut bytes_read, mut bytes_stored) = (0, 0);
        for d in &p.disks {
            let image = Arc::new(from.open_disk(&coll.name, p, &d.name)?);
            // This store's previous point of the disk, and whether it is the copy of the
            // source's previous one: only then are unchanged blocks taken from it.
            let prev_here = here.iter().rev().find_map(|x| {
                x.disks
                    .iter()
                    .find(|y| y.disk_id == d.disk_id)
                    .map(|y| (x, y))
            });
            let unchanged = match (prev_here, previous.get(&d.disk_id)) {
                (Some((x, _)), Some(prev)) if x.id == prev.point => prev
                    .blocks
                    .as_ref()
                    .zip(stored_blocks(&image))
                    .map(|(before, now)| unchanged(before, &now)),
                _ => None,
            };
            let source = Source::from_image(&d.name, &d.source, image, unchanged);
            let prev_disk = match prev_here {
                Some((_, y)) => Some(paged::ingest::previous(
                    &self.shared,
                    p.vm_id,
                    d.disk_id,
                    y.drp_id,
                )?),
                None => None,
            };
            let drp = Uuid::new_v4();
            let job = paged::ingest::DiskJob {
                vm: p.vm_id,
                disk: d.disk_id,
                drp,
                source: &source,
                prev: prev_disk.as_ref(),
                index: &index,
                readers: ingest::READERS,
            };
            progress.begin(
                &format!("{}/{} disk {}", coll.name, p.name, d.name),
                source.info.size,
            );
            let i = paged::ingest::ingest(&self.shared, &job, progress);
            progress.end();
            let i = i?.ingested;
            bytes_read += i.bytes_read;
            bytes_stored += i.stored_bytes;
            disks.push(DiskPointRecord {
                drp_id: drp,
                disk_id: d.disk_id,
                name: d.name.clone(),
                lun: d.lun,
                size: i.size,
                source: d.source.clone(),
                new_blocks: i.new_blocks,
                stored_bytes: i.stored_bytes,
                has_pack: i.has_pack,
                found_pages: i.found_pages,
            });
            sources.push(source);
        }
        let point = PointRecord {
            disks,
            config_len: config.len() as u64,
            block_size: self.shared.header.block_size,
            ..p.clone()
        };
        for (d, source) in point.disks.iter().zip(&sources) {
            let copy = self.open_disk(&coll.name, &point, &d.name)?;
            let old = from.open_disk(&coll.name, p, &d.name)?;
            verify(&old, &copy, source, fs)?;
        }
        let config_key = layout::point_config(p.vm_id, p.id);
        storage
            .put(&config_key, &envelope::seal(kind::CONFIG, &config))
            .map_err(Error::io(format!("publishing {config_key}")))?;
        let point_key = layout::point(p.vm_id, p.id);
        write_record(storage, &point_key, kind::POINT, &point)
            .map_err(Error::io(format!("publishing {point_key}")))?;
        Ok(MigratedPoint {
            collection: coll.name.clone(),
            point: p.name.clone(),
            bytes_read,
            bytes_stored,
        })
    }
}

/// The stored identity of each block of a format-1 image; `None` for other formats.
fn stored_blocks(image: &DiskImage) -> Option<StoredBlocks> {
    image.stored_blocks()
}

/// Per block, whether `now` names the same stored block as `before` (holes included: a hole
/// is skipped as a hole anyway).
fn unchanged(before: &StoredBlocks, now: &StoredBlocks) -> (u64, Vec<bool>) {
    let (unit, packs, entries) = now;
    let pack = |packs: &[Uuid], e: u32| {
        (e as usize)
            .checked_sub(1)
            .and_then(|i| packs.get(i).copied())
    };
    let known = entries
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            before.0 == *unit
                && before
                    .2
                    .get(i)
                    .is_some_and(|&b| pack(&before.1, b) == pack(packs, e))
        })
        .collect();
    (*unit, known)
}

/// Compares every block of `copy` that was read from `source` (not known unchanged: those are
/// the previous copy's, verified when it was made) with the same block of `old`.
fn verify(old: &DiskImage, copy: &DiskImage, source: &Source, fs: u64) -> Result<()> {
    let mismatch = |what: String| Error::Io {
        context: format!("verifying the copy of {}", old.label()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    if old.size() != copy.size() {
        return Err(mismatch(format!(
            "the copy has {} bytes, the original {}",
            copy.size(),
            old.size()
        )));
    }
    let blocks = old.size().div_ceil(fs);
    let (mut a, mut b) = (vec![0u8; fs as usize], vec![0u8; fs as usize]);
    const CHUNK: u64 = 4096;
    let mut first = 0;
    while first < blocks {
        let count = CHUNK.min(blocks - first);
        let skip = source.unchanged_blocks(first, count, fs);
        let data = source.data_blocks(first, count, fs);
        for i in 0..count {
            if skip.as_ref().is_some_and(|s| s[i as usize]) {
                continue;
            }
            let at = (first + i) * fs;
            if !data[i as usize] && copy.next_data_before(at, at + fs).is_none() {
                // A hole in both: nothing stored to compare (both read as zeros).
                continue;
            }
            let na = old.read_at(at, &mut a)?;
            let nb = copy.read_at(at, &mut b)?;
            if na != nb || blake3::hash(&a[..na]) != blake3::hash(&b[..nb]) {
                return Err(mismatch(format!(
                    "bytes {at}..{} differ; nothing was committed",
                    at + na as u64
                )));
            }
        }
        first += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_unchanged_when_it_names_the_same_pack() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // Before: [a, hole, b, a]; now the packs are listed in another order.
        let before: StoredBlocks = (65536, vec![a, b], vec![1, 0, 2, 1]);
        let now: StoredBlocks = (65536, vec![b, a, c], vec![2, 0, 3, 1, 1]);
        assert_eq!(
            unchanged(&before, &now),
            (65536, vec![true, true, false, false, false])
        );
        // Another block size: nothing is known.
        let other: StoredBlocks = (16384, vec![a], vec![1, 0, 2, 1]);
        assert_eq!(unchanged(&other, &now).1, vec![false; 5]);
    }
}
