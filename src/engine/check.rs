//! Verifying a whole store.
//!
//! Structure: every record parses and its envelope checksum holds; points reference existing
//! collections; names are unique; limits hold; every record obeys the naming and identity rules
//! the CLI enforces when it writes one (see `rules`); every committed disk restore point has a
//! valid map whose packs exist with valid tables holding every block the map references; nothing
//! is left that no committed point references. With `read_data`, every stored block is read,
//! decompressed and its hash compared. A medium low on space is a warning, not damage
//! (`super::reserve::low_space`).
//!
//! Invariants: check never stops at the first problem; it reports each one with the point, disk
//! and block affected. It takes each VM's lock (waiting for it) so it never sees an operation
//! half done, and it changes nothing.
//!
//! Repair ([`Engine::repair`]) is check with `read_data`, then, still under the VM's lock, the
//! removal of the files no committed point references. It never removes a record, map, pack or
//! configuration a committed point references, so every point check finds intact stays intact;
//! points with damage are named, not removed. When a VM's point record or block map cannot be
//! read, nothing of that VM is removed: what it references is unknown. A second repair finds
//! nothing to remove. A record that breaks a naming or identity rule is reported and left as it
//! is: mending it would mean guessing a rename, and its data is not damaged.
//!
//! Format 2 (`format::PAGED`) shares the records' part; its maps, store-wide packs and index
//! are checked and repaired by `paged::check`: what a sweep will free (unreferenced packs and
//! pages, an owed sweep, stale index entries) is a note, not a problem; a repair removes damaged
//! index segments and runs the sweep.

mod rules;

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use uuid::Uuid;

use super::Engine;
use super::catalog;
use super::error::{Error, Result};
use super::policy::MAX_POINTS_PER_VM;
use super::progress::Progress;
use crate::store::blockmap::BlockMap;
use crate::store::layout::{self, Name};
use crate::store::pack::{PackError, PackIndex};
use crate::store::records::{CollectionRecord, PointRecord, VmRecord};
use crate::store::storage::{Object, Storage, remove_if_present};
use crate::store::{envelope, format, kind, read_record};

pub use super::report::CheckReport;
use super::report::ranges;
use rules::{RecordRules, disk_point_ids_unique, point_disk_rules, vm_rules};

struct LoadedPack {
    object: std::sync::Arc<dyn Object>,
    index: PackIndex,
}

impl Engine {
    /// Checks the store; see the module documentation.
    pub fn check(&self, read_data: bool, progress: &dyn Progress) -> Result<CheckReport> {
        self.check_and_repair(read_data, false, false, progress)
    }

    /// Checks the store reading every block and, with `apply`, removes the unreachable files it
    /// found; see the module documentation.
    pub fn repair(&self, apply: bool, progress: &dyn Progress) -> Result<CheckReport> {
        self.check_and_repair(true, true, apply, progress)
    }

    fn check_and_repair(
        &self,
        read_data: bool,
        repairing: bool,
        apply: bool,
        progress: &dyn Progress,
    ) -> Result<CheckReport> {
        let storage = &*self.shared.storage;
        let mut report = CheckReport::default();
        report
            .warnings
            .extend(super::reserve::low_space(&self.shared));
        let mut collection_names: HashMap<String, usize> = HashMap::new();
        let mut vm_names: HashMap<String, usize> = HashMap::new();
        let mut rules = RecordRules::default();
        // Format 2: packs and index are store-wide, checked once every VM's maps were read.
        let mut paged = (self.shared.header.version == format::PAGED)
            .then(super::paged::check::PagedCheck::new);
        for vm_id in catalog::vm_ids(storage)? {
            // Without the lock (a read-only store) check still runs, but could meet an
            // operation half done; the log says so.
            let _lock = match storage.lock(&layout::vm_lock(vm_id)) {
                Ok(l) => Some(l),
                Err(e) if apply => {
                    return Err(Error::io(format!("locking VM {vm_id} to repair it"))(e));
                }
                Err(e) => {
                    tracing::warn!("checking VM {vm_id} without its lock: {e}");
                    None
                }
            };
            let first_unreachable = report.unreachable.len();
            let vm: Option<VmRecord> =
                match read_record(storage, &layout::vm_record(vm_id), kind::VM) {
                    Ok(v) => Some(v),
                    Err(e) if e.is_not_found() => {
                        let points = storage
                            .list(&layout::points_dir(vm_id))
                            .map_err(Error::io(format!("listing the points of VM {vm_id}")))?;
                        let n = points
                            .iter()
                            .filter(|n| matches!(layout::classify(n), Name::Record(_)))
                            .count();
                        if n > 0 {
                            report.problems.push(format!(
                            "{}: the VM record is missing, but {n} restore point records remain",
                            layout::vm_dir(vm_id)
                        ));
                        }
                        continue;
                    }
                    Err(e) => {
                        report.problems.push(e.to_string());
                        None
                    }
                };
            if let Some(vm) = &vm {
                *vm_names.entry(vm.name.clone()).or_default() += 1;
                report.vms += 1;
                report.problems.extend(vm_rules(vm_id, vm));
            }
            let certain = self.check_vm(
                vm_id,
                vm.as_ref(),
                read_data,
                progress,
                &mut collection_names,
                &mut rules,
                paged.as_mut(),
                &mut report,
            )?;
            if !certain && let Some(pc) = paged.as_mut() {
                pc.uncertain();
            }
            if !certain && report.unreachable.len() > first_unreachable {
                // A record or map that cannot be read may reference any of these files.
                let n = report.unreachable.len() - first_unreachable;
                report.unreachable.truncate(first_unreachable);
                report.problems.push(format!(
                    "VM {vm_id}: {n} unreferenced files kept: a damaged or unreadable record or \
                     map may reference them"
                ));
            }
            if apply {
                // Still under the VM's lock: no operation can have started using these files.
                for key in &report.unreachable[first_unreachable..] {
                    remove_if_present(storage, key)
                        .map_err(Error::io(format!("removing {key}")))?;
                }
                report
                    .removed
                    .extend_from_slice(&report.unreachable[first_unreachable..]);
            }
        }
        for (name, n) in vm_names.into_iter().chain(collection_names) {
            if n > 1 {
                report
                    .problems
                    .push(format!("name '{name}' is used by {n} VMs or collections"));
            }
        }
        if let Some(pc) = paged {
            pc.finish(self, read_data, repairing, apply, progress, &mut report)?;
        }
        Ok(report)
    }

    /// Checks one VM; returns whether every point record and map could be read (only then is
    /// it certain what the VM's files are referenced by).
    #[allow(
        clippy::too_many_arguments,
        reason = "the store-wide tallies (names, ids) travel with the VM being checked"
    )]
    fn check_vm(
        &self,
        vm_id: Uuid,
        vm: Option<&VmRecord>,
        read_data: bool,
        progress: &dyn Progress,
        collection_names: &mut HashMap<String, usize>,
        rules: &mut RecordRules,
        mut paged: Option<&mut super::paged::check::PagedCheck>,
        report: &mut CheckReport,
    ) -> Result<bool> {
        let storage = &*self.shared.storage;
        let vm_label = vm.map_or_else(|| vm_id.to_string(), |v| v.name.clone());
        let list = |dir: &str| {
            storage
                .list(dir)
                .map_err(Error::io(format!("listing {dir}")))
        };

        if list(&layout::vm_dir(vm_id))?
            .iter()
            .any(|n| layout::classify(n) == Name::Pending)
        {
            report.problems.push(format!(
                "VM '{vm_label}': an interrupted operation was not recovered (pending.json)"
            ));
        }
        let mut collections: HashMap<Uuid, CollectionRecord> = HashMap::new();
        let cdir = layout::collections_dir(vm_id);
        for name in list(&cdir)? {
            match layout::classify(&name) {
                Name::Record(id) => match read_record::<CollectionRecord>(
                    storage,
                    &layout::collection(vm_id, id),
                    kind::COLLECTION,
                ) {
                    Ok(c) => {
                        *collection_names.entry(c.name.clone()).or_default() += 1;
                        report.problems.extend(rules.collection(vm_id, id, &c));
                        collections.insert(c.id, c);
                    }
                    Err(e) => report.problems.push(e.to_string()),
                },
                other => {
                    report
                        .problems
                        .push(format!("{cdir}/{name}: unexpected file"));
                    // A temporary here may be a collection record being written under the
                    // store's lock, which a repair does not hold.
                    if !matches!(other, Name::Temp { .. }) {
                        report.unreachable.push(format!("{cdir}/{name}"));
                    }
                }
            }
        }
        report.collections += collections.len();

        let pdir = layout::points_dir(vm_id);
        let mut points: Vec<PointRecord> = Vec::new();
        let mut certain = true;
        let names: Vec<(String, Name)> = list(&pdir)?
            .into_iter()
            .map(|n| {
                let c = layout::classify(&n);
                (n, c)
            })
            .collect();
        let records: HashSet<Uuid> = names
            .iter()
            .filter_map(|(_, c)| match c {
                Name::Record(id) => Some(*id),
                _ => None,
            })
            .collect();
        for (name, class) in &names {
            match class {
                Name::Record(id) => {
                    let key = layout::point(vm_id, *id);
                    match read_record::<PointRecord>(storage, &key, kind::POINT) {
                        Ok(p) => {
                            report.problems.extend(rules.point(vm_id, *id, &p));
                            points.push(p);
                        }
                        Err(e) => {
                            report.problems.push(e.to_string());
                            certain = false;
                        }
                    }
                }
                Name::Config(id) if records.contains(id) => {}
                Name::Config(_) => {
                    report.problems.push(format!(
                        "{pdir}/{name}: configuration of no committed point"
                    ));
                    report.unreachable.push(format!("{pdir}/{name}"));
                }
                _ => {
                    report
                        .problems
                        .push(format!("{pdir}/{name}: unexpected file"));
                    report.unreachable.push(format!("{pdir}/{name}"));
                }
            }
        }
        points.sort_by_key(|p| p.seq);
        report.points += points.len();
        report
            .problems
            .extend(disk_point_ids_unique(&vm_label, &points));
        if points.len() > MAX_POINTS_PER_VM {
            report.problems.push(format!(
                "VM '{vm_label}' has {} restore points, more than the limit of {MAX_POINTS_PER_VM}",
                points.len()
            ));
        }

        let mut seen: HashSet<(Uuid, &str)> = HashSet::new();
        let short = |p: &PointRecord| {
            let c = collections
                .get(&p.collection_id)
                .map_or_else(|| p.collection_id.to_string(), |c| c.name.clone());
            format!("{c}/{}", p.name)
        };
        let label = |p: &PointRecord| format!("restore point {}", short(p));
        for p in &points {
            if !collections.contains_key(&p.collection_id) {
                report.problems.push(format!(
                    "{}: its collection {} does not exist",
                    label(p),
                    p.collection_id
                ));
            }
            if !seen.insert((p.collection_id, p.name.as_str())) {
                report
                    .problems
                    .push(format!("{}: name used twice in its collection", label(p)));
            }
            report.problems.extend(point_disk_rules(&label(p), p, vm));
            let key = layout::point_config(vm_id, p.id);
            match storage.read(&key) {
                Ok(bytes) => match envelope::open(&key, kind::CONFIG, &bytes) {
                    Ok(body) if body.len() as u64 == p.config_len => continue,
                    Ok(body) => report.problems.push(format!(
                        "{}: configuration is {} bytes, record says {}",
                        label(p),
                        body.len(),
                        p.config_len
                    )),
                    Err(e) => report.problems.push(format!("{}: {e}", label(p))),
                },
                Err(e) => report
                    .problems
                    .push(format!("{}: configuration {key}: {e}", label(p))),
            }
            report.damaged_points.insert(short(p));
        }

        // Disk chains.
        let mut by_disk: BTreeMap<Uuid, Vec<(&PointRecord, Uuid)>> = BTreeMap::new();
        for p in &points {
            for d in &p.disks {
                by_disk.entry(d.disk_id).or_default().push((p, d.drp_id));
            }
        }
        let ddir = layout::disks_dir(vm_id);
        let mut disk_dirs: Vec<Uuid> = list(&ddir)?
            .iter()
            .filter_map(|n| match layout::classify(n) {
                Name::Dir(id) => Some(id),
                _ => None,
            })
            .collect();
        disk_dirs.extend(by_disk.keys().copied());
        disk_dirs.sort();
        disk_dirs.dedup();
        for disk in disk_dirs {
            let drps = by_disk.get(&disk).map(Vec::as_slice).unwrap_or(&[]);
            certain &= match paged.as_deref_mut() {
                Some(pc) => pc.check_disk(self, vm_id, disk, drps, &short, report)?,
                None => self.check_disk(vm_id, disk, drps, &short, read_data, progress, report)?,
            };
        }
        Ok(certain)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one disk's check reads all of its context; a struct would only rename it"
    )]
    fn check_disk(
        &self,
        vm: Uuid,
        disk: Uuid,
        drps: &[(&PointRecord, Uuid)],
        short: &dyn Fn(&PointRecord) -> String,
        read_data: bool,
        progress: &dyn Progress,
        report: &mut CheckReport,
    ) -> Result<bool> {
        let storage: &dyn Storage = &*self.shared.storage;
        let mut certain = true;
        let bs = self.shared.header.block_size;
        let dir = layout::disk_dir(vm, disk);
        let names = storage
            .list(&dir)
            .map_err(Error::io(format!("listing {dir}")))?;
        let live_maps: HashSet<Uuid> = drps.iter().map(|(_, d)| *d).collect();

        let mut packs: HashMap<Uuid, Option<LoadedPack>> = HashMap::new();
        let mut referenced: HashMap<Uuid, HashSet<u64>> = HashMap::new();
        let mut maps: Vec<(&PointRecord, String, BlockMap)> = Vec::new();
        for (p, drp) in drps {
            report.disk_points += 1;
            let d = p.disks.iter().find(|d| d.drp_id == *drp);
            let disk_label = format!(
                "restore point {} disk '{}'",
                short(p),
                d.map_or("?", |d| d.name.as_str())
            );
            let problems_before = report.problems.len();
            let key = layout::map(vm, disk, *drp);
            let map = match storage.read(&key) {
                Ok(bytes) => match BlockMap::decode(&key, &bytes, bs) {
                    Ok(m) => m,
                    Err(e) => {
                        report
                            .problems
                            .push(format!("{disk_label}: block map damaged: {e}"));
                        report.damaged_points.insert(short(p));
                        certain = false;
                        continue;
                    }
                },
                Err(e) => {
                    report
                        .problems
                        .push(format!("{disk_label}: block map {key}: {e}"));
                    report.damaged_points.insert(short(p));
                    certain = false;
                    continue;
                }
            };
            if d.is_some_and(|d| d.size != map.disk_size) {
                report.problems.push(format!(
                    "{disk_label}: map size {} differs from the record",
                    map.disk_size
                ));
            }
            for &pack in &map.packs {
                packs.entry(pack).or_insert_with(|| {
                    let key = layout::pack(vm, disk, pack);
                    let loaded = storage
                        .open(&key)
                        .map_err(PackError::Io)
                        .and_then(|object| {
                            PackIndex::load(&*object, &key, pack, bs)
                                .map(|index| LoadedPack { object, index })
                        });
                    match loaded {
                        Ok(l) => Some(l),
                        Err(e) => {
                            report.problems.push(format!("pack {key}: {e}"));
                            None
                        }
                    }
                });
            }
            let mut missing = Vec::new();
            let mut unreadable = Vec::new();
            for (b, &e) in map.entries.iter().enumerate() {
                if e == 0 {
                    continue;
                }
                let pack = map.packs[e as usize - 1];
                referenced.entry(pack).or_default().insert(b as u64);
                match &packs[&pack] {
                    Some(l) if l.index.find(b as u64).is_some() => {}
                    Some(_) => missing.push(b as u64),
                    None => unreadable.push(b as u64),
                }
            }
            if !missing.is_empty() {
                report.problems.push(format!(
                    "{disk_label}: blocks {} are missing from their packs",
                    ranges(&missing)
                ));
            }
            if !unreadable.is_empty() {
                report.problems.push(format!(
                    "{disk_label}: blocks {} are in packs that cannot be read",
                    ranges(&unreadable)
                ));
            }
            if report.problems.len() > problems_before {
                report.damaged_points.insert(short(p));
            }
            maps.push((p, disk_label, map));
        }
        report.packs += packs.len();

        for name in &names {
            let referenced = match layout::classify(name) {
                Name::Map(m) => live_maps.contains(&m),
                // A pack is named after the point that wrote it: while that point exists (even
                // with a damaged map) its pack is not stray.
                Name::Pack(p) => packs.contains_key(&p) || live_maps.contains(&p),
                _ => false,
            };
            if !referenced {
                report.problems.push(format!(
                    "{dir}/{name}: not referenced by any committed point"
                ));
                report.unreachable.push(format!("{dir}/{name}"));
            }
        }
        for (pack, l) in &packs {
            if let (Some(l), Some(refs)) = (l, referenced.get(pack)) {
                let unref = l
                    .index
                    .entries
                    .iter()
                    .filter(|e| !refs.contains(&e.block))
                    .count();
                if unref > 0 {
                    report.problems.push(format!(
                        "pack {}: {unref} blocks are referenced by no committed point",
                        layout::pack(vm, disk, *pack)
                    ));
                }
            }
        }

        if !read_data {
            return Ok(certain);
        }
        let mut damaged: HashMap<(Uuid, u64), String> = HashMap::new();
        let total: u64 = packs.values().flatten().map(|l| l.index.data_end).sum();
        progress.begin("verifying blocks", total);
        for (pack, l) in packs.iter().filter_map(|(p, l)| Some((p, l.as_ref()?))) {
            let bad: Vec<(u64, String)> = l
                .index
                .entries
                .par_iter()
                .filter_map(|e| {
                    let mut out = vec![0u8; bs as usize];
                    let r = l.index.read_block(&*l.object, e, &mut out);
                    progress.advance(u64::from(e.stored_len));
                    r.err().map(|err| (e.block, err.to_string()))
                })
                .collect();
            report.blocks_verified += l.index.entries.len() as u64;
            report.bytes_verified += l.index.entries.len() as u64 * u64::from(bs);
            for (b, why) in bad {
                damaged.insert((*pack, b), why);
            }
        }
        progress.end();
        if damaged.is_empty() {
            return Ok(certain);
        }
        let mut reported: HashSet<(Uuid, u64)> = HashSet::new();
        for (p, disk_label, map) in &maps {
            let mut hits: Vec<(u64, &str)> = Vec::new();
            for (b, &e) in map.entries.iter().enumerate() {
                if e == 0 {
                    continue;
                }
                let key = (map.packs[e as usize - 1], b as u64);
                if let Some(why) = damaged.get(&key) {
                    hits.push((b as u64, why));
                    reported.insert(key);
                }
            }
            if !hits.is_empty() {
                report.damaged_points.insert(short(p));
            }
            for (b, why) in hits {
                report.problems.push(format!(
                    "{disk_label} block {b} (offset {}): damaged: {why}",
                    b * u64::from(bs)
                ));
            }
        }
        for ((pack, b), why) in &damaged {
            if !reported.contains(&(*pack, *b)) {
                report.problems.push(format!(
                    "pack {} block {b} (referenced by no point): damaged: {why}",
                    layout::pack(vm, disk, *pack)
                ));
            }
        }
        Ok(certain)
    }
}

#[cfg(test)]
mod tests;
