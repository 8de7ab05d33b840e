//! Where everything lives in the store. The only place that builds storage keys.
//!
//! ```text
//! rpfs.store                                store header
//! locks/store.lock, locks/vm-<vm>.lock      advisory locks (never removed while in use)
//! vms/<vm>/vm.json                          source VM
//! vms/<vm>/pending.json                     operation in flight (recovery input)
//! vms/<vm>/collections/<collection>.json    restore point collections of the VM
//! vms/<vm>/points/<point>.json              VM restore points (the commit record)
//! vms/<vm>/points/<point>.config            configuration captured at the point
//! vms/<vm>/disks/<disk>/<drp>.map           block map of one disk restore point
//! vms/<vm>/disks/<disk>/<drp>.pack          blocks that disk restore point stored
//! ```
//!
//! Invariant: every key is built from UUIDs and fixed words, never from user-chosen names, so no
//! name can alias or escape a path. Everything of one VM lives under `vms/<vm>/`, guarded by that
//! VM's lock.

use uuid::Uuid;

pub const STORE_HEADER: &str = "rpfs.store";
pub const VMS: &str = "vms";
pub const STORE_LOCK: &str = "store";

pub fn vm_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}")
}
pub fn vm_record(vm: Uuid) -> String {
    format!("{VMS}/{vm}/vm.json")
}
pub fn pending(vm: Uuid) -> String {
    format!("{VMS}/{vm}/pending.json")
}
pub fn collections_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}/collections")
}
pub fn collection(vm: Uuid, id: Uuid) -> String {
    format!("{VMS}/{vm}/collections/{id}.json")
}
pub fn points_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}/points")
}
pub fn point(vm: Uuid, id: Uuid) -> String {
    format!("{VMS}/{vm}/points/{id}.json")
}
pub fn point_config(vm: Uuid, id: Uuid) -> String {
    format!("{VMS}/{vm}/points/{id}.config")
}
pub fn disks_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}/disks")
}
pub fn disk_dir(vm: Uuid, disk: Uuid) -> String {
    format!("{VMS}/{vm}/disks/{disk}")
}
pub fn map(vm: Uuid, disk: Uuid, drp: Uuid) -> String {
    format!("{VMS}/{vm}/disks/{disk}/{drp}.map")
}
pub fn pack(vm: Uuid, disk: Uuid, pack: Uuid) -> String {
    format!("{VMS}/{vm}/disks/{disk}/{pack}.pack")
}
pub fn vm_lock(vm: Uuid) -> String {
    format!("vm-{vm}")
}

/// Parses `<uuid><suffix>` file names; anything else is not one of ours.
pub fn parse_name(name: &str, suffix: &str) -> Option<Uuid> {
    Uuid::parse_str(name.strip_suffix(suffix)?).ok()
}
