//! The Bloom filter of each block of an index segment (the `filter` section of the format in
//! `index`): the bits an id sets, the filter size this build writes and the largest it reads.
//!
//! Every block but the last holds exactly 102 ids, so the false-positive rate is that of a
//! 1,152-bit Bloom filter of 102 keys, (1 - (1 - 1/1152)^816)^8 ≈ 0.45% (0.43% and 0.49%
//! measured). Lookups search the fences first (in memory), then test that block's filter, then
//! read one 4 KiB block. Per-block filters keep the writer streaming (a whole-segment filter must
//! be sized, or built, from every key at once) and let the filter size change without a version
//! bump (F is in the header). A filter missing an id (damage the checksum missed) only loses a
//! dedup: a lookup never returns another id's entry. `Segment::verify` checks the filter, and
//! what else only a full read can, for `check`.
//!
//! Invariants: an id's positions depend only on its bytes 8..24 and on F, so writer and reader
//! agree for every F the reader accepts (1..=`MAX_FILTER_LEN`); every position is below `F * 8`
//! (a u16 scaled to at most 65,536 bits, then shifted down by 16: the assertions below).
//!
//! `xorf`'s `BinaryFuse8` (≈9 bits per key, 0.39%) was vetted and not taken: its construction
//! holds every key plus ~25 bytes of work space per key (GiBs for a large compaction), it can
//! fail and need a fallback, its `contains` panics (index and u32 overflow) on a descriptor read
//! from a damaged file unless every internal invariant is re-checked, and a stored filter would
//! depend on the crate's private hash mixing staying the same across its releases.

use crate::store::page::PageId;

/// Filter bytes per block this build writes: 11.3 bits per entry of a full block, 0.44% false
/// positives.
pub const FILTER_LEN: usize = 144;
/// Largest filter per block a reader accepts: positions are a u16 scaled to the filter's bits.
pub(super) const MAX_FILTER_LEN: usize = 8192;
/// Bits each id sets in its block's filter.
const FILTER_HASHES: usize = 8;

const _: () = assert!(FILTER_LEN <= MAX_FILTER_LEN && MAX_FILTER_LEN * 8 <= 1 << 16);
const _: () = assert!(8 + 2 * FILTER_HASHES <= 32);

/// The `FILTER_HASHES` (byte, bit mask) positions of `id` in a block filter of `len` bytes.
pub(super) fn filter_positions(id: &PageId, len: usize) -> impl Iterator<Item = (usize, u8)> {
    let bits = len.saturating_mul(8);
    let (pairs, _) = id[8..].as_chunks::<2>();
    pairs.iter().take(FILTER_HASHES).map(move |p| {
        // A u16 times at most 65,536 bits fits a usize; the shift keeps it below `bits`.
        let pos = usize::from(u16::from_le_bytes(*p)).saturating_mul(bits) >> 16;
        (pos / 8, 1u8 << (pos % 8))
    })
}
