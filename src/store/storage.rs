//! The storage interface: every byte of the store is read and written through [`Storage`], so a
//! fault-injecting or remote implementation can stand in for the local directory.
//!
//! Invariants every implementation keeps:
//! - Keys are relative, `/`-separated paths checked by [`check_key`]: no empty, `.` or `..`
//!   components, no leading `/`. Nothing outside the store root is ever touched.
//! - [`Storage::put`] and [`ObjectWriter::commit`] publish atomically and durably: a reader sees
//!   the old object or the new one, never a mix, and once the call returns the new object survives
//!   a crash. Until then it does not exist under its key.
//! - An object dropped without `commit` leaves nothing under its key (a temporary file may remain
//!   after a crash; its name ends in [`TEMP_SUFFIX`](super::layout::TEMP_SUFFIX) and recovery
//!   removes it).
//! - [`Storage::remove`] is durable on return.
//! - Published objects are never modified in place; they are only replaced whole or removed.
//! - Locks are advisory, exclusive or shared, and released by the OS when the holder dies.
//! - A store is private to its owner: [`Storage::make_private`] refuses a store someone else
//!   owns and narrows one others could read (`super::private`).

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use super::private::Tightened;

/// Alignment of buffers, offsets and lengths for direct (O_DIRECT) I/O.
pub const DIRECT_ALIGN: usize = 4096;

/// A buffer whose start is aligned for direct I/O, made safely by over-allocating.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        // For a byte pointer `align_offset` always succeeds, within the DIRECT_ALIGN spare bytes.
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, start, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A published object opened for random-access reads.
pub trait Object: Send + Sync + fmt::Debug {
    /// Length in bytes, fixed for the lifetime of the handle.
    fn len(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`; a short object is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// True when the object holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A streaming writer for one new object. Dropping it without [`ObjectWriter::commit`]
/// discards what was written.
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and publishes it under its key, replacing any previous object.
    /// Returns the object's length.
    fn commit(self: Box<Self>) -> io::Result<u64>;
    /// Hints that what was written so far will not be read back soon and should start on its
    /// way to stable storage, so the final commit has less to wait for. May do nothing.
    fn start_writeback(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An exclusive lock; released when dropped (or when the process dies).
pub struct LockGuard {
    file: File,
}

impl LockGuard {
    /// A guard for the lock `file` holds.
    pub fn new(file: File) -> LockGuard {
        LockGuard { file }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Unlock explicitly rather than by closing: a child forked by another thread holds a
        // copy of the descriptor until it execs, and closing ours would leave the lock held
        // until then. Unlocking releases it for every copy. Failure leaves the close to do it.
        let _ = self.file.unlock();
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

/// Capacity figures of the medium holding the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The small set of operations the store needs from whatever holds its bytes.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Reads a whole (small) object.
    fn read(&self, key: &str) -> io::Result<Vec<u8>>;
    /// Opens an object for random-access reads.
    fn open(&self, key: &str) -> io::Result<Arc<dyn Object>>;
    /// Publishes `data` under `key` atomically and durably.
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()>;
    /// Starts a new object under `key`; see [`ObjectWriter`].
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>>;
    /// Names directly under `dir` (objects and sub-directories), sorted; empty when `dir` is absent.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Removes one object durably. A missing object is `NotFound`.
    fn remove(&self, key: &str) -> io::Result<()>;
    /// Removes `dir` and everything below it. A missing directory is not an error.
    fn remove_tree(&self, dir: &str) -> io::Result<()>;
    /// Size of an object in bytes.
    fn size(&self, key: &str) -> io::Result<u64>;
    /// Takes the named exclusive lock if it is free, else returns `None` at once.
    fn try_lock(&self, name: &str) -> io::Result<Option<LockGuard>>;
    /// Takes the named exclusive lock, waiting for it.
    fn lock(&self, name: &str) -> io::Result<LockGuard>;
    /// Takes the named lock shared (any number of shared holders, no exclusive one) if no
    /// exclusive holder has it, else returns `None` at once.
    fn try_lock_shared(&self, name: &str) -> io::Result<Option<LockGuard>>;
    /// Capacity of the medium.
    fn space(&self) -> io::Result<Space>;
    /// Refuses a store another user owns, and makes one that others can read private to its
    /// owner; says what it changed. A store with nothing to tighten (not a local directory, or
    /// private already) is left as it is.
    fn make_private(&self) -> io::Result<Tightened> {
        Ok(Tightened::default())
    }
    /// Publishes under `key`, atomically and durably, an object of `len` bytes whose only
    /// purpose is to hold space on the medium (its content is unspecified): space that removing
    /// it gives back at once, without writing anything.
    fn put_reserved(&self, key: &str, len: u64) -> io::Result<()> {
        put_filler(self, key, len)
    }
}

/// Publishes under `key` an object of `len` bytes of [`filler`], written in 1 MiB pieces: the
/// portable way to hold space (`Storage::put_reserved`).
pub fn put_filler<S: Storage + ?Sized>(storage: &S, key: &str, len: u64) -> io::Result<()> {
    let mut w = storage.create(key)?;
    let chunk = filler(1 << 20);
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    w.commit().map(|_| ())
}

/// `len` bytes that no filesystem compresses or deduplicates away within one chunk (xxh3 of
/// each word's index), for objects that must really occupy space.
pub fn filler(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Rejects keys that could escape the store root or alias another key.
pub fn check_key(key: &str) -> io::Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'));
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid storage key {key:?}"),
        ));
    }
    Ok(())
}

/// Removes `key` durably; an object already gone is not an error (cleanup is idempotent).
pub fn remove_if_present(storage: &dyn Storage, key: &str) -> io::Result<()> {
    match storage.remove(key) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["rpfs.store", "vms/x/vm.json", "a.b/c-d_e"] {
            assert!(check_key(good).is_ok(), "{good:?} refused");
        }
    }
}
