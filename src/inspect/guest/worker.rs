//! The thread a filesystem parser lives on.
//!
//! Invariants:
//! - The parser is made on, and never leaves, its thread (`ext4-view` is not thread-safe), so
//!   requests reach it as jobs over a channel, one at a time.
//! - A parser that fails to load, or panics, marks the filesystem broken: that request and every
//!   later one get the same error, and nothing else in the daemon is touched.
//! - An idle thread ends after [`IDLE`], and at once when its worker is dropped; the next request
//!   starts a new one. The slot holding the sender is locked for every send and for the decision
//!   to end, so no job is ever lost.
//! - A request that takes longer than the worker's patience marks the filesystem broken and
//!   cancels the parser: the parser reads only through the worker's [`Source`], and every read
//!   after the cancellation unwinds out of it, so a parser looping on damaged metadata (which
//!   keeps reading it) ends, and its thread with it, rather than spinning for the daemon's
//!   lifetime. (A parser looping without ever reading could not be stopped this way; none of
//!   ours walks metadata it has not read.)

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::backend::{Backend, GuestError, Source};

/// How long an unused parser thread waits before it ends.
const IDLE: Duration = Duration::from_secs(60);
/// Longest a request may take: a parser looping on damaged metadata is given up on, and its
/// filesystem reads as damaged from then on.
const PATIENCE: Duration = Duration::from_secs(60);

/// A request for the parser; returns true when the parser panicked on it.
type Job = Box<dyn FnOnce(&mut dyn Backend) -> bool + Send>;
const PANICKED: &str = "the parser panicked on damaged data";

type Open = dyn Fn(Arc<dyn Source>) -> Result<Box<dyn Backend>, GuestError> + Send + Sync;

/// What a cancelled parser's reads unwind with.
struct Cancelled;

/// The worker's source as its parser sees it: every read after a cancellation unwinds.
struct Cancellable {
    inner: Arc<dyn Source>,
    cancelled: Arc<AtomicBool>,
}

impl Source for Cancellable {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            // Unwinds to the job's catch_unwind without running the panic hook (no message:
            // the caller was already told the parser gave no answer).
            resume_unwind(Box::new(Cancelled));
        }
        self.inner.read_exact_at(offset, buf)
    }
}

struct Shared {
    open: Box<Open>,
    /// What the parser reads.
    source: Arc<dyn Source>,
    /// Set when the parser is given up on: its reads unwind from then on.
    cancelled: Arc<AtomicBool>,
    patience: Duration,
    /// The running thread's inbox, if one runs.
    inbox: Mutex<Option<Sender<Job>>>,
    /// Why this filesystem cannot be read, once known.
    broken: Mutex<Option<GuestError>>,
}

/// Runs jobs against one parser on its own thread.
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker whose parser `open` makes from `source` (on the worker's thread, at first use).
    pub fn new(
        source: Arc<dyn Source>,
        open: impl Fn(Arc<dyn Source>) -> Result<Box<dyn Backend>, GuestError> + Send + Sync + 'static,
    ) -> Worker {
        Self::with_patience(source, PATIENCE, open)
    }

    /// Like [`Worker::new`], giving up on a request after `patience`.
    pub fn with_patience(
        source: Arc<dyn Source>,
        patience: Duration,
        open: impl Fn(Arc<dyn Source>) -> Result<Box<dyn Backend>, GuestError> + Send + Sync + 'static,
    ) -> Worker {
        let cancelled = Arc::new(AtomicBool::new(false));
        let source = Arc::new(Cancellable {
            inner: source,
            cancelled: cancelled.clone(),
        });
        Worker {
            shared: Arc::new(Shared {
                open: Box::new(open),
                source,
                cancelled,
                patience,
                inbox: Mutex::new(None),
                broken: Mutex::new(None),
            }),
        }
    }

    /// Runs `f` against the parser and returns its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Backend) -> Result<R, GuestError> + Send + 'static,
    ) -> Result<R, GuestError> {
        if let Some(e) = self.shared.broken.lock().clone() {
            return Err(e);
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |backend| {
            // A panic is answered like any failure, before the thread marks the filesystem.
            let (result, panicked) = match catch_unwind(AssertUnwindSafe(|| f(backend))) {
                Ok(r) => (r, false),
                Err(_) => (Err(GuestError::Damaged(PANICKED.into())), true),
            };
            // The caller may have given up waiting; then nobody needs the answer.
            let _ = reply.send(result);
            panicked
        });
        {
            let mut inbox = self.shared.inbox.lock();
            let tx = match inbox.as_ref() {
                Some(tx) => tx.clone(),
                None => {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    let shared = self.shared.clone();
                    thread::Builder::new()
                        .name("rpfs-guest".into())
                        .spawn(move || serve(&shared, &rx))
                        .map_err(|e| GuestError::Damaged(format!("starting a reader: {e}")))?;
                    *inbox = Some(tx.clone());
                    tx
                }
            };
            // The thread drops its receiver only after clearing the slot under this lock.
            tx.send(job)
                .map_err(|_| GuestError::Damaged("the reader thread is gone".into()))?;
        }
        match answer.recv_timeout(self.shared.patience) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let e = GuestError::Damaged(format!(
                    "the parser gave no answer in {} s (looping on damaged metadata?)",
                    self.shared.patience.as_secs_f64()
                ));
                *self.shared.broken.lock() = Some(e.clone());
                self.shared.cancelled.store(true, Ordering::Relaxed);
                Err(e)
            }
            // The job was dropped unrun: the parser failed to load or panicked.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(self
                .shared
                .broken
                .lock()
                .clone()
                .unwrap_or_else(|| GuestError::Damaged("the reader stopped".into()))),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Dropping the last sender ends the thread once it has answered what it holds.
        *self.shared.inbox.lock() = None;
    }
}

/// The thread's body: load the parser, then run jobs until idle or broken.
fn serve(shared: &Shared, rx: &Receiver<Job>) {
    // The first reason stands: a parser cancelled after a timeout unwinds like a panic, but
    // the timeout is why it was stopped.
    let stop = |why: GuestError| {
        shared.broken.lock().get_or_insert(why);
        *shared.inbox.lock() = None;
    };
    let mut backend = match catch_unwind(AssertUnwindSafe(|| (shared.open)(shared.source.clone())))
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return stop(e),
        Err(_) => {
            return stop(GuestError::Damaged(
                "the parser panicked while loading".into(),
            ));
        }
    };
    loop {
        let job = match rx.recv_timeout(IDLE) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                let mut inbox = shared.inbox.lock();
                if rx.is_empty() {
                    *inbox = None;
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if job(backend.as_mut()) {
            return stop(GuestError::Damaged(PANICKED.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::guest::{DirItem, GuestAttr};

    fn worker(open: impl Fn() -> Box<dyn Backend> + Send + Sync + 'static) -> Worker {
        Worker::new(Arc::new(Vec::new()), move |_| Ok(open()))
    }

    /// A parser that panics when asked to list `/boom`.
    struct Fragile;

    impl Backend for Fragile {
        fn root(&mut self) -> Result<GuestAttr, GuestError> {
            Err(GuestError::NotFound)
        }
        fn list(&mut self, path: &[u8], _: u64) -> Result<Vec<DirItem>, GuestError> {
            assert!(path != b"/boom", "damaged data");
            Ok(Vec::new())
        }
        fn read_link(&mut self, _: &[u8]) -> Result<Vec<u8>, GuestError> {
            Ok(b"target".to_vec())
        }
        fn read(&mut self, _: &[u8], _: u64, _: u64, _: &mut [u8]) -> Result<usize, GuestError> {
            Ok(0)
        }
    }

    #[test]
    fn a_panicking_parser_breaks_only_its_own_filesystem() {
        let fragile = worker(|| Box::new(Fragile));
        let healthy = worker(|| Box::new(Fragile));
        assert!(fragile.call(|b| b.list(b"/", 1)).is_ok());
        let err = fragile.call(|b| b.list(b"/boom", 2)).expect_err("panic");
        assert!(err.to_string().contains("panicked"), "{err}");
        // Every later request gets the same answer, at once.
        let again = fragile.call(|b| b.read_link(b"/x")).expect_err("broken");
        assert_eq!(again.to_string(), err.to_string());
        assert_eq!(
            healthy.call(|b| b.read_link(b"/x")).expect("healthy"),
            b"target"
        );
    }

    #[test]
    fn a_parser_that_fails_to_load_reports_why_every_time() {
        let w = Worker::new(Arc::new(Vec::new()), |_| {
            Err(GuestError::Damaged("bad superblock".into()))
        });
        for _ in 0..3 {
            let e = w.call(|b| b.list(b"/", 1)).expect_err("cannot load");
            assert_eq!(e.to_string(), "bad superblock");
        }
    }

    #[test]
    fn a_dropped_worker_ends_its_thread() {
        let w = worker(|| Box::new(Fragile));
        w.call(|b| b.read_link(b"/x")).expect("answer");
        let shared = Arc::downgrade(&w.shared);
        drop(w);
        // The thread holds the shared state until it ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while shared.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread did not end"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn requests_from_many_threads_all_get_answers() {
        let w = Arc::new(worker(|| Box::new(Fragile)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let w = w.clone();
                thread::spawn(move || (0..200).all(|_| w.call(|b| b.read_link(b"/x")).is_ok()))
            })
            .collect();
        for t in threads {
            assert!(t.join().expect("thread"));
        }
    }

    /// A parser that reads its source forever when asked to list anything; it says when it is
    /// dropped (its thread ended).
    struct Looping {
        source: Arc<dyn Source>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Looping {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl Backend for Looping {
        fn root(&mut self) -> Result<GuestAttr, GuestError> {
            Err(GuestError::NotFound)
        }
        fn list(&mut self, _: &[u8], _: u64) -> Result<Vec<DirItem>, GuestError> {
            let mut buf = [0u8; 8];
            loop {
                // Damaged metadata that points back at itself, forever.
                let _ = self.source.read_exact_at(0, &mut buf);
            }
        }
        fn read_link(&mut self, _: &[u8]) -> Result<Vec<u8>, GuestError> {
            Ok(Vec::new())
        }
        fn read(&mut self, _: &[u8], _: u64, _: u64, _: &mut [u8]) -> Result<usize, GuestError> {
            Ok(0)
        }
    }

    #[test]
    fn a_parser_given_up_on_ends_its_thread() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let w = Worker::with_patience(
            Arc::new(vec![0u8; 64]),
            Duration::from_millis(200),
            move |source| {
                let dropped = flag.clone();
                Ok(Box::new(Looping { source, dropped }) as Box<dyn Backend>)
            },
        );
        let err = w.call(|b| b.list(b"/", 1)).expect_err("no answer");
        assert!(err.to_string().contains("gave no answer"), "{err}");
        // The worker is still alive: only its cancelled parser must end.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the parser thread is still running"
            );
            thread::sleep(Duration::from_millis(5));
        }
        // Every later request gets the same answer at once.
        let again = w.call(|b| b.read_link(b"/x")).expect_err("broken");
        assert_eq!(again.to_string(), err.to_string());
    }
}
