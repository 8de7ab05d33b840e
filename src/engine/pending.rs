//! The operation marker `vms/<vm>/pending.json`: the one piece of state that lets any process
//! finish what a crashed creation or deletion left behind.
//!
//! Lifecycle, always under the VM's lock:
//! - [`begin`] finishes a marker an earlier operation left (thaw, garbage, clones), then
//!   publishes the new one before the operation changes anything. A garbage collection debt the
//!   earlier marker still carried (a repack deferred for lack of space) moves into the new one,
//!   so it is never lost.
//! - [`set_frozen`] records while the VM may be frozen, so recovery can thaw it.
//! - [`end`] collects garbage when the operation needs it or a debt is owed, and removes the
//!   marker once nothing is owed; otherwise the marker stays with the debt.
//! - [`finish`] (recovery, and [`begin`]) does all of that for a marker whose operation died.
//!
//! Every step is idempotent, so any of them can be interrupted and rerun.

use std::time::Duration;

use uuid::Uuid;

use super::catalog;
use super::error::{Error, Result};
use super::gc;
use super::hooks::{self, Outcome};
use super::shared::Shared;
use crate::store::layout::{self, Name};
use crate::store::records::PendingOp;
use crate::store::storage::remove_if_present;
use crate::store::{kind, read_record, write_record};

/// What ending an operation (or finishing an interrupted one) did.
#[derive(Debug, Clone, Default)]
pub struct Cleanup {
    /// Things a user should know: a thaw run by recovery, space not freed yet.
    pub warnings: Vec<String>,
    /// Bytes garbage collection freed.
    pub freed_bytes: u64,
}

/// Publishes `op` as the marker of `vm`, after finishing any marker an earlier operation left.
/// Returns what that finishing did. The caller holds the VM's lock.
pub(crate) fn begin(shared: &Shared, vm: Uuid, op: &mut PendingOp) -> Result<Cleanup> {
    let (owed, earlier) = finish(shared, vm)?;
    op.gc_owed |= owed;
    write(shared, vm, op)?;
    Ok(earlier)
}

/// Rewrites the marker with `frozen` set as given.
pub(crate) fn set_frozen(
    shared: &Shared,
    vm: Uuid,
    op: &mut PendingOp,
    frozen: bool,
) -> Result<()> {
    op.frozen = frozen;
    write(shared, vm, op)
}

/// Ends the operation of `op`: collects garbage if `collect` or a debt is owed, then removes the
/// marker, or keeps it with the debt when a repack had to be deferred.
pub(crate) fn end(shared: &Shared, vm: Uuid, op: &mut PendingOp, collect: bool) -> Result<Cleanup> {
    let mut done = Cleanup::default();
    if collect || op.gc_owed {
        let gc = gc::collect_garbage(shared, vm)?;
        done.freed_bytes = gc.freed_bytes;
        op.gc_owed = !gc.deferred.is_empty();
        if op.gc_owed {
            done.warnings.extend(gc.deferred);
            op.frozen = false;
            op.clones.clear();
            write(shared, vm, op)?;
            return Ok(done);
        }
    }
    remove_marker(shared, vm)?;
    Ok(done)
}

fn write(shared: &Shared, vm: Uuid, op: &PendingOp) -> Result<()> {
    let key = layout::pending(vm);
    write_record(&*shared.storage, &key, kind::PENDING, op)
        .map_err(Error::io(format!("writing {key}")))
}

/// Finishes the marker `vm` holds, if any: thaws the VM if it may be frozen, removes reflink
/// clones, collects garbage, and removes the marker unless a repack had to be deferred.
/// Returns whether garbage collection still owes work, and what was done. The caller holds the
/// VM's lock.
pub(crate) fn finish(shared: &Shared, vm: Uuid) -> Result<(bool, Cleanup)> {
    let storage = &*shared.storage;
    let dir = layout::vm_dir(vm);
    let names = storage
        .list(&dir)
        .map_err(Error::io(format!("listing {dir}")))?;
    let marker = |n: &String| {
        let name = layout::classify(n);
        name == Name::Pending || name.is_temp_of(layout::PENDING)
    };
    if !names.iter().any(marker) {
        return Ok((false, Cleanup::default()));
    }
    // An unreadable (or never completed) marker still means "collect garbage".
    let mut op: PendingOp = match read_record(storage, &layout::pending(vm), kind::PENDING) {
        Ok(op) => op,
        Err(_) => PendingOp {
            op: crate::store::records::PendingKind::Create,
            point_id: Uuid::nil(),
            clones: Vec::new(),
            started: String::new(),
            frozen: false,
            collection: String::new(),
            point: String::new(),
            gc_owed: true,
        },
    };
    let mut warnings = Vec::new();
    if op.frozen {
        warnings.push(thaw(shared, vm, &op));
        op.frozen = false;
    }
    for clone in &op.clones {
        // Only names rpfs gives its clones; a marker never makes us remove anything else.
        // Removal unlinks the name itself and never follows a link there. (Clones are unnamed
        // O_TMPFILE files, or named only for an instant where that is not supported: see
        // `create::reflink_clone`. The list is for that instant.)
        if clone
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".rpfs-clone-"))
        {
            let _ = std::fs::remove_file(clone);
        }
    }
    op.clones.clear();
    let mut done = end(shared, vm, &mut op, true)?;
    warnings.append(&mut done.warnings);
    done.warnings = warnings;
    Ok((op.gc_owed, done))
}

/// Runs the post-script of a VM an interrupted creation may have left frozen; says what happened.
fn thaw(shared: &Shared, vm: Uuid, op: &PendingOp) -> String {
    let record = match catalog::load_vm(&*shared.storage, vm) {
        Ok(Some(r)) => r,
        _ => {
            return format!(
                "VM {vm} may have been left frozen by an interrupted creation, and its record \
                 cannot be read to thaw it"
            );
        }
    };
    let Some(cmd) = &record.post_script else {
        return format!(
            "VM '{}' may have been left frozen by an interrupted creation (it has no post-script)",
            record.name
        );
    };
    // The collection's id, for RPFS_COLLECTION_ID: the marker keeps its name only.
    let collection_id = catalog::load_collections(&*shared.storage, vm)
        .ok()
        .and_then(|cs| cs.into_iter().find(|c| c.name == op.collection))
        .map(|c| c.id);
    let env = hooks::script_env(
        &record,
        &op.collection,
        collection_id,
        &op.point,
        op.point_id,
        "post",
    );
    match hooks::run(cmd, &env, Duration::from_secs(record.script_timeout_secs)) {
        Outcome::Success(_) => format!(
            "VM '{}' may have been left frozen by an interrupted creation; its post-script was run \
             to thaw it",
            record.name
        ),
        Outcome::Failed(why) => format!(
            "VM '{}' may have been left frozen by an interrupted creation; its post-script {why}: \
             thaw it by hand",
            record.name
        ),
    }
}

fn remove_marker(shared: &Shared, vm: Uuid) -> Result<()> {
    let storage = &*shared.storage;
    let dir = layout::vm_dir(vm);
    let names = storage
        .list(&dir)
        .map_err(Error::io(format!("listing {dir}")))?;
    let temps = names
        .iter()
        .filter(|n| layout::classify(n).is_temp_of(layout::PENDING))
        .map(|n| format!("{dir}/{n}"));
    for key in temps.chain([layout::pending(vm)]) {
        remove_if_present(storage, &key).map_err(Error::io(format!("removing {key}")))?;
    }
    Ok(())
}
