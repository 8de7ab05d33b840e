//! The filesystem users see, as plain Rust: the tree of collections, points and disk images;
//! attributes; listings; `mkdir` creating points and `rmdir` deleting them. Knows nothing of
//! FUSE (the adapter in `fuse/` translates), so every behaviour is testable without a kernel.
//!
//! Rooms: the state lives in `snapshot` (the catalog), `inodes` (numbers and the kernel's
//! lookups), `handles` (open files) and `media` (images, partitions, guest filesystems, kept
//! open within the ceilings of `open_guests`);
//! the operations on it in `attrs`, `tree` (names and listings), `guests` (the subtree
//! under `files/`), `files` (open, read, seek) and `changes` (`mkdir`, `rmdir`); who may read
//! what (owners and modes, which the kernel enforces under `--allow-other`) in `access`.
//!
//! Invariants:
//! - The tree is read-only except for `mkdir` (a new point directly inside a collection) and,
//!   when allowed, `rmdir` (of a point). Every other change is refused.
//! - Names resolve against a catalog snapshot at most [`VfsOptions::catalog_max_age`] old, so a
//!   point created or deleted by another process shows within that time; `mkdir` and `rmdir`
//!   refresh it at once.
//! - What a committed point holds never changes: its disk images and configuration are served
//!   with long cache lifetimes; what changes (collection listings, `latest`, JSON resources) is
//!   served with short ones.
//! - Every lock (the inode table, the snapshot, the handles, each media cache) is held only for
//!   a lookup or an insert, never across I/O or a creation, so a long `mkdir` blocks no read.
//! - What the kernel forgets, the tree forgets: memory grows with what the kernel holds and the
//!   catalog's size, not with every guest file ever listed.
//! - Raw views of VM data are 0400 to the mounting user (0440 with the image group) even under
//!   `--allow-other`, and a guest uid never grants a host user access (see `access.rs`).
//! - `files/` costs nothing until entered: a disk's table is read and its filesystems probed on
//!   first use, each parsed by its own guest reader; what one cannot read is EIO in it alone,
//!   and a damaged guest inode is EIO in its own file alone (its directory still lists).
//! - What browsing `files/` makes the daemon keep is bounded whoever browses: a few guest
//!   filesystems open at once, closed when idle, their listings in one byte-bounded cache (see
//!   `open_guests.rs`); inode numbers the kernel holds stay valid across a close.

mod access;
mod attrs;
mod changes;
mod errno;
mod files;
mod guests;
mod handles;
mod inodes;
mod media;
mod node;
mod open_guests;
mod snapshot;
mod tree;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

pub use errno::{FsError, Level};
pub use node::{Attr, CHANGING_TTL, DirEntry, Entry, IMMUTABLE_TTL, Kind, Node, ROOT_INO};

use crate::engine::Engine;
use handles::Handles;
use inodes::Inodes;
use media::Media;
use snapshot::{Snapshot, Snapshots};

/// Block size `statfs` reports.
const BLOCK: u32 = 4096;

/// How the tree behaves; built by the CLI from its flags.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// `rmdir` of a point deletes it; otherwise refused.
    pub allow_delete: bool,
    /// Other users may use the mount; then only root and `owner_uid` may `mkdir`/`rmdir`.
    pub allow_other: bool,
    /// Owner of every node: the mounting user.
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Group that may read raw views of VM data (disk and partition images, `vm-config`),
    /// which are otherwise the owner's alone (`--image-group`).
    pub image_gid: Option<u32>,
    /// Oldest a catalog snapshot may be when a name is resolved or a directory listed.
    pub catalog_max_age: Duration,
}

/// A file opened through the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Keep the kernel's page cache across opens (the content never changes).
    pub keep_cache: bool,
    /// Bypass the page cache (generated content whose size may change).
    pub direct_io: bool,
}

/// Capacity figures for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    /// Inodes the kernel holds or a listing named: catalog nodes and guest files looked up.
    pub files: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// The tree over one store.
pub struct Vfs {
    engine: Engine,
    options: VfsOptions,
    inodes: Mutex<Inodes>,
    snapshots: Snapshots,
    handles: Handles,
    media: Media,
    store_created: SystemTime,
}

fn parse_time(t: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(t).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Vfs {
    /// A tree over `engine`'s store.
    pub fn new(engine: Engine, options: VfsOptions) -> Result<Vfs, FsError> {
        let snapshots = Snapshots::new(&engine, options.catalog_max_age)?;
        let store_created = parse_time(&engine.header().created);
        Ok(Vfs {
            media: Media::new(engine.clone()),
            engine,
            options,
            inodes: Mutex::new(Inodes::default()),
            snapshots,
            handles: Handles::default(),
            store_created,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The current snapshot, reloaded when older than the configured age.
    fn snapshot(&self) -> Result<Arc<Snapshot>, FsError> {
        let (snap, reloaded) = self.snapshots.get(&self.engine)?;
        if reloaded {
            self.forget_gone(&snap);
        }
        Ok(snap)
    }

    /// Reloads the snapshot now (after a change made through the mount).
    fn refresh(&self) -> Result<Arc<Snapshot>, FsError> {
        let snap = self.snapshots.refresh(&self.engine)?;
        self.forget_gone(&snap);
        Ok(snap)
    }

    /// Forgets what belongs to points that are gone from `snap`.
    fn forget_gone(&self, snap: &Snapshot) {
        self.media
            .retain_points(|p| snap.cat.point_by_id(p).is_some());
        self.inodes.lock().prune(|node| snap.holds(node));
    }

    fn ino(&self, node: Node) -> Result<u64, FsError> {
        self.inodes.lock().ino(node).ok_or_else(|| {
            FsError::Guest(format!(
                "a guest inode number of {node:?} is larger than 2^{}",
                inodes::GUEST_SHIFT
            ))
        })
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes.lock().node(ino).ok_or(FsError::Stale(ino))
    }

    /// The kernel forgets `nlookup` of its lookups of `ino`; once it holds none, the inode's
    /// number (or a guest file's path) is forgotten here too.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let guest = self.inodes.lock().forget(ino, nlookup);
        // The root of a guest filesystem is node 0, and always known: nothing to return.
        if let Some((key, guest_ino @ 1..)) = guest {
            self.media.forget_guest(&key, guest_ino, nlookup);
        }
    }

    /// Capacity of the store's medium, for `df`; inodes the kernel holds, for `df -i`.
    pub fn statfs(&self) -> Result<FsStat, FsError> {
        let space = self
            .engine
            .storage()
            .space()
            .map_err(|e| FsError::Engine(crate::engine::Error::io("statfs of the store")(e)))?;
        let b = u64::from(BLOCK);
        Ok(FsStat {
            blocks: space.total_bytes / b,
            bfree: space.free_bytes / b,
            bavail: space.free_bytes / b,
            files: (self.inodes.lock().len() + self.media.known_guest_files()) as u64,
            bsize: BLOCK,
            namelen: 255,
        })
    }
}
