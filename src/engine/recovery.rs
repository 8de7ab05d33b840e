//! Recovery at open: finishing what a crash interrupted.
//!
//! - A VM with `pending.json` had a creation or deletion interrupted. If its lock is free (the
//!   operation's process is gone), the marker is finished (`pending.rs`): the VM is thawed if it
//!   may be frozen, everything no committed point references is collected (the files of an
//!   uncommitted creation, or what a committed deletion left), reflink clones are removed, then
//!   the marker goes. If the lock is held, the operation is still running and is left alone.
//! - A VM directory without `vm.json` is the remains of an interrupted `vm add` or `vm remove`;
//!   it is removed under the store lock and the VM's lock, unless it still holds point records
//!   (then it is left for `check` to report: nothing that may be a committed point is removed).
//! - Temporary files of interrupted record updates are removed under the lock that guards the
//!   record: `vm.json` and collections under the store lock, `pending.json` under the VM lock.
//!
//! Invariants: recovery never touches a committed point; it is idempotent, so a crash during
//! recovery is recovered by the next open; in the common case (nothing to do) it costs two
//! listings per VM. A VM that cannot be recovered now (a damaged record, a read-only store, no
//! space to repack) is skipped with a warning and does not stop the store from opening.

use uuid::Uuid;

use super::catalog;
use super::error::{Error, Result};
use super::pending;
use super::shared::Shared;
use crate::store::layout::{self, Name};
use crate::store::storage::remove_if_present;

pub(crate) fn recover(shared: &Shared) -> Result<()> {
    for vm in catalog::vm_ids(&*shared.storage)? {
        match recover_vm(shared, vm) {
            Ok(warnings) => {
                for w in warnings {
                    tracing::warn!("recovery of VM {vm}: {w}");
                }
            }
            Err(e) => tracing::warn!("recovery of VM {vm} postponed: {e}"),
        }
    }
    if shared.header.version == crate::store::format::PAGED && super::paged::gc::owed(shared) {
        match super::paged::gc::sweep(shared) {
            Ok(s) => {
                for why in s.deferred {
                    tracing::warn!("sweep postponed: {why}");
                }
            }
            Err(e) => tracing::warn!("sweep postponed: {e}"),
        }
    }
    Ok(())
}

fn recover_vm(shared: &Shared, vm: Uuid) -> Result<Vec<String>> {
    let storage = &*shared.storage;
    let dir = layout::vm_dir(vm);
    let names = storage
        .list(&dir)
        .map_err(Error::io(format!("listing {dir}")))?;
    let names: Vec<Name> = names.iter().map(|n| layout::classify(n)).collect();
    let has_record = names.contains(&Name::VmRecord);
    let has_temp = names.iter().any(|n| n.is_temp_of(layout::VM_RECORD))
        || storage
            .list(&layout::collections_dir(vm))
            .map_err(Error::io(format!("listing {dir}/collections")))?
            .iter()
            .any(|n| matches!(layout::classify(n), Name::Temp { .. }));
    if !has_record || has_temp {
        let _store = shared.store_lock()?;
        let Some(_vm_lock) = shared.try_vm_lock(vm)? else {
            return Ok(Vec::new());
        };
        clean_vm_dir(shared, vm)?;
    }
    let pending = names
        .iter()
        .any(|n| *n == Name::Pending || n.is_temp_of(layout::PENDING));
    if !pending || !has_record {
        return Ok(Vec::new());
    }
    let Some(_lock) = shared.try_vm_lock(vm)? else {
        return Ok(Vec::new());
    };
    Ok(pending::finish(shared, vm)?.1.warnings)
}

/// Under the store lock and the VM's lock: removes a VM directory whose record is gone (unless
/// it holds point records), or the temporary files of interrupted record updates.
fn clean_vm_dir(shared: &Shared, vm: Uuid) -> Result<()> {
    let storage = &*shared.storage;
    let dir = layout::vm_dir(vm);
    let names = storage
        .list(&dir)
        .map_err(Error::io(format!("listing {dir}")))?;
    if !names.iter().any(|n| layout::classify(n) == Name::VmRecord) {
        let points = storage
            .list(&layout::points_dir(vm))
            .map_err(Error::io(format!("listing {dir}/points")))?;
        if points
            .iter()
            .any(|n| matches!(layout::classify(n), Name::Record(_)))
        {
            return Err(Error::Io {
                context: format!("{dir}: the VM record is missing but point records remain"),
                source: std::io::Error::other("left in place for `rpfs check` to report"),
            });
        }
        return storage
            .remove_tree(&dir)
            .map_err(Error::io(format!("removing the remains of {dir}")));
    }
    let collections = layout::collections_dir(vm);
    let collection_temps: Vec<String> = storage
        .list(&collections)
        .map_err(Error::io(format!("listing {collections}")))?
        .into_iter()
        .filter(|n| matches!(layout::classify(n), Name::Temp { .. }))
        .map(|n| format!("{collections}/{n}"))
        .collect();
    let record_temps = names
        .iter()
        .filter(|n| layout::classify(n).is_temp_of(layout::VM_RECORD))
        .map(|n| format!("{dir}/{n}"));
    for key in record_temps.chain(collection_temps) {
        remove_if_present(storage, &key).map_err(Error::io(format!("removing {key}")))?;
    }
    Ok(())
}
