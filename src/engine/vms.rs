//! Source VMs and restore point collections: adding, renaming, removing.
//!
//! Invariants: VM and collection names are unique across the store, checked and written under
//! the store lock; a VM's disks are fixed when it is added (the first is the OS disk, the others
//! data disks with LUNs 0, 1, … in order); sources are inspected at add time so a wrong file is
//! refused before anything is stored; paths are stored absolute, with what each was (a symbolic
//! link or not, a regular file or a block device), which capture holds them to (`source.rs`).

use std::path::PathBuf;

use super::Engine;
use super::catalog;
use super::clock::now_rfc3339;
use super::delete::delete_locked;
use super::error::SourceProblem;
use super::error::{Error, Result};
use super::names;
use super::policy::refuse_uniform_scale_set;
use super::source::{Expect, Source, open_config};
use crate::store::records::{
    CollectionRecord, ConfigSource, ConsistencyMode, DiskSpec, DiskType, LastOperation,
    Orchestration, PointDefaults, VmRecord,
};
use crate::store::{kind, layout, write_record};

/// Default time a pre/post script or configuration command may run.
pub const DEFAULT_SCRIPT_TIMEOUT_SECS: u64 = 60;
/// Location recorded for a collection when none is given.
pub const DEFAULT_LOCATION: &str = "local";

/// A VM to add.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    pub name: String,
    /// (disk name, source path); the first is the OS disk.
    pub disks: Vec<(String, PathBuf)>,
    /// Disk types other than `managed`, by disk name.
    pub disk_types: Vec<(String, DiskType)>,
    pub orchestration: Orchestration,
    pub config: ConfigSource,
    pub pre_script: Option<String>,
    pub post_script: Option<String>,
    /// `None` for [`DEFAULT_SCRIPT_TIMEOUT_SECS`].
    pub script_timeout_secs: Option<u64>,
}

/// What deleting a collection did.
#[derive(Debug, Clone)]
pub struct CollectionDeleted {
    pub collection: CollectionRecord,
    pub points_deleted: usize,
    pub freed_bytes: u64,
    /// Things the user should know that did not stop the deletion.
    pub warnings: Vec<String>,
}

fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io(format!("resolving {}", path.display())))
}

impl Engine {
    /// Adds a source VM after checking every disk.
    pub fn add_vm(&self, spec: &VmSpec) -> Result<VmRecord> {
        names::validate("VM", &spec.name)?;
        if spec.disks.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "VM '{}' needs at least one --disk NAME=PATH (the first is the OS disk)",
                spec.name
            )));
        }
        let mut disks: Vec<DiskSpec> = Vec::new();
        for (i, (name, path)) in spec.disks.iter().enumerate() {
            names::validate("disk", name)?;
            if disks.iter().any(|d| &d.name == name) {
                return Err(Error::InvalidArgument(format!(
                    "disk name '{name}' is given twice for VM '{}'",
                    spec.name
                )));
            }
            let path = absolute(path)?;
            let added_as = Source::open(name, &path, Expect::Adding, &spec.name)?.added_as;
            disks.push(DiskSpec {
                id: uuid::Uuid::new_v4(),
                name: name.clone(),
                path,
                disk_type: DiskType::Managed,
                lun: if i == 0 { None } else { Some(i as u32 - 1) },
                added_as: Some(added_as),
            });
        }
        for (name, ty) in &spec.disk_types {
            let d = disks.iter_mut().find(|d| &d.name == name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--disk-type names disk '{name}', which is not a --disk of VM '{}'",
                    spec.name
                ))
            })?;
            d.disk_type = *ty;
        }
        let timeout = spec
            .script_timeout_secs
            .unwrap_or(DEFAULT_SCRIPT_TIMEOUT_SECS);
        if timeout == 0 {
            return Err(Error::InvalidArgument(
                "--script-timeout must be at least 1 second".into(),
            ));
        }
        let (config, config_added_as) = match &spec.config {
            ConfigSource::File(p) => {
                let p = absolute(p)?;
                let opened = open_config(&p, Expect::Adding, &spec.name).map_err(|e| match e {
                    Error::ConfigFile {
                        problem: SourceProblem::Missing,
                        ..
                    } => Error::NotFound {
                        what: "configuration file",
                        name: p.display().to_string(),
                        hint: format!(" (--config-file of VM '{}')", spec.name),
                    },
                    e => e,
                })?;
                (ConfigSource::File(p), Some(opened.added_as))
            }
            other => (other.clone(), None),
        };
        let vm = VmRecord {
            id: uuid::Uuid::new_v4(),
            name: spec.name.clone(),
            created: now_rfc3339(),
            orchestration: spec.orchestration,
            disks,
            config,
            config_added_as,
            pre_script: spec.pre_script.clone(),
            post_script: spec.post_script.clone(),
            script_timeout_secs: timeout,
            min_interval_secs: None,
        };
        let _store = self.store_lock()?;
        if self.catalog()?.vm(&vm.name).is_ok() {
            return Err(Error::Exists {
                what: "VM",
                name: vm.name,
            });
        }
        let key = layout::vm_record(vm.id);
        write_record(&*self.shared.storage, &key, kind::VM, &vm)
            .map_err(Error::io(format!("writing {key}")))?;
        Ok(vm)
    }

    /// Renames a VM; its collections and points follow it by id.
    pub fn rename_vm(&self, old: &str, new: &str) -> Result<VmRecord> {
        names::validate("VM", new)?;
        let _store = self.store_lock()?;
        let cat = self.catalog()?;
        let mut vm = cat.vm(old)?.clone();
        if cat.vm(new).is_ok() {
            return Err(Error::Exists {
                what: "VM",
                name: new.to_string(),
            });
        }
        vm.name = new.to_string();
        let key = layout::vm_record(vm.id);
        write_record(&*self.shared.storage, &key, kind::VM, &vm)
            .map_err(Error::io(format!("writing {key}")))?;
        Ok(vm)
    }

    /// Sets (or, with None, clears) the shortest time allowed between two creations for a VM.
    pub fn set_vm_min_interval(&self, name: &str, secs: Option<u64>) -> Result<VmRecord> {
        if secs == Some(0) {
            return Err(Error::InvalidArgument(
                "a minimum interval must be longer than zero (use `off` to clear it)".into(),
            ));
        }
        let _store = self.store_lock()?;
        let cat = self.catalog()?;
        let mut vm = cat.vm(name)?.clone();
        vm.min_interval_secs = secs;
        let key = layout::vm_record(vm.id);
        write_record(&*self.shared.storage, &key, kind::VM, &vm)
            .map_err(Error::io(format!("writing {key}")))?;
        Ok(vm)
    }

    /// Removes a VM that has no restore points, with its (empty) collections.
    pub fn remove_vm(&self, name: &str) -> Result<VmRecord> {
        let _store = self.store_lock()?;
        let cat = self.catalog()?;
        let vm = cat.vm(name)?.clone();
        let _vm_lock = self.vm_lock(&vm)?;
        let points = catalog::load_points(&*self.shared.storage, vm.id)?;
        if !points.is_empty() {
            let mut colls: Vec<&str> = points
                .iter()
                .filter_map(|p| {
                    cat.collection_by_id(p.collection_id)
                        .map(|c| c.name.as_str())
                })
                .collect();
            colls.dedup();
            return Err(Error::NotEmpty(format!(
                "VM '{name}' still has {} restore points (in collections {}); delete them first",
                points.len(),
                colls.join(", ")
            )));
        }
        let storage = &*self.shared.storage;
        let key = layout::vm_record(vm.id);
        // Removing the record is the commit; recovery removes the rest if this is interrupted.
        storage
            .remove(&key)
            .map_err(Error::io(format!("removing {key}")))?;
        let dir = layout::vm_dir(vm.id);
        storage
            .remove_tree(&dir)
            .map_err(Error::io(format!("removing {dir}")))?;
        Ok(vm)
    }

    /// Creates a restore point collection for `vm`.
    pub fn create_collection(
        &self,
        name: &str,
        vm: &str,
        location: Option<&str>,
    ) -> Result<CollectionRecord> {
        names::validate("collection", name)?;
        let _store = self.store_lock()?;
        let cat = self.catalog()?;
        let vm = cat.vm(vm)?;
        refuse_uniform_scale_set(vm)?;
        if cat.collection(name).is_ok() {
            return Err(Error::Exists {
                what: "collection",
                name: name.to_string(),
            });
        }
        let c = CollectionRecord {
            id: uuid::Uuid::new_v4(),
            name: name.to_string(),
            vm_id: vm.id,
            location: location.unwrap_or(DEFAULT_LOCATION).to_string(),
            created: now_rfc3339(),
            defaults: PointDefaults::default(),
            last_operation: None,
            schedule: None,
        };
        let key = layout::collection(vm.id, c.id);
        write_record(&*self.shared.storage, &key, kind::COLLECTION, &c)
            .map_err(Error::io(format!("writing {key}")))?;
        Ok(c)
    }

    /// Changes a collection's defaults for new points. Excluded disks must be disks of its VM.
    pub fn set_collection_defaults(
        &self,
        name: &str,
        exclude_disks: Option<Vec<String>>,
        consistency: Option<Option<ConsistencyMode>>,
    ) -> Result<CollectionRecord> {
        self.update_collection(name, |c, vm| {
            if let Some(disks) = exclude_disks {
                if let Some(d) = disks
                    .iter()
                    .find(|d| !vm.disks.iter().any(|x| &x.name == *d))
                {
                    return Err(Error::NotFound {
                        what: "disk",
                        name: d.clone(),
                        hint: format!("; VM '{}' of collection '{name}' has no such disk", vm.name),
                    });
                }
                c.defaults.exclude_disks = disks;
            }
            if let Some(mode) = consistency {
                c.defaults.consistency = mode;
            }
            Ok(())
        })
    }

    /// Records the outcome of a creation or deletion in the collection (best effort for the
    /// caller: the operation itself is already decided).
    pub fn record_operation(
        &self,
        collection: &str,
        op: LastOperation,
    ) -> Result<CollectionRecord> {
        self.update_collection(collection, |c, _| {
            c.last_operation = Some(op);
            Ok(())
        })
    }

    /// Re-reads a collection under the store lock, changes it, and publishes it.
    pub(crate) fn update_collection(
        &self,
        name: &str,
        change: impl FnOnce(&mut CollectionRecord, &VmRecord) -> Result<()>,
    ) -> Result<CollectionRecord> {
        let _store = self.store_lock()?;
        let cat = self.catalog()?;
        let mut c = cat.collection(name)?.clone();
        let vm = cat.vm_by_id(c.vm_id).ok_or_else(|| Error::NotFound {
            what: "VM of collection",
            name: name.to_string(),
            hint: String::new(),
        })?;
        change(&mut c, vm)?;
        let key = layout::collection(c.vm_id, c.id);
        write_record(&*self.shared.storage, &key, kind::COLLECTION, &c)
            .map_err(Error::io(format!("writing {key}")))?;
        Ok(c)
    }

    /// Deletes a collection: refused while it holds points, unless `force`, which deletes them
    /// (newest first) before the collection. Works on a full store (`super::reserve`).
    pub fn delete_collection(&self, name: &str, force: bool) -> Result<CollectionDeleted> {
        super::reserve::with_reserve(&self.shared, || self.delete_collection_once(name, force))
    }

    fn delete_collection_once(&self, name: &str, force: bool) -> Result<CollectionDeleted> {
        let cat = self.catalog()?;
        let c = cat.collection(name)?.clone();
        let vm = cat.vm_by_id(c.vm_id).ok_or_else(|| Error::NotFound {
            what: "VM of collection",
            name: name.to_string(),
            hint: String::new(),
        })?;
        let _vm_lock = self.vm_lock(vm)?;
        let storage = &*self.shared.storage;
        let points: Vec<_> = catalog::load_points(storage, vm.id)?
            .into_iter()
            .filter(|p| p.collection_id == c.id)
            .collect();
        if !points.is_empty() && !force {
            return Err(Error::NotEmpty(format!(
                "collection '{name}' still holds {} restore points; delete them first, or use \
                 --force to delete them with the collection",
                points.len()
            )));
        }
        let mut freed_bytes = 0;
        let mut warnings = Vec::new();
        for p in points.iter().rev() {
            let (freed, w) = delete_locked(&self.shared, p, name)?;
            freed_bytes += freed;
            warnings.extend(w);
        }
        let _store = self.store_lock()?;
        let key = layout::collection(vm.id, c.id);
        storage
            .remove(&key)
            .map_err(Error::io(format!("removing {key}")))?;
        Ok(CollectionDeleted {
            collection: c,
            points_deleted: points.len(),
            freed_bytes,
            warnings,
        })
    }
}
