//! The store's reserve: a file of [`RESERVE_BYTES`] at the store's root (`reserve`) that holds
//! space back so that deleting works on a full store. A deletion writes before it frees
//! (the operation marker, records), so on a full medium the one way out would need the space it
//! is meant to free; borg keeps free space in reserve for the same reason.
//!
//! Invariants:
//! - Only deletions spend the reserve ([`with_reserve`]): a deletion that fails for lack of
//!   space (ENOSPC, EDQUOT) releases the reserve and runs once more. A creation never spends
//!   it.
//! - The reserve is made again ([`ensure`]) when a store is opened and after each deletion, only
//!   if at least twice its size is free, so remaking it never fills the medium itself. Failing
//!   to make it (a read-only store) is not an error: it is logged and tried again later.
//! - Its content means nothing; its name is not one of an object, so no check or repair
//!   counts it.

use super::error::{Error, Result};
use super::shared::Shared;
use crate::store::layout;

/// Size of the reserve: far more than a deletion writes before it frees (a marker and a few
/// records, each a block or two).
pub const RESERVE_BYTES: u64 = 8 << 20;

/// Below this much free space (or 1% of the medium, if more), `check` warns: a deletion then
/// cannot repack shared packs (a repack keeps 64 MiB free beyond what it writes), so it frees
/// only what no remaining point uses, and a new point may not fit.
pub const LOW_SPACE_BYTES: u64 = 64 << 20;

/// A warning when the store's medium is low on space (see [`LOW_SPACE_BYTES`]), else `None`.
pub(crate) fn low_space(shared: &Shared) -> Option<String> {
    let space = shared.storage.space().ok()?;
    let threshold = LOW_SPACE_BYTES.max(space.total_bytes / 100);
    if space.free_bytes >= threshold {
        return None;
    }
    let mib = |b: u64| b >> 20;
    let reserve = if present(shared) {
        format!("its {} MiB reserve lets deletions run", mib(RESERVE_BYTES))
    } else {
        "its reserve for deletions is spent (remade once there is room)".to_string()
    };
    Some(format!(
        "the store's filesystem is low on space: {} MiB free of {} MiB (under {} MiB); deletions \
         cannot repack shared packs and new points may not fit; {reserve}; delete restore \
         points or add space",
        mib(space.free_bytes),
        mib(space.total_bytes),
        mib(threshold)
    ))
}

/// Whether the reserve is there.
pub(crate) fn present(shared: &Shared) -> bool {
    shared.storage.size(layout::RESERVE).is_ok()
}

/// Makes the reserve if it is missing and at least twice its size is free.
pub(crate) fn ensure(shared: &Shared) {
    if present(shared) {
        return;
    }
    let free = match shared.storage.space() {
        Ok(s) => s.free_bytes,
        Err(e) => {
            tracing::debug!("not making the store's reserve: free space unknown: {e}");
            return;
        }
    };
    if free < 2 * RESERVE_BYTES {
        tracing::debug!("not making the store's reserve: only {free} bytes free");
        return;
    }
    if let Err(e) = shared.storage.put_reserved(layout::RESERVE, RESERVE_BYTES) {
        tracing::debug!("making the store's reserve failed (tried again later): {e}");
    }
}

/// True when `e` says the medium is full (or the owner's quota reached).
fn out_of_space(e: &Error) -> bool {
    let Error::Io { source, .. } = e else {
        return false;
    };
    matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Runs the deletion `delete`; if it fails for lack of space, releases the reserve and runs it
/// once more. Then makes the reserve again if there is room. `delete` must be safe to run again
/// after it failed: a point deletion reports only failures from before its commit (changing
/// nothing), and a collection deletion goes on with the points still there.
pub(crate) fn with_reserve<T>(shared: &Shared, mut delete: impl FnMut() -> Result<T>) -> Result<T> {
    let result = match delete() {
        Err(e) if out_of_space(&e) && present(shared) => {
            match shared.storage.remove(layout::RESERVE) {
                Ok(()) => {
                    tracing::warn!("the store is full: released its reserve for a deletion ({e})");
                    delete()
                }
                Err(release) => {
                    tracing::warn!("releasing the store's reserve failed: {release}");
                    Err(e)
                }
            }
        }
        other => other,
    };
    ensure(shared);
    result
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::Engine;
    use crate::store::LocalStorage;

    #[test]
    fn a_deletion_out_of_space_spends_the_reserve_once_and_it_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::init(Arc::new(LocalStorage::new(dir.path())), 4096).expect("init");
        let shared = &engine.shared;
        assert!(present(shared), "init made no reserve");
        let full = || Error::io("writing x")(std::io::Error::from_raw_os_error(libc::ENOSPC));

        let mut calls = 0;
        let out = with_reserve(shared, || {
            calls += 1;
            // Where the first run found no room, the second finds the reserve's.
            if present(shared) {
                Err(full())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(out.expect("second run"), 2);
        assert!(present(shared), "the reserve was not made again");

        // Never more than one retry, and other failures are not retried.
        let mut calls = 0;
        assert!(
            with_reserve(shared, || -> Result<()> {
                calls += 1;
                Err(full())
            })
            .is_err()
        );
        assert_eq!(calls, 2);
        let mut calls = 0;
        assert!(
            with_reserve(shared, || -> Result<()> {
                calls += 1;
                Err(Error::io("reading x")(std::io::Error::from_raw_os_error(
                    libc::EIO,
                )))
            })
            .is_err()
        );
        assert_eq!(calls, 1);
    }
}
