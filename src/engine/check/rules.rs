//! The naming and identity rules of a store's records, as the CLI enforces them when it writes
//! one; `super` checks them on the records as stored.
//!
//! Invariants: the rules only read the records they are given and change nothing; each finding
//! names the record (its name and key) and the rule it breaks, one finding per broken rule. Ids
//! of collections and points are unique in the store: [`RecordRules`] remembers where each was
//! met first, so one `RecordRules` sees every record of a check.

use std::collections::HashMap;

use uuid::Uuid;

use crate::engine::names;
use crate::store::layout;
use crate::store::records::{CollectionRecord, PointRecord, VmRecord};

/// The naming and identity rules the CLI enforces when it writes a record, checked on records as
/// stored, so a crafted or damaged record cannot pass for one rpfs wrote: every name valid (see
/// `names`: no `latest`, nothing ending in `.json`, …), a record's id that of its file, each
/// record in the VM it is filed under, disk names, ids and LUNs unique within a VM and disk
/// names, ids and restore point ids unique within a point, a point's disks those of its VM, and
/// (here) collection and point ids unique in the store, as the catalog indexes them. Each
/// finding names the record and the rule.
#[derive(Default)]
pub(super) struct RecordRules {
    /// Where each collection id and point id was met first (its key).
    ids: HashMap<Uuid, String>,
}

/// `Some(finding)` when `name` breaks the naming rules for a `what`.
fn name_rule(record: &str, what: &'static str, name: &str) -> Option<String> {
    names::validate(what, name)
        .err()
        .map(|e| format!("{record}: {e}; rpfs never gives a {what} such a name"))
}

/// Findings for values of `items` (by `key`) met more than once; `what` names the value.
fn duplicates<T, K: std::hash::Hash + Eq + std::fmt::Display>(
    record: &str,
    what: &str,
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<String> {
    let mut seen: HashMap<K, usize> = HashMap::new();
    for item in items {
        *seen.entry(key(&item)).or_default() += 1;
    }
    let mut out: Vec<String> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, n)| format!("{record}: {what} {k} is used {n} times; it must be unique"))
        .collect();
    out.sort();
    out
}

/// The rules of a VM record (`vms/<vm_id>/vm.json`).
pub(super) fn vm_rules(vm_id: Uuid, vm: &VmRecord) -> Vec<String> {
    let record = format!("VM '{}' ({})", vm.name, layout::vm_record(vm_id));
    let mut out = Vec::new();
    if vm.id != vm_id {
        out.push(format!(
            "{record}: the record holds id {}, its file says {vm_id}",
            vm.id
        ));
    }
    out.extend(name_rule(&record, "VM", &vm.name));
    if vm.disks.is_empty() {
        out.push(format!("{record}: a VM has at least one disk"));
    }
    out.extend(
        vm.disks
            .iter()
            .filter_map(|d| name_rule(&record, "disk", &d.name)),
    );
    out.extend(duplicates(&record, "disk name", &vm.disks, |d| {
        format!("'{}'", d.name)
    }));
    out.extend(duplicates(&record, "disk id", &vm.disks, |d| d.id));
    out.extend(duplicates(&record, "LUN", &vm.disks, |d| {
        d.lun
            .map_or_else(|| "of the OS disk".to_string(), |l| l.to_string())
    }));
    out
}

/// Disk names, ids and LUNs within one point, and its disks against its VM's.
pub(super) fn point_disk_rules(
    record: &str,
    p: &PointRecord,
    vm: Option<&VmRecord>,
) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(
        p.disks
            .iter()
            .map(|d| d.name.as_str())
            .chain(p.excluded.iter().map(|d| d.name.as_str()))
            .filter_map(|n| name_rule(record, "disk", n)),
    );
    out.extend(duplicates(record, "disk name", &p.disks, |d| {
        format!("'{}'", d.name)
    }));
    // Included and excluded together: a disk is one or the other.
    let ids = p
        .disks
        .iter()
        .map(|d| d.disk_id)
        .chain(p.excluded.iter().map(|d| d.disk_id));
    out.extend(duplicates(record, "disk id", ids, |id| *id));
    out.extend(duplicates(record, "disk restore point id", &p.disks, |d| {
        d.drp_id
    }));
    if let Some(vm) = vm {
        for d in &p.disks {
            if !vm.disks.iter().any(|v| v.id == d.disk_id) {
                out.push(format!(
                    "{record}: disk '{}' ({}) is not a disk of VM '{}'",
                    d.name, d.disk_id, vm.name
                ));
            }
        }
    }
    out
}

/// Each disk restore point id (which names a map and a pack) belongs to one point of the VM:
/// two points sharing one would share their files, and deleting one would take the other's.
pub(super) fn disk_point_ids_unique(vm_label: &str, points: &[PointRecord]) -> Vec<String> {
    let mut owners: HashMap<Uuid, Vec<&str>> = HashMap::new();
    for p in points {
        let mut own: Vec<Uuid> = p.disks.iter().map(|d| d.drp_id).collect();
        own.sort();
        own.dedup(); // Within one point: point_disk_rules says so.
        for drp in own {
            owners.entry(drp).or_default().push(&p.name);
        }
    }
    let mut out: Vec<String> = owners
        .into_iter()
        .filter(|(_, ps)| ps.len() > 1)
        .map(|(drp, ps)| {
            format!(
                "VM '{vm_label}': disk restore point id {drp} is used by restore points {}; it \
                 must belong to one",
                ps.join(", ")
            )
        })
        .collect();
    out.sort();
    out
}

impl RecordRules {
    /// Notes that `key` holds the record of id `id`; a finding if another key did first.
    fn unique_id(&mut self, what: &str, id: Uuid, key: String) -> Option<String> {
        match self.ids.get(&id) {
            Some(first) => Some(format!(
                "{key}: {what} id {id} is already the id of {first}; ids are unique in a store"
            )),
            None => {
                self.ids.insert(id, key);
                None
            }
        }
    }

    /// The rules of collection record `vms/<vm_id>/collections/<file_id>.json`.
    pub(super) fn collection(
        &mut self,
        vm_id: Uuid,
        file_id: Uuid,
        c: &CollectionRecord,
    ) -> Vec<String> {
        let key = layout::collection(vm_id, file_id);
        let record = format!("collection '{}' ({key})", c.name);
        let mut out = Vec::new();
        if c.id != file_id {
            out.push(format!(
                "{record}: the record holds id {}, its file says {file_id}",
                c.id
            ));
        }
        if c.vm_id != vm_id {
            out.push(format!(
                "{record}: it names VM {}, but is filed under VM {vm_id}",
                c.vm_id
            ));
        }
        out.extend(name_rule(&record, "collection", &c.name));
        out.extend(self.unique_id("collection", c.id, key));
        out
    }

    /// The rules of point record `vms/<vm_id>/points/<file_id>.json` on its own (the rules
    /// that need its collection and VM are [`point_disk_rules`]).
    pub(super) fn point(&mut self, vm_id: Uuid, file_id: Uuid, p: &PointRecord) -> Vec<String> {
        let key = layout::point(vm_id, file_id);
        let record = format!("restore point '{}' ({key})", p.name);
        let mut out = Vec::new();
        if p.id != file_id {
            out.push(format!(
                "{record}: the record holds id {}, its file says {file_id}",
                p.id
            ));
        }
        if p.vm_id != vm_id {
            out.push(format!(
                "{record}: it names VM {}, but is filed under VM {vm_id}",
                p.vm_id
            ));
        }
        out.extend(name_rule(&record, "restore point", &p.name));
        out.extend(name_rule(&record, "VM", &p.vm_name));
        out.extend(self.unique_id("restore point", p.id, key));
        out
    }
}
