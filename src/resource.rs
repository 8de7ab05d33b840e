//! Azure-shaped JSON resources for collections and restore points (`--json`, the mount's
//! `collection.json` / `restore-point.json`, and the `restore-point.json` a restore writes).
//! Presentation only: it reads catalog records and never the store.
//!
//! Resource ids follow Azure's paths under a subscription named by the store id, so ids are
//! stable and unique per store. rpfs-specific facts (sizes, bytes stored) sit under an `rpfs`
//! key, leaving the Azure part as Azure shapes it.

use serde_json::{Value, json};

use crate::engine::Catalog;
use crate::store::records::{CollectionRecord, PointRecord, VmRecord};

/// File name of a point's resource document (in the mount and beside a restore).
pub const POINT_DOCUMENT: &str = "restore-point.json";

/// `value` as the bytes of a document: pretty JSON and a final newline.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    // Serialising a JSON value into memory cannot fail.
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

fn base(store_id: uuid::Uuid) -> String {
    format!("/subscriptions/{store_id}/resourceGroups/rpfs/providers/Microsoft.Compute")
}

fn vm_resource_id(store_id: uuid::Uuid, vm: &str) -> String {
    format!("{}/virtualMachines/{vm}", base(store_id))
}

fn disk_resource_id(store_id: uuid::Uuid, vm: &str, disk: &str) -> String {
    format!("{}/disks/{vm}_{disk}", base(store_id))
}

fn collection_id(store_id: uuid::Uuid, c: &str) -> String {
    format!("{}/restorePointCollections/{c}", base(store_id))
}

/// The restore point resource.
pub fn point(
    store_id: uuid::Uuid,
    coll: &CollectionRecord,
    vm: Option<&VmRecord>,
    p: &PointRecord,
) -> Value {
    let id = format!(
        "{}/restorePoints/{}",
        collection_id(store_id, &coll.name),
        p.name
    );
    let vm_name = vm.map_or(p.vm_name.as_str(), |v| v.name.as_str());
    let drp_id = |name: &str, drp: uuid::Uuid| format!("{id}/diskRestorePoints/{name}_{drp}");
    let disk_json = |d: &crate::store::records::DiskPointRecord| {
        let mut v = json!({
            "name": d.name,
            "managedDisk": { "id": disk_resource_id(store_id, vm_name, &d.name) },
            "diskRestorePoint": { "id": drp_id(&d.name, d.drp_id) },
        });
        if let Some(lun) = d.lun {
            v["lun"] = json!(lun);
        }
        v
    };
    let os_disk = p.disks.iter().find(|d| d.lun.is_none()).map(disk_json);
    let data_disks: Vec<Value> = p
        .disks
        .iter()
        .filter(|d| d.lun.is_some())
        .map(disk_json)
        .collect();
    let mut storage_profile = json!({ "dataDisks": data_disks });
    if let Some(os) = os_disk {
        storage_profile["osDisk"] = os;
    }
    json!({
        "name": p.name,
        "id": id,
        "type": "Microsoft.Compute/restorePointCollections/restorePoints",
        "properties": {
            "excludeDisks": p.excluded.iter().map(|e| json!({
                "id": disk_resource_id(store_id, vm_name, &e.name)
            })).collect::<Vec<_>>(),
            "sourceMetadata": {
                "vmId": p.vm_id,
                "hardwareProfile": {},
                "location": coll.location,
                "storageProfile": storage_profile,
            },
            "provisioningState": "Succeeded",
            "consistencyMode": p.consistency_mode.as_str(),
            "timeCreated": p.created,
            "instanceView": {
                "diskRestorePoints": p.disks.iter().map(|d| json!({
                    "id": drp_id(&d.name, d.drp_id),
                    "replicationStatus": { "completionPercent": 100 },
                })).collect::<Vec<_>>(),
            },
        },
        "rpfs": {
            "pointId": p.id,
            "collection": coll.name,
            "vmName": vm_name,
            "blockSize": p.block_size,
            "configBytes": p.config_len,
            "disks": p.disks.iter().map(|d| json!({
                "name": d.name,
                "sizeBytes": d.size,
                "newBlocks": d.new_blocks,
                "storedBytes": d.stored_bytes,
                "foundPages": d.found_pages,
                "source": d.source,
            })).collect::<Vec<_>>(),
        },
    })
}

/// The collection resource, with its points in creation order.
pub fn collection(store_id: uuid::Uuid, cat: &Catalog, c: &CollectionRecord) -> Value {
    let vm = cat.vm_by_id(c.vm_id);
    let vm_name = vm.map_or("", |v| v.name.as_str());
    json!({
        "name": c.name,
        "id": collection_id(store_id, &c.name),
        "type": "Microsoft.Compute/restorePointCollections",
        "location": c.location,
        "properties": {
            "source": { "id": vm_resource_id(store_id, vm_name), "location": c.location },
            "restorePointCollectionId": c.id,
            "provisioningState": "Succeeded",
            "restorePoints": cat.points_in(c.id).map(|p| point(store_id, c, vm, p)).collect::<Vec<_>>(),
        },
        "rpfs": {
            "vmName": vm_name,
            "defaults": {
                "excludeDisks": c.defaults.exclude_disks,
                "consistencyMode": c.defaults.consistency.map(|m| m.as_str()),
            },
            "lastOperation": c.last_operation.as_ref().map(|o| json!({
                "operation": o.operation,
                "restorePoint": o.point,
                "finished": o.finished,
                "status": o.status,
                "error": o.error,
            })),
            "schedule": c.schedule,
        },
    })
}
