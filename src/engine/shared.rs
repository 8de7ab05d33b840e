//! What the engine and everything it hands out (disk images, operations in flight) share for
//! the life of an open store: the storage, the store's header, the block cache and the registry
//! of open packs.
//!
//! Invariants: the header is read once at open and never changes; the cache and the registry
//! only ever hold what committed points reference (a repack or removal tells the registry); the
//! store lock is never waited for longer than `lock_wait`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::cache::BlockCache;
use super::error::{Error, Result};
use super::packs::{OpenError, PackHandle, PackRegistry};
use super::paged::meta::{FramePackRegistry, MetaCache};
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
    /// Format 2: map pages, frame tables and fingerprints.
    pub(crate) meta: MetaCache,
    /// Format 2: open frame packs.
    pub(crate) frame_packs: FramePackRegistry,
    /// How long to wait for the store lock before giving up as busy.
    pub(crate) lock_wait: Duration,
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

    /// Takes the store lock, waiting at most `lock_wait` for it (polling: a blocking wait could
    /// not be bounded), then refusing as busy. Whoever holds it, a stuck or stopped process
    /// included, delays others by that much and no more.
    pub(crate) fn store_lock(&self) -> Result<LockGuard> {
        self.poll_lock(|| {
            self.storage
                .try_lock(layout::STORE_LOCK)
                .map_err(Error::io("taking the store lock"))
        })
    }

    /// Format 2: the creation lock, shared with other creations and exclusive of a sweep, held
    /// by a creation from before it looks anything up until it ends (`paged::gc`). Waits for a
    /// running sweep as long as for the store lock. `None` in format 1.
    pub(crate) fn creation_lock(&self) -> Result<Option<LockGuard>> {
        if self.header.version != crate::store::format::PAGED {
            return Ok(None);
        }
        self.poll_lock(|| {
            self.storage
                .try_lock_shared(layout::GC_LOCK)
                .map_err(Error::io("taking the creation lock"))
        })
        .map(Some)
    }

    fn poll_lock(&self, try_take: impl Fn() -> Result<Option<LockGuard>>) -> Result<LockGuard> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(g) = try_take()? {
                return Ok(g);
            }
            let waited = start.elapsed();
            if waited >= self.lock_wait {
                return Err(Error::StoreBusy { waited });
            }
            std::thread::sleep(pause.min(self.lock_wait - waited));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Takes the lock of VM `vm` if it is free.
    pub(crate) fn try_vm_lock(&self, vm: Uuid) -> Result<Option<LockGuard>> {
        self.storage
            .try_lock(&layout::vm_lock(vm))
            .map_err(Error::io("taking the VM lock"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::engine::{Engine, Error, OpenOptions};
    use crate::store::LocalStorage;
    use crate::store::layout;
    use crate::store::storage::Storage;

    #[test]
    fn a_held_store_lock_is_waited_for_no_longer_than_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        Engine::init(Arc::new(LocalStorage::new(dir.path())), 4096).expect("init");
        let wait = Duration::from_millis(200);
        let engine = Engine::open(
            Arc::new(LocalStorage::new(dir.path())),
            OpenOptions {
                lock_wait: wait,
                ..OpenOptions::default()
            },
        )
        .expect("open");
        let other = LocalStorage::new(dir.path());
        let held = other
            .try_lock(layout::STORE_LOCK)
            .expect("lock")
            .expect("free");
        let start = Instant::now();
        let refused = engine.store_lock();
        assert!(
            matches!(refused, Err(Error::StoreBusy { .. })),
            "{refused:?}"
        );
        assert!(start.elapsed() >= wait && start.elapsed() < wait * 10);
        drop(held);
        assert!(engine.store_lock().is_ok());
    }
}
