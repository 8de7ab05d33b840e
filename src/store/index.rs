//! Dedup index segments: where the page with a given id is stored, for every page of the store,
//! as immutable sorted files `index/<segment>.idx` (an LSM without a memtable: a creation writes
//! its new pages as one segment, compaction merges segments into one).
//!
//! ```text
//! offset              size        field
//! 0                   64          header: magic "RPFSINDX", version u16, filter bytes per block
//!                                 u16 (F), reserved (48 zero bytes), crc32c of bytes 0..60
//! 64                  4032        zero padding, not read: entry blocks start 4 KiB-aligned
//! 4096 * (1 + b)      4096        entry block b: up to 102 entries of 40 bytes, sorted by id;
//!                                 unused entries and bytes 4080..4090 zero; entry count u16 at
//!                                 4090; crc32c of bytes 0..4092 at 4092
//!   entry             40          page id (32 bytes), ref u32 = pack slot << 4 | page slot,
//!                                 frame u32
//! packs_at            16 * P      pack list: the pack UUIDs entries name by pack slot, in order
//!                                 of first use
//! fences_at           8 * B       fences: the first 8 bytes of the first id of each block
//! filter_at           F * B       filter: one Bloom filter of F bytes per block (below)
//! len - 64            64          trailer: magic "RPFSIEND", entry count u64, block count u32 (B),
//!                                 pack count u32 (P), packs_at u64, fences_at u64, filter_at u64,
//!                                 crc32c of the pack list u32, of the fences u32, of the filter
//!                                 u32, crc32c of trailer bytes 0..60
//! ```
//!
//! All integers are little-endian. The magics are "RPFS" + "INDX"/"IEND", so a hexdump names the
//! file. Counts live in the trailer because a segment is written streaming, in one pass.
//!
//! Invariants, all checked by the reader:
//! - ids are strictly increasing through the whole segment (sorted, unique), so a block holds a
//!   contiguous id range; fences strictly increase too (the writer refuses 103 ids sharing their
//!   first 64 bits, which BLAKE3 ids never do), so a lookup reads at most two blocks;
//! - every block but the last holds exactly 102 entries, the last holds 1..=102, and
//!   B = ceil(entries / 102): entry `i` is in block `i / 102`;
//! - a block's first id starts with its fence, and its last id's 8 first bytes are at most the
//!   next block's fence;
//! - every pack slot names a listed pack, every page slot is below 16 (a frame has 16 pages),
//!   P ≤ 2^28 and P ≤ entries (the writer lists only packs it uses), and no pack is listed twice;
//! - the sections are contiguous, in the order above, and end where the trailer starts: the
//!   offsets in the trailer equal what the counts imply, and both fit the object's length.
//!
//! **The filter.** Each block has its own Bloom filter of F bytes (the writer uses F = 144, 11.3
//! bits per entry of a full block) with 8 bits per id. Ids are BLAKE3 hashes (keyed in encrypted
//! stores), so the bits come from the id itself: bytes 8..24, as eight u16, each scaled to
//! `F * 8` positions. Its false-positive rate, and why one Bloom filter per block: `filter`.
//!
//! A segment is written once and never modified. Per the design (§2.4), it is published only
//! after the point record whose pages it indexes, and compaction removes its inputs only after
//! publishing its output.
//!
//! The code, by concern (each child states the invariants it keeps):
//! - `entry`: the format's sizes and magics, [`IndexEntry`], [`SegmentInfo`], [`SegmentError`]
//!   and the fence of an id; a leaf the other children import;
//! - `filter`: the block filter, the bits an id sets in it;
//! - `writer`: [`SegmentWriter`] and [`write_segment`], which write a segment in one pass;
//! - `reader`: [`Segment`], which checks the invariants above when it opens a segment and
//!   reads its blocks;
//! - `merge`: [`sort_run`] and [`merge`], the sorted, unique entry streams the writer takes.
//!
//! This module only declares them and re-exports what the rest of the crate uses.

#![warn(clippy::arithmetic_side_effects)]

mod entry;
mod filter;
mod merge;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use entry::{
    BLOCK, BLOCK_ENTRIES, ENTRY_LEN, FENCE_LEN, HEADER_LEN, IndexEntry, MAX_PACKS, PACK_LEN,
    SegmentError, SegmentInfo, TRAILER_LEN, VERSION,
};
pub use filter::FILTER_LEN;
pub use merge::{merge, sort_run};
pub use reader::Segment;
#[cfg(any(test, feature = "testing"))]
pub use writer::reseal;
pub use writer::{SegmentWriter, write_segment};
