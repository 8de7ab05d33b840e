//! Format 2: disks mapped page by page onto frames in store-wide packs, so identical pages of
//! any point, disk or VM are stored once.
//!
//! - `meta`: the bounded metadata cache (map pages, frame tables, fingerprints) and the
//!   registry of open frame packs;
//! - `read`: resolving a block of a point through its page map.
//!
//! Invariants shared by the modules here: a frame pack, a page map and an index segment are
//! immutable once published (a repack republishes a pack with the same frame indices and the
//! same bytes for every page still referenced); `(pack, frame, slot)` names the same bytes for
//! the store's lifetime.

pub(crate) mod check;
pub(crate) mod gc;
pub(crate) mod index;
pub(crate) mod ingest;
pub(crate) mod meta;
pub(crate) mod read;

use super::shared::Shared;

/// After a creation ended (its creation lock released): pays a sweep owed meanwhile, and
/// compacts the index if it has grown. Best effort; what is left is paid later.
pub(crate) fn after_creation(shared: &Shared) {
    if gc::owed(shared)
        && let Err(e) = gc::sweep(shared)
    {
        tracing::warn!("sweep postponed: {e}");
    }
    index::compact(shared);
}
