//! Deleting restore points, from anywhere in a chain.
//!
//! Every block map is complete, so no point depends on another point's map; points share only
//! stored blocks. Deleting a point publishes the operation marker, removes the point's record
//! (the commit), then ends the operation, which collects what no remaining point references
//! (`super::gc`).
//!
//! Invariants: a deletion runs under the VM's lock, on a point record re-read under it; once the
//! record is removed the deletion has happened, and a failure after that only delays freeing
//! space (the marker keeps the debt for the next operation or open). A deletion that fails for
//! lack of space releases the store's reserve and runs again (`super::reserve`).

use super::Engine;
use super::catalog;
use super::clock::now_rfc3339;
use super::error::{Error, Result};
use super::pending;
use super::shared::Shared;
use crate::store::layout;
use crate::store::records::{PendingKind, PendingOp, PointRecord};

/// What a deletion did.
#[derive(Debug, Clone)]
pub struct DeleteOutcome {
    pub point: PointRecord,
    /// Bytes of pack and map files freed.
    pub freed_bytes: u64,
    /// Things the user should know that did not stop the deletion (space not freed yet).
    pub warnings: Vec<String>,
}

impl Engine {
    /// Deletes `collection/name`, also on a full store (`super::reserve`).
    pub fn delete_point(&self, collection: &str, name: &str) -> Result<DeleteOutcome> {
        super::reserve::with_reserve(&self.shared, || self.delete_point_once(collection, name))
    }

    fn delete_point_once(&self, collection: &str, name: &str) -> Result<DeleteOutcome> {
        let cat = self.catalog()?;
        let (c, p) = cat.point(collection, name)?;
        let vm = cat.vm_by_id(c.vm_id).ok_or_else(|| Error::NotFound {
            what: "VM of collection",
            name: collection.to_string(),
            hint: String::new(),
        })?;
        let _lock = self.vm_lock(vm)?;
        // Re-read under the lock: the point may have gone meanwhile.
        let point = catalog::load_points(&*self.shared.storage, vm.id)?
            .into_iter()
            .find(|x| x.id == p.id)
            .ok_or_else(|| Error::NotFound {
                what: "restore point",
                name: format!("{collection}/{name}"),
                hint: String::new(),
            })?;
        let (freed_bytes, warnings) = delete_locked(&self.shared, &point, collection)?;
        Ok(DeleteOutcome {
            point,
            freed_bytes,
            warnings,
        })
    }
}

/// Deletes a point whose VM lock the caller holds. Returns bytes freed and warnings.
pub(crate) fn delete_locked(
    shared: &Shared,
    point: &PointRecord,
    collection: &str,
) -> Result<(u64, Vec<String>)> {
    let vm = point.vm_id;
    let mut op = PendingOp {
        op: PendingKind::Delete,
        point_id: point.id,
        clones: Vec::new(),
        started: now_rfc3339(),
        frozen: false,
        collection: collection.to_string(),
        point: point.name.clone(),
        gc_owed: false,
    };
    let earlier = pending::begin(shared, vm, &mut op)?;
    let point_key = layout::point(vm, point.id);
    shared
        .storage
        .remove(&point_key)
        .map_err(Error::io(format!("removing {point_key}")))?;
    // The point is gone. From here a failure only delays freeing its space: the marker stays and
    // the next operation on the VM, or the next open of the store, finishes the collection.
    let mut warnings = earlier.warnings;
    match pending::end(shared, vm, &mut op, true) {
        Ok(done) => {
            warnings.extend(
                done.warnings
                    .into_iter()
                    .map(|w| format!("space not freed yet: {w}")),
            );
            Ok((earlier.freed_bytes + done.freed_bytes, warnings))
        }
        Err(e) => {
            warnings.push(format!(
                "the point is deleted, but freeing its space failed ({e}); rpfs retries when it \
                 next opens the store"
            ));
            Ok((earlier.freed_bytes, warnings))
        }
    }
}
