//! The sorted entry streams a segment is written from: [`sort_run`] for a creation's new pages
//! held in memory, [`merge`] for compaction's segments.
//!
//! Invariants: the output's ids strictly increase when each input's ids do (a merge of sorted
//! inputs is sorted; of equal ids one is kept); among equal ids the first wins: the first of a
//! run, the earliest input of a merge; `keep` is applied before that choice, so a dropped entry
//! never hides a kept one; the first error from an input is passed on and ends the stream.
//! Memory: one entry per input.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::store::page::PageId;

use super::entry::IndexEntry;

/// Sorts an in-memory run by id and drops repeated ids, keeping the first of each (for a
/// creation's new pages).
pub fn sort_run(entries: &mut Vec<IndexEntry>) {
    // Stable, so the first of equal ids stays first; `dedup_by` keeps the first of a run.
    entries.sort_by_key(|e| e.id);
    entries.dedup_by(|later, first| later.id == first.id);
}

/// K-way merge of sorted entry streams (ids unique within each, as [`Segment::iter`] and
/// [`sort_run`] give them; an unsorted input makes an unsorted output, which
/// [`SegmentWriter::push`] refuses) into one sorted stream with unique ids. `keep` drops entries first (e.g. whose pack is gone), so a dropped entry does
/// not hide another input's entry for the same id; of the kept entries for one id, the one from
/// the earliest input wins. The first error from an input is passed on and ends the stream.
pub fn merge<E, I>(
    inputs: Vec<I>,
    keep: impl FnMut(&IndexEntry) -> bool,
) -> impl Iterator<Item = Result<IndexEntry, E>>
where
    I: Iterator<Item = Result<IndexEntry, E>>,
{
    Merge {
        heads: (0..inputs.len()).map(|_| None).collect(),
        inputs,
        heap: BinaryHeap::new(),
        keep,
        started: false,
        done: false,
    }
}

struct Merge<I, K> {
    inputs: Vec<I>,
    /// The next kept entry of each input, if any.
    heads: Vec<Option<IndexEntry>>,
    /// (id, input) of every head, smallest first: among equal ids, the earliest input first.
    heap: BinaryHeap<Reverse<(PageId, usize)>>,
    keep: K,
    started: bool,
    done: bool,
}

impl<E, I, K> Merge<I, K>
where
    I: Iterator<Item = Result<IndexEntry, E>>,
    K: FnMut(&IndexEntry) -> bool,
{
    /// Moves input `i` to its next kept entry.
    fn advance(&mut self, i: usize) -> Result<(), E> {
        for e in self.inputs[i].by_ref() {
            let e = e?;
            if (self.keep)(&e) {
                self.heap.push(Reverse((e.id, i)));
                self.heads[i] = Some(e);
                return Ok(());
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<IndexEntry>, E> {
        if !self.started {
            self.started = true;
            for i in 0..self.inputs.len() {
                self.advance(i)?;
            }
        }
        let Some(Reverse((id, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let winner = self.heads[i].take();
        self.advance(i)?;
        while let Some(Reverse((next, j))) = self.heap.peek().copied()
            && next == id
        {
            self.heap.pop();
            self.heads[j] = None;
            self.advance(j)?;
        }
        Ok(winner)
    }
}

impl<E, I, K> Iterator for Merge<I, K>
where
    I: Iterator<Item = Result<IndexEntry, E>>,
    K: FnMut(&IndexEntry) -> bool,
{
    type Item = Result<IndexEntry, E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
