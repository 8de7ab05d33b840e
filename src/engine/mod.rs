//! The engine: everything rpfs does with a store — catalog changes, creating points (change
//! detection, compression, hooks, limits, locks), deleting them (garbage collection and repack),
//! the read path, restore and check.
//!
//! Locks (advisory, released by the kernel when a holder dies, never guessed stale):
//! - `store` serialises short catalog changes: adding, renaming and removing VMs, creating and
//!   removing collections. Waited for, at most [`OpenOptions::lock_wait`] (then busy).
//! - `vm-<id>` is held for the whole of a point creation or deletion (and collection deletion)
//!   on that VM. Never waited for: a second attempt is refused at once as busy.
//!
//! Lock order is `store` then `vm-<id>`.
//!
//! Locks are files no other user can open: the store is private to its owner (checked and, for
//! a store made before that, tightened at open; `crate::store::private`).
//!
//! Crash safety: an operation on a VM first publishes `pending.json`; a point becomes visible
//! only when its record is published, after everything it references is durable; whoever next
//! opens the store and can take the VM's lock finishes the cleanup (`recovery`).
//!
//! Space: the store keeps a reserve file that deletions release when the medium is full
//! (`reserve`), so a full store can always be cleaned.

pub mod cache;
pub mod catalog;
pub mod check;
mod clock;
pub mod create;
pub mod delete;
pub mod error;
mod gc;
mod hooks;
pub mod ingest;
pub mod migrate;
pub mod names;
mod packs;
pub(crate) mod paged;
mod pending;
mod pipeline;
pub mod policy;
pub mod progress;
pub mod read;
mod recovery;
mod report;
pub mod reserve;
pub mod restore;
pub mod schedule;
mod shared;
pub mod source;
pub mod stats;
pub mod vms;

use std::sync::Arc;
use std::time::Duration;

pub use cache::BlockCache;
pub use catalog::Catalog;
pub use clock::{Clock, now_rfc3339};
pub use error::{Damage, Error, ErrorKind, Result};
pub use policy::MAX_POINTS_PER_VM;
pub use read::DiskImage;

use crate::store::block::Compression;
use crate::store::format;
use crate::store::private::Tightened;
use crate::store::records::{PointRecord, StoreHeader};
use crate::store::storage::{LockGuard, Storage};
use crate::store::{kind, layout, read_record, write_record};
use packs::PackRegistry;
use shared::Shared;

/// How long catalog changes wait for the store lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The metadata cache of a store opened with little or no block cache.
const MIN_META_BYTES: usize = 4 << 20;

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Capacity of the block cache in bytes (format 2: of the block and metadata caches).
    pub cache_bytes: usize,
    /// How long to wait for the store lock before refusing as busy.
    pub lock_wait: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_bytes: cache::DEFAULT_CAPACITY,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }
}

/// What a new store is made with ([`Engine::init_with`]); fixed for the store's lifetime.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Block size (format 2: frame size), checked by [`validate_block_size_for`].
    pub block_size: u32,
    /// On-disk format version ([`format::READABLE`]).
    pub version: u32,
    /// What new blocks are compressed with.
    pub compression: Compression,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            block_size: format::DEFAULT_BLOCK_SIZE,
            version: format::DEFAULT,
            compression: Compression::default(),
        }
    }
}

/// An open store.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    clock: Clock,
    /// What opening made private (a store made before stores were private).
    tightened: Arc<Tightened>,
}

/// Checks a block size: a power of two within the range the store format allows.
pub fn validate_block_size(bytes: u64) -> Result<u32> {
    format::check_block_size(bytes).map_err(Error::InvalidArgument)
}

/// `bytes` as the block size of a store of format `version`, or why not (an unknown version
/// included).
pub fn validate_block_size_for(bytes: u64, version: u32) -> Result<u32> {
    if !format::READABLE.contains(&version) {
        return Err(Error::InvalidArgument(format!(
            "store format {version} is not one this build writes ({})",
            format::READABLE.map(|v| v.to_string()).join(" or ")
        )));
    }
    format::check_block_size_for(bytes, version).map_err(Error::InvalidArgument)
}

impl Engine {
    /// Creates a new, empty store of the default format ([`format::DEFAULT`]) in `storage`,
    /// which must be empty, and the caller's: it is made private (0700) if it was not.
    pub fn init(storage: Arc<dyn Storage>, block_size: u32) -> Result<Engine> {
        Self::init_with(
            storage,
            InitOptions {
                block_size,
                ..InitOptions::default()
            },
        )
    }

    /// [`Engine::init`] with every choice `options` makes.
    pub fn init_with(storage: Arc<dyn Storage>, options: InitOptions) -> Result<Engine> {
        let InitOptions {
            block_size,
            version,
            compression,
        } = options;
        let block_size = validate_block_size_for(u64::from(block_size), version)?;
        let existing = storage
            .list("")
            .map_err(Error::io("listing the store directory"))?;
        if existing.iter().any(|n| n == layout::STORE_HEADER) {
            return Err(Error::Exists {
                what: "store",
                name: layout::STORE_HEADER.into(),
            });
        }
        if !existing.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the store directory is not empty (holds {}); choose an empty or new directory",
                existing.join(", ")
            )));
        }
        // Only now that it is known to be empty: narrowing is never applied to files that are
        // not the store's.
        let private = storage
            .make_private()
            .map_err(Error::io("making the store directory private"))?;
        if let Some(why) = private.unfinished {
            return Err(Error::Io {
                context: "making the store directory private (0700)".into(),
                source: std::io::Error::other(why),
            });
        }
        let header = StoreHeader {
            format: format::FORMAT.into(),
            version,
            store_id: uuid::Uuid::new_v4(),
            block_size,
            compression,
            created: now_rfc3339(),
        };
        write_record(&*storage, layout::STORE_HEADER, kind::STORE, &header)
            .map_err(Error::io("writing the store header"))?;
        Self::open(storage, OpenOptions::default())
    }

    /// Opens an existing store, the caller's: refuses one another user owns, makes one others
    /// can read private ([`Engine::tightened`] says what changed), finishes any operation a
    /// crash interrupted, and makes the reserve if it is missing.
    pub fn open(storage: Arc<dyn Storage>, options: OpenOptions) -> Result<Engine> {
        let header: StoreHeader = match read_record(&*storage, layout::STORE_HEADER, kind::STORE) {
            Ok(h) => h,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotFound {
                    what: "store",
                    name: "rpfs.store".into(),
                    hint: "; create a store with `rpfs init`".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if header.format != format::FORMAT || !format::READABLE.contains(&header.version) {
            return Err(Error::Unsupported(format!(
                "store format {} v{} is not supported by this build (v{})",
                header.format,
                header.version,
                format::READABLE.map(|v| v.to_string()).join(", v")
            )));
        }
        validate_block_size_for(u64::from(header.block_size), header.version)?;
        // After the header: only a directory that is a store is ever narrowed.
        let tightened = storage
            .make_private()
            .map_err(Error::io("opening the store"))?;
        // Format 2's metadata (map pages, frame tables) comes out of the cache size given, so
        // the daemon's memory stays within it: an eighth, at most 32 MiB. Without a block cache
        // (the CLI reads each block once) a small metadata cache still serves every block.
        let meta_bytes = if header.version == format::PAGED {
            (options.cache_bytes / 8).min(cache::DEFAULT_META_CAPACITY)
        } else {
            0
        };
        let engine = Engine {
            shared: Arc::new(Shared {
                storage,
                header,
                cache: BlockCache::new(options.cache_bytes - meta_bytes),
                packs: PackRegistry::default(),
                meta: paged::meta::MetaCache::new(meta_bytes.max(MIN_META_BYTES)),
                frame_packs: paged::meta::FramePackRegistry::default(),
                lock_wait: options.lock_wait,
            }),
            clock: Clock::default(),
            tightened: Arc::new(tightened),
        };
        recovery::recover(&engine.shared)?;
        reserve::ensure(&engine.shared);
        Ok(engine)
    }

    /// What opening the store made private: nothing for a store that was private already.
    pub fn tightened(&self) -> &Tightened {
        &self.tightened
    }

    /// This engine, reading the time from `clock` (points' creation times, schedules and the
    /// minimum interval between creations follow it).
    pub fn with_clock(mut self, clock: Clock) -> Engine {
        self.clock = clock;
        self
    }

    /// The time, from the engine's clock.
    pub fn now(&self) -> std::time::SystemTime {
        self.clock.now()
    }

    pub fn header(&self) -> &StoreHeader {
        &self.shared.header
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    pub fn cache(&self) -> &BlockCache {
        &self.shared.cache
    }

    /// A fresh snapshot of the store's metadata.
    pub fn catalog(&self) -> Result<Catalog> {
        Catalog::load(&*self.shared.storage)
    }

    /// The configuration captured at `point`, verbatim.
    pub fn point_config(&self, point: &PointRecord) -> Result<Vec<u8>> {
        let key = layout::point_config(point.vm_id, point.id);
        let bytes = self
            .shared
            .storage
            .read(&key)
            .map_err(Error::io(format!("reading {key}")))?;
        Ok(crate::store::envelope::open(&key, kind::CONFIG, &bytes)?.to_vec())
    }

    /// Opens disk `disk` of `point` for reading.
    pub fn open_disk(
        &self,
        collection: &str,
        point: &PointRecord,
        disk: &str,
    ) -> Result<DiskImage> {
        let d = point
            .disks
            .iter()
            .find(|d| d.name == disk)
            .ok_or_else(|| Error::NotFound {
                what: "disk restore point",
                name: format!("{collection}/{}/{disk}", point.name),
                hint: String::new(),
            })?;
        let label = format!("restore point {collection}/{} disk '{disk}'", point.name);
        let key = layout::map(point.vm_id, d.disk_id, d.drp_id);
        let map_error = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound {
                    what: "restore point",
                    name: label.clone(),
                    hint: "; it was deleted meanwhile".into(),
                }
            } else {
                Error::io(format!("{label}: reading its block map {key}"))(e)
            }
        };
        if self.shared.header.version == format::PAGED {
            let paged =
                paged::read::PagedDisk::open(&self.shared, d.drp_id, &key).map_err(|cause| {
                    match cause {
                        paged::read::Cause::Io(e) => map_error(e),
                        paged::read::Cause::Damage(damage) => Error::Damaged {
                            context: label.clone(),
                            damage,
                        },
                    }
                })?;
            return Ok(DiskImage::paged(
                self.shared.clone(),
                label.clone(),
                layout::point(point.vm_id, point.id),
                (point.vm_id, d.disk_id),
                paged,
            ));
        }
        let map = self
            .shared
            .storage
            .read(&key)
            .map_err(map_error)
            .and_then(|bytes| {
                crate::store::blockmap::BlockMap::decode(
                    &key,
                    &bytes,
                    self.shared.header.block_size,
                )
                .map_err(|c| Error::Damaged {
                    context: label.clone(),
                    damage: Damage::Map(c),
                })
            })?;
        Ok(DiskImage::new(
            self.shared.clone(),
            label,
            layout::point(point.vm_id, point.id),
            point.vm_id,
            d.disk_id,
            map,
        ))
    }

    pub(crate) fn store_lock(&self) -> Result<LockGuard> {
        self.shared.store_lock()
    }

    /// Takes the VM's lock or refuses at once as busy.
    pub(crate) fn vm_lock(&self, vm: &crate::store::records::VmRecord) -> Result<LockGuard> {
        self.shared
            .try_vm_lock(vm.id)
            .map_err(|e| match e {
                Error::Io { source, .. } => Error::Io {
                    context: format!("taking the lock of VM '{}'", vm.name),
                    source,
                },
                other => other,
            })?
            .ok_or_else(|| Error::Busy {
                vm: vm.name.clone(),
            })
    }
}
