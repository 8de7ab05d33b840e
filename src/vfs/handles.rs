//! Open files and directories: what each handle reads from.
//!
//! Invariants: a handle's content is fixed when it is opened (a disk image's packs are held
//! open, a directory's listing is taken), so it reads the same whatever happens to the store
//! meanwhile; the table's lock is held only to insert, look up or remove.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::errno::FsError;
use super::media::GuestFs;
use super::node::DirEntry;
use crate::engine::DiskImage;
use crate::inspect::Window;

/// What an open handle reads.
#[derive(Clone)]
pub enum Handle {
    /// A disk image, or the window of it a partition covers.
    Image(Window<DiskImage>),
    Bytes(Arc<Vec<u8>>),
    /// A file inside a guest filesystem, by its guest inode number.
    Guest(GuestFs, u64),
    /// A directory listing, taken at `opendir`, so offsets stay valid while the directory
    /// changes.
    Dir(Arc<Vec<DirEntry>>),
}

/// Open handles by number.
pub struct Handles {
    open: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl Handles {
    /// Keeps `handle` open; returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().insert(fh, handle);
        fh
    }

    /// The handle `fh` (shared: its content is reference-counted).
    pub fn get(&self, fh: u64) -> Result<Handle, FsError> {
        self.open
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    /// Closes `fh`. What it held is dropped outside the lock: the last handle of an image
    /// frees its map and packs.
    pub fn remove(&self, fh: u64) {
        let handle = self.open.lock().remove(&fh);
        drop(handle);
    }
}
