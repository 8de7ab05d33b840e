//! What the engine and everything it hands out (disk images, operations in flight) share for
//! the life of an open store: the storage, the store's header, the block cache and the registry
//! of open packs.
//!
//! Invariants: the header is read once at open and never changes; the cache and the registry
//! only ever hold what committed points reference (a repack or removal tells the registry).

use std::sync::Arc;

use uuid::Uuid;

use super::cache::BlockCache;
use super::error::{Error, Result};
use super::packs::{OpenError, PackHandle, PackRegistry};
use crate::store::layout;
use crate::store::records::StoreHeader;
use crate::store::storage::{LockGuard, Storage};

/// State shared by the engine and the images it hands out.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) header: StoreHeader,
    pub(crate) cache: BlockCache,
    pub(crate) packs: PackRegistry,
}

impl Shared {
    /// Opens pack `pack` of disk chain `disk` of `vm`, sharing a live handle when there is one.
    pub(crate) fn open_pack(
        &self,
        vm: Uuid,
        disk: Uuid,
        pack: Uuid,
    ) -> std::result::Result<Arc<PackHandle>, OpenError> {
        self.packs
            .open(&*self.storage, self.header.block_size, vm, disk, pack)
    }

    /// Takes the lock of VM `vm` if it is free.
    pub(crate) fn try_vm_lock(&self, vm: Uuid) -> Result<Option<LockGuard>> {
        self.storage
            .try_lock(&layout::vm_lock(vm))
            .map_err(Error::io("taking the VM lock"))
    }
}
