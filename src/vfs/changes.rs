//! The two changes the tree takes: `mkdir` of a new point directly inside a collection, and,
//! when allowed, `rmdir` of a point.
//!
//! Invariants: a change runs the engine's own creation or deletion (every limit and lock
//! applies), its outcome (with the full reason of a failure) is kept in the collection's
//! `rpfs.lastOperation` and logged, and the snapshot is refreshed at once either way.

use std::ffi::OsStr;

use super::node::{COLLECTION_JSON, Entry, LATEST, Node};
use super::{FsError, Vfs};
use crate::engine::create::CreateRequest;
use crate::engine::now_rfc3339;
use crate::engine::progress::Silent;
use crate::store::records::LastOperation;

impl Vfs {
    fn check_caller(&self, uid: u32, what: &str) -> Result<(), FsError> {
        if self.options.allow_other && uid != 0 && uid != self.options.owner_uid {
            return Err(FsError::AccessDenied(format!(
                "{what}: only root and the user who mounted (uid {}) may create or delete restore \
                 points",
                self.options.owner_uid
            )));
        }
        Ok(())
    }

    /// `mkdir PARENT/NAME`: creates restore point NAME of the collection PARENT, with the
    /// collection's defaults; returns once it is committed.
    pub fn mkdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<Entry, FsError> {
        let parent = self.node(parent)?;
        let Node::Collection(cid) = parent else {
            return Err(FsError::NotPermitted(
                "mkdir creates restore points, and only directly inside a collection directory \
                 (MOUNT/<collection>/<point>)"
                    .into(),
            ));
        };
        self.check_caller(uid, "mkdir")?;
        let name = name.to_str().ok_or(FsError::BadName)?;
        let coll = self.snapshot()?.collection(cid)?.name.clone();
        let req = CreateRequest {
            collection: coll.clone(),
            name: name.to_string(),
            exclude: Vec::new(),
            consistency: None,
        };
        let result = self.engine.create_point(&req, &Silent);
        self.record(&coll, "create", name, result.as_ref().err());
        // Refreshed either way: the collection now shows the outcome. The operation's own error
        // comes first.
        let snap = self.refresh();
        let out = result?;
        let snap = snap?;
        for w in &out.warnings {
            tracing::warn!("mkdir {coll}/{name}: {w}");
        }
        self.held_entry(&snap, Node::Point(out.point.id))
    }

    /// `rmdir PARENT/NAME`: deletes restore point NAME, when deletion is allowed.
    pub fn rmdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<(), FsError> {
        let parent = self.node(parent)?;
        if !self.options.allow_delete {
            return Err(FsError::NotPermitted(
                "rmdir deletes restore points only when mounted with --allow-delete".into(),
            ));
        }
        let Node::Collection(cid) = parent else {
            return Err(FsError::NotPermitted(
                "rmdir deletes restore points (MOUNT/<collection>/<point>) and nothing else".into(),
            ));
        };
        self.check_caller(uid, "rmdir")?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let snap = self.snapshot()?;
        let coll = snap.collection(cid)?.name.clone();
        if matches!(name, COLLECTION_JSON | LATEST) {
            return Err(FsError::NotDir);
        }
        let result = self.engine.delete_point(&coll, name);
        self.record(&coll, "delete", name, result.as_ref().err());
        let refreshed = self.refresh();
        let out = result?;
        refreshed?;
        for w in &out.warnings {
            tracing::warn!("rmdir {coll}/{name}: {w}");
        }
        Ok(())
    }

    /// Keeps the outcome in `collection.json`, so a user can read why `mkdir` failed.
    fn record(
        &self,
        collection: &str,
        operation: &str,
        point: &str,
        error: Option<&crate::engine::Error>,
    ) {
        let op = LastOperation {
            operation: operation.into(),
            point: point.into(),
            finished: now_rfc3339(),
            status: if error.is_some() {
                "Failed"
            } else {
                "Succeeded"
            }
            .into(),
            error: error.map(ToString::to_string),
        };
        if let Err(e) = self.engine.record_operation(collection, op) {
            tracing::warn!("recording the {operation} of {collection}/{point}: {e}");
        }
    }
}
