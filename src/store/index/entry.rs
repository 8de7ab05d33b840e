//! The sizes, magics and offsets of the index segment format (the table in `index`), the types
//! every part of it shares, and the fence of an id. A leaf: it imports nothing from its siblings.
//!
//! Invariants, checked at compile time by the assertions below: every size equals the sum of the
//! fields it holds (header 64 bytes, entry 40, trailer 64); a block's 102 entries end before its
//! count (u16 at 4090), which its crc32c (u32 at 4092) follows to the end of the 4 KiB block; a
//! page slot fits the 4 bits a ref gives it because a frame has 16 pages. A fence orders as the
//! ids do (the first 8 bytes, big-endian).

use std::io;

use crate::store::page::{MAX_FRAME_PAGES, PageId};
use crate::store::{Corrupt, CorruptKind};
use uuid::Uuid;

/// Format version of index segments written by this build.
pub const VERSION: u16 = 1;
pub(super) const HEADER_MAGIC: &[u8; 8] = b"RPFSINDX";
pub(super) const TRAILER_MAGIC: &[u8; 8] = b"RPFSIEND";
/// Size of the fixed header (the first block holds it and zero padding).
pub const HEADER_LEN: usize = 64;
/// Size of an entry block, and where the first one starts.
pub const BLOCK: usize = 4096;
/// Size of one entry.
pub const ENTRY_LEN: usize = 40;
/// Entries in every block but the last.
pub const BLOCK_ENTRIES: usize = 102;
/// Where a block keeps its entry count (u16) and its crc32c (u32).
pub(super) const COUNT_AT: usize = 4090;
pub(super) const BLOCK_CRC_AT: usize = 4092;
/// Size of one pack list entry and of one fence.
pub const PACK_LEN: usize = 16;
pub const FENCE_LEN: usize = 8;
/// Size of the fixed trailer.
pub const TRAILER_LEN: usize = 64;
/// Most packs a segment lists: pack slots are 28 bits.
pub const MAX_PACKS: u32 = 1 << 28;

const _: () = assert!(HEADER_LEN == 8 + 2 + 2 + 48 + 4);
const _: () = assert!(ENTRY_LEN == 32 + 4 + 4);
const _: () = assert!(BLOCK_ENTRIES * ENTRY_LEN <= COUNT_AT && COUNT_AT + 2 == BLOCK_CRC_AT);
const _: () = assert!(BLOCK_CRC_AT + 4 == BLOCK);
const _: () = assert!(TRAILER_LEN == 8 + 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + 4);
const _: () = assert!(MAX_FRAME_PAGES == 16);

/// Where the page with id `id` is stored: page `slot` of frame `frame` of pack `pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    pub id: PageId,
    pub pack: Uuid,
    pub frame: u32,
    pub slot: u8,
}

/// What a published segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub entries: u64,
    pub packs: u32,
    /// Length of the object in bytes.
    pub len: u64,
}

/// Failure to read a segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{key}: {source}")]
    Io { key: String, source: io::Error },
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl SegmentError {
    /// The kind of damage, when the segment is damaged rather than unreadable.
    pub fn corrupt_kind(&self) -> Option<CorruptKind> {
        match self {
            SegmentError::Io { .. } => None,
            SegmentError::Corrupt(c) => Some(c.kind),
        }
    }
}

pub(super) fn hex8(id: &PageId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The fence of an id: its first 8 bytes as a number that orders as the ids do.
pub(super) fn prefix(id: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&id[..8]);
    u64::from_be_bytes(a)
}
