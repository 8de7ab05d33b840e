//! The limits a restore point creation must respect, each a pure decision on facts the caller
//! read under the VM's lock: at most [`MAX_POINTS_PER_VM`] points per VM across its collections,
//! no VM of a uniform scale set, only supported disk types, the VM's minimum interval between
//! creations, and room in the store.
//!
//! Invariants: every check here only decides; none reads or writes anything, so a refusal
//! changes nothing. Each refusal is the engine error its kind calls for, naming the VM (and the
//! disk) and what to do next.

use std::time::{Duration, SystemTime};

use super::error::{Error, Result};
use super::source::{SourceInfo, SourceKind};
use crate::store::records::{DiskSpec, Orchestration, PointRecord, VmRecord};

/// Most restore points one VM may have across all its collections.
pub const MAX_POINTS_PER_VM: usize = 500;
/// Free space a creation leaves untouched beyond its own estimate: room for records and maps,
/// and for the rest of the system.
pub const CREATE_MARGIN: u64 = 16 << 20;

/// VMs in a uniform scale set cannot have restore points.
pub fn refuse_uniform_scale_set(vm: &VmRecord) -> Result<()> {
    if vm.orchestration == Orchestration::VmssUniform {
        return Err(Error::Unsupported(format!(
            "VM '{}' is in a uniform virtual machine scale set, which restore points do not support",
            vm.name
        )));
    }
    Ok(())
}

/// Refuses a creation for a VM that already holds `held` points.
pub fn refuse_over_limit(vm: &VmRecord, held: usize) -> Result<()> {
    if held >= MAX_POINTS_PER_VM {
        return Err(Error::LimitReached {
            vm: vm.name.clone(),
            count: held,
            limit: MAX_POINTS_PER_VM,
        });
    }
    Ok(())
}

/// Refuses a point that would include an ultra, ephemeral or shared disk.
pub fn refuse_unsupported_disks(vm: &VmRecord, included: &[DiskSpec]) -> Result<()> {
    if let Some(d) = included.iter().find(|d| !d.disk_type.is_supported()) {
        return Err(Error::Unsupported(format!(
            "disk '{}' of VM '{}' is a {:?} disk, which restore points do not support; \
             exclude it with --exclude-disk {} and retry",
            d.name, vm.name, d.disk_type, d.name
        )));
    }
    Ok(())
}

/// Refuses a creation within `min` of the VM's newest point, at time `now`.
pub fn refuse_too_soon(
    vm: &VmRecord,
    points: &[PointRecord],
    min: Duration,
    now: SystemTime,
) -> Result<()> {
    let newest = points
        .iter()
        .filter_map(|p| humantime::parse_rfc3339_weak(&p.created).ok())
        .max();
    let Some(newest) = newest else {
        return Ok(());
    };
    // A clock set back counts as no time passed.
    let age = now.duration_since(newest).unwrap_or_default();
    if age >= min {
        return Ok(());
    }
    let round = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs().max(1)));
    Err(Error::Throttled {
        vm: vm.name.clone(),
        min_interval: round(min).to_string(),
        age: round(age).to_string(),
        wait: round(min - age).to_string(),
    })
}

/// Refuses, before any work, a creation the store's medium (with `free` bytes) clearly lacks
/// room for: a full copy of an image file may need as many bytes as the file has allocated
/// (when nothing compresses), an incremental point little, a block device an unknown amount;
/// plus [`CREATE_MARGIN`]. `previous` says, per included disk, whether it has an earlier point.
/// Running out of space later anyway fails the creation and rolls it back.
pub fn refuse_without_space(
    free: u64,
    name: &str,
    included: &[DiskSpec],
    infos: &[SourceInfo],
    has_previous: &[bool],
) -> Result<()> {
    let mut need = CREATE_MARGIN;
    for (info, prev) in infos.iter().zip(has_previous) {
        if !prev {
            need += match info.kind {
                // How much of a device holds data is unknown: only the margin is asked.
                SourceKind::BlockDevice => 0,
                SourceKind::File => info.allocated,
            };
        }
    }
    if free >= need {
        return Ok(());
    }
    let full: Vec<String> = included
        .iter()
        .zip(has_previous)
        .filter(|(_, p)| !**p)
        .map(|(d, _)| format!("'{}'", d.name))
        .collect();
    let why = if full.is_empty() {
        String::new()
    } else {
        format!("a full copy of disk {} and ", full.join(", "))
    };
    Err(Error::NoSpace(format!(
        "not enough space in the store for restore point '{}': it has {} MiB free and needs up \
         to {} MiB ({why}a {} MiB margin); free some space or delete old restore points",
        name,
        free >> 20,
        need.div_ceil(1 << 20),
        CREATE_MARGIN >> 20
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::error::ErrorKind;
    use crate::store::records::{ConfigSource, DiskType};

    fn vm() -> VmRecord {
        VmRecord {
            id: uuid::Uuid::new_v4(),
            name: "vm1".into(),
            created: String::new(),
            orchestration: Orchestration::Standalone,
            disks: vec![DiskSpec {
                id: uuid::Uuid::new_v4(),
                name: "os".into(),
                path: "/dev/null".into(),
                disk_type: DiskType::Managed,
                lun: None,
                added_as: None,
            }],
            config: ConfigSource::None,
            config_added_as: None,
            pre_script: None,
            post_script: None,
            script_timeout_secs: 60,
            min_interval_secs: None,
        }
    }

    #[test]
    fn the_limit_is_500_points() {
        let vm = vm();
        refuse_over_limit(&vm, 499).expect("499 held: one more fits");
        let e = refuse_over_limit(&vm, 500).expect_err("500 held");
        assert_eq!(e.kind(), ErrorKind::Limit);
    }

    #[test]
    fn space_asks_for_full_copies_only() {
        let vm = vm();
        let info = SourceInfo {
            kind: SourceKind::File,
            size: 1 << 30,
            allocated: 100 << 20,
        };
        let (margin, infos) = (CREATE_MARGIN, [info]);
        refuse_without_space(margin, "p", &vm.disks, &infos, &[true])
            .expect("an incremental point needs the margin only");
        let e = refuse_without_space(margin, "p", &vm.disks, &infos, &[false])
            .expect_err("a full copy needs the allocated bytes");
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(e.to_string().contains("a full copy of disk 'os'"), "{e}");
        refuse_without_space(margin + (100 << 20), "p", &vm.disks, &infos, &[false])
            .expect("room for it");
    }

    #[test]
    fn a_clock_set_back_counts_as_no_time() {
        let mut vm = vm();
        vm.min_interval_secs = Some(60);
        let p = |created: &str| PointRecord {
            id: uuid::Uuid::new_v4(),
            name: "p".into(),
            collection_id: uuid::Uuid::new_v4(),
            vm_id: vm.id,
            seq: 1,
            created: created.into(),
            vm_name: vm.name.clone(),
            consistency_mode: crate::store::records::ConsistencyMode::CrashConsistent,
            disks: Vec::new(),
            excluded: Vec::new(),
            config_len: 0,
            block_size: 4096,
        };
        let t = |s: &str| humantime::parse_rfc3339(s).expect("time");
        let points = [p("2026-01-01T00:00:00Z")];
        let min = Duration::from_secs(60);
        refuse_too_soon(&vm, &points, min, t("2026-01-01T00:01:00Z")).expect("60 s passed");
        let e = refuse_too_soon(&vm, &points, min, t("2026-01-01T00:00:45Z")).expect_err("45 s");
        assert_eq!(e.kind(), ErrorKind::Throttled);
        assert!(e.to_string().contains("retry in 15s"), "{e}");
        let e = refuse_too_soon(&vm, &points, min, t("2025-12-31T00:00:00Z")).expect_err("back");
        assert!(e.to_string().contains("retry in 1m"), "{e}");
    }
}
