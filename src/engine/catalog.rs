//! A snapshot of the store's metadata: VMs, collections and committed points, with lookups by
//! name.
//!
//! Invariants: a snapshot is read without locks and may be stale by the time it is used;
//! operations that change a VM reload what they decide on after taking that VM's lock, with the
//! strict [`load_points`]: one unreadable record fails it (naming the file), because acting on a
//! partial view could delete data that an unreadable record still references. A [`Catalog`]
//! snapshot, used to list and read, skips damaged records and names them in
//! [`Catalog::damaged`], so one damaged record does not hide every other point. A snapshot is
//! indexed by id when loaded (VMs, collections and points resolve in O(1)); its lists are not
//! changed afterwards.

use std::collections::HashMap;

use uuid::Uuid;

use super::error::{Error, Result};
use crate::store::layout::{self, Name};
use crate::store::records::{CollectionRecord, PointRecord, VmRecord};
use crate::store::storage::Storage;
use crate::store::{kind, read_record};

/// VMs, collections and committed points, each list sorted for stable output.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub vms: Vec<VmRecord>,
    pub collections: Vec<CollectionRecord>,
    /// Sorted by VM, then creation order.
    pub points: Vec<PointRecord>,
    /// Records that could not be read, with the reason; left out of the lists above.
    pub damaged: Vec<String>,
    /// Positions in the lists above, by id.
    index: Index,
}

#[derive(Debug, Clone, Default)]
struct Index {
    vms: HashMap<Uuid, usize>,
    collections: HashMap<Uuid, usize>,
    points: HashMap<Uuid, usize>,
}

fn positions<T>(items: &[T], id: impl Fn(&T) -> Uuid) -> HashMap<Uuid, usize> {
    items.iter().enumerate().map(|(i, x)| (id(x), i)).collect()
}

fn list_records(storage: &dyn Storage, dir: &str) -> Result<Vec<Uuid>> {
    let names = storage
        .list(dir)
        .map_err(Error::io(format!("listing {dir}")))?;
    Ok(names
        .iter()
        .filter_map(|n| match layout::classify(n) {
            Name::Record(id) => Some(id),
            _ => None,
        })
        .collect())
}

/// Ids of the VMs whose record exists.
pub fn vm_ids(storage: &dyn Storage) -> Result<Vec<Uuid>> {
    let names = storage
        .list(layout::VMS)
        .map_err(Error::io("listing vms"))?;
    Ok(names
        .iter()
        .filter_map(|n| match layout::classify(n) {
            Name::Dir(id) => Some(id),
            _ => None,
        })
        .collect())
}

/// Reads one VM record; `None` when the VM directory has no record (being added or removed).
pub fn load_vm(storage: &dyn Storage, id: Uuid) -> Result<Option<VmRecord>> {
    match read_record(storage, &layout::vm_record(id), kind::VM) {
        Ok(vm) => Ok(Some(vm)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Committed points of one VM, in creation order.
pub fn load_points(storage: &dyn Storage, vm: Uuid) -> Result<Vec<PointRecord>> {
    let mut points = Vec::new();
    for id in list_records(storage, &layout::points_dir(vm))? {
        let p: PointRecord = read_record(storage, &layout::point(vm, id), kind::POINT)?;
        points.push(p);
    }
    points.sort_by_key(|p| p.seq);
    Ok(points)
}

/// Collections of one VM.
pub fn load_collections(storage: &dyn Storage, vm: Uuid) -> Result<Vec<CollectionRecord>> {
    let mut out = Vec::new();
    for id in list_records(storage, &layout::collections_dir(vm))? {
        out.push(read_record(
            storage,
            &layout::collection(vm, id),
            kind::COLLECTION,
        )?);
    }
    Ok(out)
}

/// Reads the records `<id>.json` of `kind` in `dir`, keeping what is readable and naming the
/// rest in `damaged`. I/O errors other than damage still fail.
fn load_lenient<T: serde::de::DeserializeOwned + crate::store::records::Record>(
    storage: &dyn Storage,
    dir: &str,
    kind: &str,
    damaged: &mut Vec<String>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for id in list_records(storage, dir)? {
        match read_record(storage, &format!("{dir}/{id}.json"), kind) {
            Ok(r) => out.push(r),
            Err(crate::store::RecordError::Corrupt(c)) => damaged.push(c.to_string()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

impl Catalog {
    /// Reads every record in the store, skipping (and naming) damaged ones.
    pub fn load(storage: &dyn Storage) -> Result<Catalog> {
        let mut cat = Catalog::default();
        for id in vm_ids(storage)? {
            let vm = match load_vm(storage, id) {
                Ok(Some(vm)) => vm,
                Ok(None) => continue,
                Err(Error::Corrupt(c)) => {
                    cat.damaged.push(c.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let collections = load_lenient(
                storage,
                &layout::collections_dir(id),
                kind::COLLECTION,
                &mut cat.damaged,
            )?;
            let mut points: Vec<PointRecord> = load_lenient(
                storage,
                &layout::points_dir(id),
                kind::POINT,
                &mut cat.damaged,
            )?;
            points.sort_by_key(|p| p.seq);
            cat.collections.extend(collections);
            cat.points.extend(points);
            cat.vms.push(vm);
        }
        cat.vms.sort_by(|a, b| a.name.cmp(&b.name));
        cat.collections.sort_by(|a, b| a.name.cmp(&b.name));
        cat.index = Index {
            vms: positions(&cat.vms, |v| v.id),
            collections: positions(&cat.collections, |c| c.id),
            points: positions(&cat.points, |p| p.id),
        };
        Ok(cat)
    }

    pub fn vm(&self, name: &str) -> Result<&VmRecord> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::NotFound {
                what: "VM",
                name: name.to_string(),
                hint: String::new(),
            })
    }

    pub fn vm_by_id(&self, id: Uuid) -> Option<&VmRecord> {
        self.index.vms.get(&id).map(|&i| &self.vms[i])
    }

    pub fn collection(&self, name: &str) -> Result<&CollectionRecord> {
        self.collections
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::NotFound {
                what: "collection",
                name: name.to_string(),
                hint: String::new(),
            })
    }

    pub fn collection_by_id(&self, id: Uuid) -> Option<&CollectionRecord> {
        self.index
            .collections
            .get(&id)
            .map(|&i| &self.collections[i])
    }

    pub fn point_by_id(&self, id: Uuid) -> Option<&PointRecord> {
        self.index.points.get(&id).map(|&i| &self.points[i])
    }

    /// Points of one collection, in creation order.
    pub fn points_in(&self, collection: Uuid) -> impl Iterator<Item = &PointRecord> {
        self.points
            .iter()
            .filter(move |p| p.collection_id == collection)
    }

    /// Points of one VM across all its collections, in creation order.
    pub fn points_of_vm(&self, vm: Uuid) -> impl Iterator<Item = &PointRecord> {
        self.points.iter().filter(move |p| p.vm_id == vm)
    }

    /// Resolves `COLLECTION/NAME`.
    pub fn point(&self, collection: &str, name: &str) -> Result<(&CollectionRecord, &PointRecord)> {
        let c = self.collection(collection)?;
        let p = self
            .points_in(c.id)
            .find(|p| p.name == name)
            .ok_or_else(|| Error::NotFound {
                what: "restore point",
                name: format!("{collection}/{name}"),
                hint: String::new(),
            })?;
        Ok((c, p))
    }
}

/// Splits `COLLECTION/NAME`.
pub fn split_point_path(path: &str) -> Result<(&str, &str)> {
    match path.split_once('/') {
        Some((c, p)) if !c.is_empty() && !p.is_empty() && !p.contains('/') => Ok((c, p)),
        _ => Err(Error::InvalidArgument(format!(
            "restore point {path:?} must be given as COLLECTION/NAME"
        ))),
    }
}
