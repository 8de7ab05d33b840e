//! Open packs, shared by everything in one process that reads them: each pack is opened and its
//! table parsed once while any reader holds it.
//!
//! Invariants: a handle is the pack as it was when opened (an open file outlives a repack or a
//! removal of its name), and `(pack id, block number)` names the same content for the store's
//! lifetime, so a stale handle still reads right bytes. Whoever replaces or removes a pack
//! calls [`PackRegistry::forget`], so the next open reads the new file.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use uuid::Uuid;

use super::error::Error;
use crate::store::Corrupt;
use crate::store::layout;
use crate::store::pack::{PackError, PackIndex};
use crate::store::storage::{Object, Storage};

/// An open pack: its object and validated table.
#[derive(Debug)]
pub struct PackHandle {
    pub key: String,
    pub object: Arc<dyn Object>,
    pub index: PackIndex,
}

/// Why a pack could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Its header, table or trailer is damaged.
    Corrupt(Corrupt),
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Error {
        match e {
            OpenError::Io { context, source } => Error::Io { context, source },
            OpenError::Corrupt(c) => Error::Corrupt(c),
        }
    }
}

/// Open packs by id, held weakly: a pack no reader holds is closed.
#[derive(Debug, Default)]
pub struct PackRegistry {
    open: Mutex<HashMap<Uuid, Weak<PackHandle>>>,
}

impl PackRegistry {
    /// Forgets a pack (after it was replaced or removed) so the next user reopens it.
    pub fn forget(&self, pack: Uuid) {
        self.open.lock().remove(&pack);
    }

    /// Opens pack `pack` of disk chain `disk` of `vm`, sharing a live handle when there is one.
    pub(crate) fn open(
        &self,
        storage: &dyn Storage,
        block_size: u32,
        vm: Uuid,
        disk: Uuid,
        pack: Uuid,
    ) -> Result<Arc<PackHandle>, OpenError> {
        if let Some(h) = self.open.lock().get(&pack).and_then(Weak::upgrade) {
            return Ok(h);
        }
        let key = layout::pack(vm, disk, pack);
        let object = storage.open(&key).map_err(|source| OpenError::Io {
            context: format!("opening {key}"),
            source,
        })?;
        let index = PackIndex::load(&*object, &key, pack, block_size).map_err(|e| match e {
            PackError::Io(source) => OpenError::Io {
                context: format!("reading {key}"),
                source,
            },
            PackError::Corrupt(c) => OpenError::Corrupt(c),
        })?;
        let handle = Arc::new(PackHandle { key, object, index });
        self.open.lock().insert(pack, Arc::downgrade(&handle));
        Ok(handle)
    }
}
