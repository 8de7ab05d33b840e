//! Format 2's metadata on the way to a page, read in bounded pieces: map pages, frame-table
//! chunks, fingerprint chunks and dedup index blocks, all through one bytes-bounded cache shared by every image and
//! creation of the process; and the registry of open frame packs.
//!
//! Invariants: every key names immutable content (a pack's tables are keyed by the opening they
//! were read through, since a repack rewrites a pack under its id with other offsets) (a map never changes; a repack keeps every
//! frame index, and only clears present bits of pages no committed point references, which no
//! reader of a committed point can ask for), so an entry never goes stale for a correct reader.
//! Memory is the cache's capacity plus, per open pack, its directory (12 bytes per 1024 frames
//! and 4 per 4096 pages) — nothing grows with the number of points or VMs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use uuid::Uuid;

use crate::engine::cache::{BlockKey, Cache, CacheKey, Weigh};
use crate::engine::packs::OpenError;
use crate::store::frames::{self, FrameEntry, FramePack};
use crate::store::index;
use crate::store::layout;
use crate::store::pack::PackError;
use crate::store::page::Fingerprint;
use crate::store::pagemap::PageMap;
use crate::store::storage::{Object, Storage};

/// What the metadata cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MetaKey {
    /// Map page `1` of the map of disk restore point `0`.
    MapPage(Uuid, u32),
    /// Table chunk `2` of generation `1` (see [`FramePackHandle::generation`]) of pack `0`.
    Table(Uuid, u64, u32),
    /// Fingerprint chunk `2` of generation `1` of pack `0`.
    Fingerprints(Uuid, u64, u32),
    /// Block `1` of dedup index segment `0` (segments are written once, never rewritten).
    IndexBlock(Uuid, u32),
}

impl CacheKey for MetaKey {
    fn mix(&self) -> u64 {
        let (id, g, n, kind) = match *self {
            MetaKey::MapPage(id, n) => (id, 0, n, 1),
            MetaKey::Table(id, g, n) => (id, g, n, 2),
            MetaKey::Fingerprints(id, g, n) => (id, g, n, 3),
            MetaKey::IndexBlock(id, n) => (id, 0, n, 4),
        };
        let (hi, lo) = id.as_u64_pair();
        hi ^ lo ^ (g << 40) ^ (u64::from(n) << 2) ^ kind
    }
}

/// A cached piece of metadata.
#[derive(Debug, Clone)]
pub(crate) enum Meta {
    Entries(Arc<[u64]>),
    Table(Arc<[FrameEntry]>),
    Fingerprints(Arc<[Fingerprint]>),
    IndexRows(Arc<[[u8; index::ENTRY_LEN]]>),
}

impl Weigh for Meta {
    fn weight(&self) -> usize {
        match self {
            Meta::Entries(e) => std::mem::size_of_val(&**e),
            Meta::Table(t) => std::mem::size_of_val(&**t),
            Meta::Fingerprints(f) => std::mem::size_of_val(&**f),
            Meta::IndexRows(r) => std::mem::size_of_val(&**r),
        }
    }
}

/// Map pages, frame tables and fingerprints, bounded in bytes.
pub(crate) type MetaCache = Cache<MetaKey, Meta>;

/// One map page of `map` (named `key`, disk restore point `drp`), from the cache or read.
pub(crate) fn map_page(
    cache: &MetaCache,
    (drp, key): (Uuid, &str),
    map: &PageMap,
    obj: &dyn Object,
    page: u32,
) -> Result<Arc<[u64]>, crate::store::pack::PackError> {
    let ck = MetaKey::MapPage(drp, page);
    if let Some(Meta::Entries(e)) = cache.get(&ck) {
        return Ok(e);
    }
    let entries: Arc<[u64]> = map.read_page(key, obj, page)?.into();
    cache.insert(ck, Meta::Entries(entries.clone()));
    Ok(entries)
}

/// Numbers every pack opening in this process, so cached tables and frames of a pack that a
/// repack replaced (same id, other offsets) are never mixed with the new file.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// An open frame pack: its object and validated directory.
#[derive(Debug)]
pub(crate) struct FramePackHandle {
    pub key: String,
    pub object: Arc<dyn Object>,
    pub pack: FramePack,
    /// Distinguishes this opening's cache entries from another opening's of the same pack.
    pub generation: u64,
}

impl FramePackHandle {
    /// Opens pack `pack` (no sharing).
    pub(crate) fn open(
        storage: &dyn Storage,
        frame_size: u32,
        pack: Uuid,
    ) -> Result<FramePackHandle, OpenError> {
        let key = layout::shared_pack(pack);
        let object = storage.open(&key).map_err(|source| OpenError::Io {
            context: format!("opening {key}"),
            source,
        })?;
        let fp = FramePack::open(&key, &*object, pack, frame_size).map_err(|e| match e {
            PackError::Io(source) => OpenError::Io {
                context: format!("reading {key}"),
                source,
            },
            PackError::Corrupt(c) => OpenError::Corrupt(c),
        })?;
        Ok(FramePackHandle {
            key,
            object,
            pack: fp,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The frame cache's key for `frame` of this opening.
    pub(crate) fn frame_key(&self, frame: u32) -> BlockKey {
        BlockKey {
            pack: self.pack.pack,
            block: (self.generation << 32) | u64::from(frame),
        }
    }

    /// The table entry of `frame`, or `None` when the pack has no such frame.
    pub(crate) fn frame(
        &self,
        cache: &MetaCache,
        frame: u32,
    ) -> Result<Option<FrameEntry>, PackError> {
        if frame >= self.pack.frame_count() {
            return Ok(None);
        }
        let (chunk, at) = frames::table_position(frame);
        let ck = MetaKey::Table(self.pack.pack, self.generation, chunk);
        let table = match cache.get(&ck) {
            Some(Meta::Table(t)) => t,
            _ => {
                let t: Arc<[FrameEntry]> = self
                    .pack
                    .table_chunk(&self.key, &*self.object, chunk)?
                    .into();
                cache.insert(ck, Meta::Table(t.clone()));
                t
            }
        };
        Ok(table.get(at).copied())
    }

    /// The fingerprint of page `index` of the fingerprint section, or `None` past its end.
    pub(crate) fn fingerprint(
        &self,
        cache: &MetaCache,
        index: u32,
    ) -> Result<Option<Fingerprint>, PackError> {
        if index >= self.pack.page_count() {
            return Ok(None);
        }
        let (chunk, at) = frames::fingerprint_position(index);
        let ck = MetaKey::Fingerprints(self.pack.pack, self.generation, chunk);
        let fps = match cache.get(&ck) {
            Some(Meta::Fingerprints(f)) => f,
            _ => {
                let f: Arc<[Fingerprint]> = self
                    .pack
                    .fingerprint_chunk(&self.key, &*self.object, chunk)?
                    .into();
                cache.insert(ck, Meta::Fingerprints(f.clone()));
                f
            }
        };
        Ok(fps.get(at).copied())
    }
}

/// Open frame packs by id, held weakly: a pack no reader holds is closed.
#[derive(Debug, Default)]
pub(crate) struct FramePackRegistry {
    open: Mutex<HashMap<Uuid, Weak<FramePackHandle>>>,
}

impl FramePackRegistry {
    /// Forgets a pack (after it was replaced or removed) so the next user reopens it.
    pub(crate) fn forget(&self, pack: Uuid) {
        self.open.lock().remove(&pack);
    }

    /// Opens pack `pack`, sharing a live handle when there is one.
    pub(crate) fn open(
        &self,
        storage: &dyn Storage,
        frame_size: u32,
        pack: Uuid,
    ) -> Result<Arc<FramePackHandle>, OpenError> {
        if let Some(h) = self.open.lock().get(&pack).and_then(Weak::upgrade) {
            return Ok(h);
        }
        let handle = Arc::new(FramePackHandle::open(storage, frame_size, pack)?);
        let mut open = self.open.lock();
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(pack, Arc::downgrade(&handle));
        Ok(handle)
    }
}
