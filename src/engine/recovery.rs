//! Recovery at open: finishing or rolling back what a crash interrupted.
//!
//! - A VM directory without `vm.json` is the remains of an interrupted `vm add` or `vm remove`;
//!   it is removed under the store lock.
//! - A VM with `pending.json` had a creation or deletion interrupted. If its lock is free (the
//!   operation's process is gone), garbage collection removes everything no committed point
//!   references — the files of an uncommitted creation, or what a committed deletion left — along
//!   with any reflink clones named in the marker; then the marker goes. If the lock is held, the
//!   operation is still running and is left alone.
//! - Temporary files of interrupted record updates are removed under the store lock.
//!
//! Invariants: recovery never touches a committed point; it is idempotent, so a crash during
//! recovery is recovered by the next open; in the common case (nothing to do) it costs one
//! listing per VM. A VM whose records cannot all be read is not collected (its marker stays, and
//! `check` reports it), and does not stop the store from opening.

use super::error::{Error, Result};
use super::{Shared, catalog, delete, try_vm_lock};
use crate::store::records::PendingOp;
use crate::store::storage::{Storage, TEMP_SUFFIX};
use crate::store::{kind, layout, read_record};

pub(crate) fn recover(shared: &Shared) -> Result<()> {
    let storage = &*shared.storage;
    for vm in catalog::vm_ids(storage)? {
        let dir = layout::vm_dir(vm);
        let names = storage
            .list(&dir)
            .map_err(Error::io(format!("listing {dir}")))?;
        let has_record = names.iter().any(|n| n == "vm.json");
        let has_temp = names.iter().any(|n| is_temp_of(n, "vm.json"))
            || storage
                .list(&layout::collections_dir(vm))
                .map_err(Error::io(format!("listing {dir}/collections")))?
                .iter()
                .any(|n| n.ends_with(TEMP_SUFFIX));
        if !has_record || has_temp {
            let _store = storage
                .lock(layout::STORE_LOCK)
                .map_err(Error::io("taking the store lock"))?;
            clean_vm_dir(shared, vm)?;
        }
        if names
            .iter()
            .any(|n| n == "pending.json" || is_temp_of(n, "pending.json"))
        {
            let Some(_lock) = try_vm_lock(shared, vm)? else {
                continue;
            };
            let key = layout::pending(vm);
            // An unreadable marker still means "collect garbage"; only the clone list is lost.
            let pending: Option<PendingOp> = read_record(storage, &key, kind::PENDING).ok();
            if let Err(e) = delete::collect_garbage(shared, vm) {
                // Most likely a damaged record of this VM: collecting now could delete what it
                // references. Leave the marker (so `check` reports it) and let the store open.
                tracing::warn!("recovery of VM {vm} postponed: {e}");
                continue;
            }
            for clone in pending.iter().flat_map(|p| &p.clones) {
                if clone
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(".rpfs-clone-"))
                {
                    let _ = std::fs::remove_file(clone);
                }
            }
            for n in names.iter().filter(|n| is_temp_of(n, "pending.json")) {
                remove_if_present(storage, &format!("{dir}/{n}"))?;
            }
            remove_if_present(storage, &key)?;
        }
    }
    Ok(())
}

/// True for the temporary file of an interrupted update of `record`.
fn is_temp_of(name: &str, record: &str) -> bool {
    name.strip_prefix(record)
        .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(TEMP_SUFFIX))
}

fn remove_if_present(storage: &dyn Storage, key: &str) -> Result<()> {
    match storage.remove(key) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {key}"))(e)),
    }
}

/// Under the store lock: removes a VM directory whose record is gone, or the temporary files of
/// interrupted record updates.
fn clean_vm_dir(shared: &Shared, vm: uuid::Uuid) -> Result<()> {
    let storage = &*shared.storage;
    let dir = layout::vm_dir(vm);
    let names = storage
        .list(&dir)
        .map_err(Error::io(format!("listing {dir}")))?;
    if !names.iter().any(|n| n == "vm.json") {
        return storage
            .remove_tree(&dir)
            .map_err(Error::io(format!("removing the remains of {dir}")));
    }
    for n in names.iter().filter(|n| is_temp_of(n, "vm.json")) {
        remove_if_present(storage, &format!("{dir}/{n}"))?;
    }
    let collections = layout::collections_dir(vm);
    for n in storage
        .list(&collections)
        .map_err(Error::io(format!("listing {collections}")))?
    {
        if n.ends_with(TEMP_SUFFIX) {
            remove_if_present(storage, &format!("{collections}/{n}"))?;
        }
    }
    Ok(())
}
