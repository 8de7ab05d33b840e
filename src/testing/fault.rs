//! Fault injection for the storage layer, for tests: [`FaultyStorage`] wraps any [`Storage`]
//! and fails chosen operations the way a full disk, an exceeded quota or a failing device does.
//!
//! Every call is one operation, and so is every write to, hint on and commit of an object being
//! written and every read of an opened object, so "the Nth operation" walks through a whole
//! create or delete one step at a time.
//!
//! A failure comes [`When::Before`] the call reaches the inner storage (nothing happens, as when
//! a write or rename fails), or [`When::After`] it did its work (as when an fsync fails after
//! the data or a rename reached the disk, or an unlink reports an error it survived): the caller
//! gets the error either way and must not trust the call. A refused commit drops its writer,
//! which discards the object.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::store::private::Tightened;
use crate::store::storage::{LockGuard, Object, ObjectWriter, Space, Storage};

/// The error an injected failure returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// ENOSPC: the medium is full.
    NoSpace,
    /// EIO: the device failed.
    Io,
    /// EDQUOT: the user's quota is exhausted.
    Quota,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::NoSpace, Fault::Io, Fault::Quota];

    fn errno(self) -> i32 {
        match self {
            Fault::NoSpace => libc::ENOSPC,
            Fault::Io => libc::EIO,
            Fault::Quota => libc::EDQUOT,
        }
    }
}

/// Whether a failure happens once or keeps happening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Only the chosen operation fails.
    Once,
    /// The chosen operation and every later one fail.
    FromThenOn,
}

/// Whether a failing call did its work first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The call fails without doing anything.
    Before,
    /// The call does its work, then reports the failure.
    After,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    at: u64,
    fault: Fault,
    persistence: Persistence,
    when: When,
}

#[derive(Debug, Default)]
struct State {
    ops: AtomicU64,
    injected: AtomicU64,
    plan: Mutex<Option<Plan>>,
}

impl State {
    /// Counts one operation and runs it, failing it as planned.
    fn run<T>(&self, call: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        let plan = *self.plan.lock();
        match plan {
            Some(p) if n == p.at || (p.persistence == Persistence::FromThenOn && n > p.at) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                if p.when == When::After {
                    let _ = call();
                }
                Err(io::Error::from_raw_os_error(p.fault.errno()))
            }
            _ => call(),
        }
    }
}

/// A [`Storage`] that fails the operations it is told to; see the module documentation.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    state: Arc<State>,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>) -> FaultyStorage {
        FaultyStorage {
            inner,
            state: Arc::default(),
        }
    }

    /// Operations counted so far.
    pub fn operations(&self) -> u64 {
        self.state.ops.load(Ordering::SeqCst)
    }

    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Fails the operation `after` operations from now (0: the next one), and with
    /// [`Persistence::FromThenOn`] every one after it.
    pub fn fail_after(&self, after: u64, fault: Fault, persistence: Persistence) {
        self.fail_after_when(after, fault, persistence, When::Before);
    }

    /// Like [`FaultyStorage::fail_after`], choosing whether the failing calls do their work.
    pub fn fail_after_when(&self, after: u64, fault: Fault, persistence: Persistence, when: When) {
        *self.state.plan.lock() = Some(Plan {
            at: self.operations() + after,
            fault,
            persistence,
            when,
        });
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        *self.state.plan.lock() = None;
    }
}

#[derive(Debug)]
struct FaultyObject {
    inner: Arc<dyn Object>,
    state: Arc<State>,
}

impl Object for FaultyObject {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.state.run(|| self.inner.read_exact_at(buf, offset))
    }
}

struct FaultyWriter {
    inner: Box<dyn ObjectWriter>,
    state: Arc<State>,
}

impl Write for FaultyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.state.run(|| self.inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.state.run(|| self.inner.flush())
    }
}

impl ObjectWriter for FaultyWriter {
    fn commit(self: Box<Self>) -> io::Result<u64> {
        let FaultyWriter { inner, state } = *self;
        state.run(|| inner.commit())
    }

    fn start_writeback(&mut self) -> io::Result<()> {
        self.state.run(|| self.inner.start_writeback())
    }
}

impl Storage for FaultyStorage {
    fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        self.state.run(|| self.inner.read(key))
    }

    fn open(&self, key: &str) -> io::Result<Arc<dyn Object>> {
        let inner = self.state.run(|| self.inner.open(key))?;
        Ok(Arc::new(FaultyObject {
            inner,
            state: self.state.clone(),
        }))
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.state.run(|| self.inner.put(key, data))
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let inner = self.state.run(|| self.inner.create(key))?;
        Ok(Box::new(FaultyWriter {
            inner,
            state: self.state.clone(),
        }))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.state.run(|| self.inner.list(dir))
    }

    fn remove(&self, key: &str) -> io::Result<()> {
        self.state.run(|| self.inner.remove(key))
    }

    fn remove_tree(&self, dir: &str) -> io::Result<()> {
        self.state.run(|| self.inner.remove_tree(dir))
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        self.state.run(|| self.inner.size(key))
    }

    fn try_lock(&self, name: &str) -> io::Result<Option<LockGuard>> {
        self.state.run(|| self.inner.try_lock(name))
    }

    fn lock(&self, name: &str) -> io::Result<LockGuard> {
        self.state.run(|| self.inner.lock(name))
    }

    fn try_lock_shared(&self, name: &str) -> io::Result<Option<LockGuard>> {
        self.state.run(|| self.inner.try_lock_shared(name))
    }

    fn space(&self) -> io::Result<Space> {
        self.state.run(|| self.inner.space())
    }

    fn make_private(&self) -> io::Result<Tightened> {
        self.state.run(|| self.inner.make_private())
    }

    fn put_reserved(&self, key: &str, len: u64) -> io::Result<()> {
        self.state.run(|| self.inner.put_reserved(key, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStorage;

    #[test]
    fn fails_exactly_the_chosen_operations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FaultyStorage::new(Arc::new(LocalStorage::new(dir.path())));
        s.put("a", b"1").expect("no fault planned");
        s.fail_after(1, Fault::NoSpace, Persistence::Once);
        s.read("a").expect("operation 0 from now succeeds");
        let e = s.put("b", b"2").expect_err("operation 1 fails");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(
            s.read("b")
                .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        );
        s.put("b", b"2").expect("once: later operations succeed");

        s.fail_after(0, Fault::Quota, Persistence::FromThenOn);
        for _ in 0..3 {
            let e = s.read("a").expect_err("from then on");
            assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
        }
        s.heal();
        assert_eq!(s.read("a").expect("healed"), b"1");
        assert_eq!(s.injected(), 4);
    }

    #[test]
    fn a_refused_commit_publishes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FaultyStorage::new(Arc::new(LocalStorage::new(dir.path())));
        let mut w = s.create("obj").expect("create");
        w.write_all(b"data").expect("write");
        s.fail_after(0, Fault::Io, Persistence::Once);
        let e = w.commit().expect_err("commit fails");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(
            s.read("obj")
                .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        );
        assert!(s.list("").expect("list").is_empty(), "no temporary left");
    }
}
