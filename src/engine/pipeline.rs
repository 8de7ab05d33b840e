//! The ingest pipeline shared by both formats: worker threads each take the next batch number
//! and turn it into a result (read, hash, compress), using buffers from a fixed pool; the
//! calling thread consumes the results strictly in batch order and hands the buffers back.
//!
//! Invariants: memory is bounded by the pool (workers wait for a free buffer before taking a
//! batch number, so whoever holds the batch the consumer waits for always has buffers); the first
//! error from a worker or the consumer ends the run and every worker with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::Result;

/// A batch result knows its batch number.
pub(crate) trait Numbered {
    fn number(&self) -> u64;
}

/// Runs `make` for batches `0..batches` on `workers` threads, each with a buffer from `pool`,
/// and `consume` on the results in order; `consume` returns the buffer to reuse.
pub(crate) fn run<B, T>(
    workers: usize,
    pool: Vec<B>,
    batches: u64,
    make: impl Fn(u64, B) -> Result<T> + Sync,
    mut consume: impl FnMut(T) -> Result<B>,
) -> Result<()>
where
    B: Send,
    T: Send + Numbered,
{
    let (tx, rx) = crossbeam_channel::bounded::<Result<T>>(pool.len());
    let (free_tx, free_rx) = crossbeam_channel::bounded::<B>(pool.len());
    for b in pool {
        let _ = free_tx.send(b);
    }
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| -> Result<()> {
        // Owned here, so they are dropped when this closure returns, even early with an error:
        // workers waiting on them then wake up and end, and the scope can join them.
        let (tx, rx, free_tx, free_rx) = (tx, rx, free_tx, free_rx);
        for _ in 0..workers {
            let (tx, free_rx, next, make) = (tx.clone(), free_rx.clone(), &next, &make);
            scope.spawn(move || {
                // Take buffers before a batch number (see the module doc).
                while let Ok(bufs) = free_rx.recv() {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= batches {
                        return;
                    }
                    let batch = make(index, bufs);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop((tx, free_rx));
        // Batches arrive in any order; they are consumed in order.
        let mut waiting: BTreeMap<u64, T> = BTreeMap::new();
        let mut expected = 0;
        for msg in rx.iter() {
            let batch = msg?;
            waiting.insert(batch.number(), batch);
            while let Some(batch) = waiting.remove(&expected) {
                expected += 1;
                let bufs = consume(batch)?;
                // The workers may all have finished.
                let _ = free_tx.send(bufs);
            }
        }
        Ok(())
    })
}
