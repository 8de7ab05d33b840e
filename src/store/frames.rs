//! Frame packs (pack format version 3, format-2 stores): frames of 4 KiB pages, shared by the
//! whole store, with tables read and verified chunk by chunk.
//!
//! A *frame* is the present pages of one frame-sized stretch of a disk (the store's frame size,
//! a power of two from 4 KiB to 64 KiB, so at most 16 *slots*), concatenated in slot order and
//! compressed as one unit (LZ4, or raw when that saves less than 1/32). Frames are numbered
//! 0.. in append order. A map names a page as `(pack, frame, slot)`; its bytes are at
//! `page::ordinal(mask, slot) * PAGE_SIZE` of the decoded frame, looked up through the frame's
//! *current* mask (never a stored ordinal), because a repack may clear present bits.
//!
//! ```text
//! offset        size          field
//! 0             64            header: magic "RPFSPACK", version u16 (3), reserved u16,
//!                             frame size u32, pack id (16 bytes), id of the VM that created it
//!                             (16 bytes, informational), reserved (12 zero bytes),
//!                             crc32c of bytes 0..60
//! 64            ...           frames, back to back (an empty frame takes no bytes)
//! fp_offset     16*pages      fingerprint section: xxh3-128 (`page::fingerprint`) of each
//!                             present page, in frame order then slot order
//! table_offset  40*frames     frame table, in frame order: offset u64, first page u32 (index in
//!                             the fingerprint section of the frame's first present page),
//!                             stored length u32, codec u8 (0 raw, 1 zstd, 2 LZ4), slots u8 (frame size
//!                             / 4096), present mask u16, reserved u32 (zero), xxh3-128 of the
//!                             decoded present pages concatenated (16 bytes)
//! dir_offset    8*tc + 4*fc   directory: per table chunk (FRAMES_PER_CHUNK entries, 40 KiB)
//!                             crc32c u32 and first page u32 of its first frame; then per
//!                             fingerprint chunk (FINGERPRINTS_PER_CHUNK, 64 KiB) crc32c u32
//! len - 48      48            trailer: magic "RPFSPEND", fp_offset u64, table_offset u64,
//!                             dir_offset u64, page count u32, frame count u32, crc32c of the
//!                             directory u32, crc32c of trailer bytes 0..44
//! ```
//!
//! All integers are little-endian; `tc` and `fc` are the chunk counts (counts divided by the
//! chunk size, rounded up). The sections are contiguous: [`FramePack::open`] requires
//! `table_offset = fp_offset + 16 * pages`, `dir_offset = table_offset + 40 * frames` and
//! `dir_offset + directory length = len - 48`, so every count is bounded by the object's length
//! before anything is allocated. It reads header, trailer and directory only (a few bytes per
//! thousand frames); the table and the fingerprints are read later one chunk at a time
//! ([`FramePack::table_chunk`], [`FramePack::fingerprint_chunk`]), each verified by its crc32c in
//! the directory, so a reader keeps them in a bounded cache.
//!
//! Invariants:
//! - Frame `f`'s `first_page` is the sum of the popcounts of frames `0..f`; the directory's first
//!   page of each table chunk makes every chunk checkable alone (its frames' page counts must
//!   lead exactly to the next chunk's first page, or to the page count).
//! - An *empty* frame (mask 0) has stored length 0, codec raw and hash 0: a repack writes one for
//!   each dead frame, so frame indices never change.
//! - A pack is written once and published whole. A repack writes a new generation that keeps
//!   every frame index and the slot of every live page, so `(pack, frame, slot)` names the same
//!   bytes for the store's lifetime.
//! - Within a table chunk frames do not overlap and are in offset order; every frame lies inside
//!   the frames region `64..fp_offset`.
//!
//! Damage and its [`CorruptKind`]: a short object `Length`; header `HeaderChecksum`, `Magic`,
//! `Version`, `BlockSize` (frame size), `WrongId`; trailer `TrailerChecksum`, `Magic`; offsets
//! and counts that do not fit the object, or a directory whose first pages do not follow,
//! `Bounds`; directory and table chunks `TableChecksum`; fingerprint chunks `BodyChecksum`; a
//! table entry breaking an invariant `Entry`. A damaged frame fails [`FramePack::read_frame`]
//! with a [`BlockReadError::Decode`] for that frame alone.
//!
//! The writer streams frames to the object as they come and keeps the table (40 bytes per frame)
//! and the fingerprints (16 bytes per page) in memory until [`FrameWriter::finish`]: ~0.45% of
//! the pages' decoded bytes with 64 KiB frames (a 1 GiB pack of incompressible full frames keeps
//! ~4.6 MiB).

//!
//! `entry` holds the constants and the table entry, `writer` the [`FrameWriter`], `reader` the
//! [`FramePack`].

#![warn(clippy::arithmetic_side_effects)]

mod entry;
mod reader;
mod writer;

pub use self::entry::*;
pub use self::reader::FramePack;
pub use self::writer::FrameWriter;

#[cfg(any(test, feature = "testing"))]
use super::le;

/// Makes every checksum of a frame pack right after an edit (header, the directory's chunk
/// checksums where the trailer's offsets and counts describe sections inside `bytes`, the
/// directory's and the trailer's), so damage reaches the checks behind them. For tests and
/// fuzzing; any bytes are accepted, and what cannot be located is left alone.
#[cfg(any(test, feature = "testing"))]
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return;
    }
    let crc = crc32c::crc32c(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    let t = bytes.len().saturating_sub(TRAILER_LEN);
    let at = |field: usize| usize::try_from(le::u64_at(bytes, t.saturating_add(field))).ok();
    let (fp, table, dir) = (at(8), at(16), at(24));
    let pages = le::u32_at(bytes, t.saturating_add(32));
    let frames = le::u32_at(bytes, t.saturating_add(36));
    if let (Some(fp), Some(table), Some(dir)) = (fp, table, dir)
        && fp <= table
        && table <= dir
        && dir <= t
    {
        let tc = chunks(frames, FRAMES_PER_CHUNK) as usize;
        let fc = chunks(pages, FINGERPRINTS_PER_CHUNK) as usize;
        let mut crcs: Vec<(usize, u32)> = Vec::new();
        for c in 0..tc.min(t.saturating_sub(dir) / TABLE_DIR_LEN) {
            let from = table
                .saturating_add(c.saturating_mul(TABLE_CHUNK_LEN))
                .min(dir);
            let to = from.saturating_add(TABLE_CHUNK_LEN).min(dir);
            let slot = dir.saturating_add(c.saturating_mul(TABLE_DIR_LEN));
            crcs.push((slot, crc32c::crc32c(&bytes[from..to])));
        }
        let fp_dir = dir.saturating_add(tc.saturating_mul(TABLE_DIR_LEN));
        for c in 0..fc.min(t.saturating_sub(fp_dir) / FINGERPRINT_DIR_LEN) {
            let from = fp
                .saturating_add(c.saturating_mul(FINGERPRINT_CHUNK_LEN))
                .min(table);
            let to = from.saturating_add(FINGERPRINT_CHUNK_LEN).min(table);
            let slot = fp_dir.saturating_add(c.saturating_mul(FINGERPRINT_DIR_LEN));
            crcs.push((slot, crc32c::crc32c(&bytes[from..to])));
        }
        for (slot, crc) in crcs {
            if let Some(b) = bytes.get_mut(slot..slot.saturating_add(4)) {
                b.copy_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&bytes[dir..t]);
        bytes[t.saturating_add(40)..t.saturating_add(44)].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes[t..t.saturating_add(44)]);
    bytes[t.saturating_add(44)..].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests;
