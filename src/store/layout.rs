//! Where everything lives in the store, and what a name found there is. The only place that
//! builds storage keys or spells the store's file names.
//!
//! ```text
//! rpfs.store                                store header
//! reserve                                   space held back for deletions on a full store
//! locks/store.lock, locks/vm-<vm>.lock      advisory locks (never removed while in use)
//! vms/<vm>/vm.json                          source VM
//! vms/<vm>/pending.json                     operation in flight (recovery input)
//! vms/<vm>/collections/<collection>.json    restore point collections of the VM
//! vms/<vm>/points/<point>.json              VM restore points (the commit record)
//! vms/<vm>/points/<point>.config            configuration captured at the point
//! vms/<vm>/disks/<disk>/<drp>.map           block map of one disk restore point
//! vms/<vm>/disks/<disk>/<drp>.pack          blocks that disk restore point stored (format 1)
//! data/<xx>/<pack>.pack                     frames of any VM's points (format 2; xx = the id's
//!                                           first two hex digits, so listings stay small)
//! index/<segment>.idx                       where each stored page is, by id (format 2)
//! gc-owed                                   a sweep is due (format 2; its presence is the debt)
//! locks/gc.lock                             shared by creations, exclusive for a sweep
//! <any key>.<random>.tmp                    an object being written (garbage after a crash)
//! ```
//!
//! Invariant: every key is built from UUIDs and fixed words, never from user-chosen names, so no
//! name can alias or escape a path. Everything of one VM lives under `vms/<vm>/`, guarded by that
//! VM's lock.

use uuid::Uuid;

pub const STORE_HEADER: &str = "rpfs.store";
/// The file that holds space back for deletions on a full store.
pub const RESERVE: &str = "reserve";
pub const VMS: &str = "vms";
pub const STORE_LOCK: &str = "store";
/// A VM's record, in its directory.
pub const VM_RECORD: &str = "vm.json";
/// A VM's operation marker, in its directory.
pub const PENDING: &str = "pending.json";
/// Store-wide data of format-2 stores: packs shared by every VM.
pub const DATA: &str = "data";
/// Format 2's dedup index segments.
pub const INDEX: &str = "index";
/// Marks that a format-2 sweep is owed.
pub const GC_OWED: &str = "gc-owed";
/// Held shared by every format-2 creation, exclusive by a sweep.
pub const GC_LOCK: &str = "gc";
/// Suffix of in-flight temporary objects; anything ending in it is garbage after a crash.
pub const TEMP_SUFFIX: &str = ".tmp";
const RECORD: &str = ".json";
const CONFIG: &str = ".config";
const MAP: &str = ".map";
const PACK: &str = ".pack";
const SEGMENT: &str = ".idx";

pub fn vm_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}")
}
pub fn vm_record(vm: Uuid) -> String {
    format!("{VMS}/{vm}/{VM_RECORD}")
}
pub fn pending(vm: Uuid) -> String {
    format!("{VMS}/{vm}/{PENDING}")
}
pub fn collections_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}/collections")
}
pub fn collection(vm: Uuid, id: Uuid) -> String {
    format!("{VMS}/{vm}/collections/{id}{RECORD}")
}
pub fn points_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}/points")
}
pub fn point(vm: Uuid, id: Uuid) -> String {
    format!("{VMS}/{vm}/points/{id}{RECORD}")
}
pub fn point_config(vm: Uuid, id: Uuid) -> String {
    format!("{VMS}/{vm}/points/{id}{CONFIG}")
}
pub fn disks_dir(vm: Uuid) -> String {
    format!("{VMS}/{vm}/disks")
}
pub fn disk_dir(vm: Uuid, disk: Uuid) -> String {
    format!("{VMS}/{vm}/disks/{disk}")
}
pub fn map(vm: Uuid, disk: Uuid, drp: Uuid) -> String {
    format!("{VMS}/{vm}/disks/{disk}/{drp}{MAP}")
}
pub fn pack(vm: Uuid, disk: Uuid, pack: Uuid) -> String {
    format!("{VMS}/{vm}/disks/{disk}/{pack}{PACK}")
}
/// The directory of format-2 packs whose id starts like `pack`'s.
pub fn data_dir_of(pack: Uuid) -> String {
    format!("{DATA}/{:02x}", pack.as_bytes()[0])
}
/// A format-2 pack.
pub fn shared_pack(pack: Uuid) -> String {
    format!("{}/{pack}{PACK}", data_dir_of(pack))
}
/// A dedup index segment.
pub fn segment(id: Uuid) -> String {
    format!("{INDEX}/{id}{SEGMENT}")
}
pub fn vm_lock(vm: Uuid) -> String {
    format!("vm-{vm}")
}
/// The name of a new temporary for an object named `name`: `<name>.<random>.tmp`.
pub fn temp_name(name: &str) -> String {
    format!("{name}.{}{TEMP_SUFFIX}", Uuid::new_v4().simple())
}

/// What a name found in a store directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// [`VM_RECORD`].
    VmRecord,
    /// [`PENDING`].
    Pending,
    /// `<uuid>`: the directory of a VM or of a disk chain.
    Dir(Uuid),
    /// `<uuid>.json`: a collection or point record.
    Record(Uuid),
    /// `<uuid>.config`: a configuration captured at a point.
    Config(Uuid),
    /// `<uuid>.map`: a block map.
    Map(Uuid),
    /// `<uuid>.pack`: a pack.
    Pack(Uuid),
    /// `<uuid>.idx`: a dedup index segment.
    Segment(Uuid),
    /// Anything ending in [`TEMP_SUFFIX`]: a temporary (garbage after a crash); `of` names the
    /// object it was for, from `<of>.<random>.tmp` (empty when the name has no such form).
    Temp { of: String },
    /// Not one of ours.
    Unknown,
}

impl Name {
    /// True for a temporary of the object named `object`.
    pub fn is_temp_of(&self, object: &str) -> bool {
        matches!(self, Name::Temp { of } if of == object)
    }
}

/// What `name` is; see [`Name`].
pub fn classify(name: &str) -> Name {
    if let Some(rest) = name.strip_suffix(TEMP_SUFFIX) {
        // The object's name is everything before the last `.` of what precedes the suffix.
        let of = rest.rsplit_once('.').map_or("", |(of, _)| of);
        return Name::Temp { of: of.to_string() };
    }
    match name {
        VM_RECORD => return Name::VmRecord,
        PENDING => return Name::Pending,
        _ => {}
    }
    let (stem, suffix) = match name.find('.') {
        Some(i) => name.split_at(i),
        None => (name, ""),
    };
    let Ok(id) = Uuid::parse_str(stem) else {
        return Name::Unknown;
    };
    // Only the hyphenated form rpfs writes, so one object has one name.
    if stem != id.to_string() {
        return Name::Unknown;
    }
    match suffix {
        "" => Name::Dir(id),
        RECORD => Name::Record(id),
        CONFIG => Name::Config(id),
        MAP => Name::Map(id),
        PACK => Name::Pack(id),
        SEGMENT => Name::Segment(id),
        _ => Name::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_the_layout_builds_classifies_back() {
        let (vm, disk, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let last = |key: String| key.rsplit('/').next().unwrap_or_default().to_string();
        assert_eq!(classify(&last(vm_record(vm))), Name::VmRecord);
        assert_eq!(classify(&last(pending(vm))), Name::Pending);
        assert_eq!(classify(&last(vm_dir(vm))), Name::Dir(vm));
        assert_eq!(classify(&last(disk_dir(vm, disk))), Name::Dir(disk));
        assert_eq!(classify(&last(collection(vm, id))), Name::Record(id));
        assert_eq!(classify(&last(point(vm, id))), Name::Record(id));
        assert_eq!(classify(&last(point_config(vm, id))), Name::Config(id));
        assert_eq!(classify(&last(map(vm, disk, id))), Name::Map(id));
        assert_eq!(classify(&last(pack(vm, disk, id))), Name::Pack(id));
        assert_eq!(classify(&last(shared_pack(id))), Name::Pack(id));
        assert_eq!(classify(&last(segment(id))), Name::Segment(id));
        assert!(shared_pack(id).starts_with(&format!("data/{}/", &id.simple().to_string()[..2])));
        let temp = classify(&temp_name(PENDING));
        assert!(temp.is_temp_of(PENDING), "{temp:?}");
        assert!(!temp.is_temp_of(VM_RECORD));
        let pack_temp = classify(&temp_name(&last(pack(vm, disk, id))));
        assert!(pack_temp.is_temp_of(&format!("{id}.pack")), "{pack_temp:?}");
        // Whatever ends in the suffix is a temporary, even of no object rpfs names.
        assert_eq!(classify("x.tmp"), Name::Temp { of: String::new() });
        assert_eq!(classify(".tmp"), Name::Temp { of: String::new() });
    }

    #[test]
    fn anything_else_is_unknown() {
        let id = Uuid::new_v4();
        for name in [
            String::new(),
            "notes.txt".into(),
            format!("{id}.bak"),
            format!("{}.json", id.simple()),
            format!("{}.json", id.to_string().to_uppercase()),
            format!("{id}.pack.old"),
        ] {
            assert_eq!(classify(&name), Name::Unknown, "{name:?}");
        }
    }
}
