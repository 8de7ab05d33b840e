//! The frame-pack format's constants and per-frame records (see the parent module for the
//! layout): the table entry ([`FrameEntry`]) and its encoding, a frame to append
//! ([`StoredFrame`]), and where a frame's table entry or a page's fingerprint sits.
//!
//! Invariants: the sizes here are the format's (checked at compile time against the fields
//! they hold); an entry's codec byte is one of raw (0), zstd (1), LZ4 (2).

#![warn(clippy::arithmetic_side_effects)]

use std::io;

use crate::store::block::{self, Codec, Compression};
use crate::store::page::{self, PAGE_SIZE};

/// Pack format version of frame packs (versions 1 and 2 are `pack.rs`, format-1 stores).
pub const VERSION: u16 = 3;
pub(super) const HEADER_MAGIC: &[u8; 8] = b"RPFSPACK";
pub(super) const TRAILER_MAGIC: &[u8; 8] = b"RPFSPEND";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Size of one frame table entry.
pub const ENTRY_LEN: usize = 40;
/// Size of one fingerprint.
pub const FINGERPRINT_LEN: usize = 16;
/// Size of the fixed trailer.
pub const TRAILER_LEN: usize = 48;
/// Frame table entries per table chunk (40 KiB), each chunk verified by its own crc32c.
pub const FRAMES_PER_CHUNK: u32 = 1024;
/// Fingerprints per fingerprint chunk (64 KiB), each chunk verified by its own crc32c.
pub const FINGERPRINTS_PER_CHUNK: u32 = 4096;
/// Directory bytes per table chunk (crc32c, first page) and per fingerprint chunk (crc32c).
pub(super) const TABLE_DIR_LEN: usize = 8;
/// Bytes of a full table chunk and of a full fingerprint chunk.
pub(super) const TABLE_CHUNK_LEN: usize = FRAMES_PER_CHUNK as usize * ENTRY_LEN;
pub(super) const FINGERPRINT_CHUNK_LEN: usize = FINGERPRINTS_PER_CHUNK as usize * FINGERPRINT_LEN;
pub(super) const FINGERPRINT_DIR_LEN: usize = 4;
/// Smallest and largest frame sizes (one page; 16 pages, the width of a `u16` mask).
pub const MIN_FRAME_SIZE: u32 = PAGE_SIZE as u32;
pub const MAX_FRAME_SIZE: u32 = (PAGE_SIZE * page::MAX_FRAME_PAGES) as u32;
pub(super) const CODEC_RAW: u8 = 0;
/// zstd frames: stores made with `--compression zstd` (builds before it refuse them as damage).
pub(super) const CODEC_ZSTD: u8 = 1;
pub(super) const CODEC_LZ4: u8 = 2;
/// A pack being written starts writeback every this many bytes (see `start_writeback`).
pub(super) const WRITEBACK_EVERY: u64 = 32 << 20;

const _: () = assert!(HEADER_LEN == 8 + 2 + 2 + 4 + 16 + 16 + 12 + 4);
const _: () = assert!(ENTRY_LEN == 8 + 4 + 4 + 1 + 1 + 2 + 4 + 16);
const _: () = assert!(TRAILER_LEN == 8 + 8 + 8 + 8 + 4 + 4 + 4 + 4);
const _: () = assert!(TABLE_CHUNK_LEN == 40 << 10);
const _: () = assert!(FINGERPRINT_CHUNK_LEN == 64 << 10);

/// Where one frame lives inside its pack, and which pages it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEntry {
    pub offset: u64,
    /// Index in the fingerprint section of the frame's first present page.
    pub first_page: u32,
    pub stored_len: u32,
    pub codec: Codec,
    /// Present slots; the decoded frame holds their pages in slot order.
    pub mask: u16,
    /// xxh3-128 of the decoded frame (0 for an empty frame).
    pub hash: u128,
}

impl FrameEntry {
    /// Number of present pages.
    pub fn pages(&self) -> u32 {
        self.mask.count_ones()
    }

    /// Bytes of the decoded frame: its present pages.
    pub fn decoded_len(&self) -> usize {
        // At most 16 pages of 4 KiB.
        (self.mask.count_ones() as usize).saturating_mul(PAGE_SIZE)
    }

    /// Index in the fingerprint section of the page in `slot`, if present.
    pub fn page_fingerprint_index(&self, slot: u8) -> Option<u32> {
        let ordinal = page::ordinal(self.mask, slot)?;
        self.first_page.checked_add(u32::try_from(ordinal).ok()?)
    }

    /// Where the page in `slot` starts in the decoded frame, if present.
    pub fn page_offset(&self, slot: u8) -> Option<usize> {
        page::ordinal(self.mask, slot)?.checked_mul(PAGE_SIZE)
    }

    fn codec_byte(&self) -> u8 {
        match self.codec {
            Codec::Lz4 => CODEC_LZ4,
            Codec::Zstd => CODEC_ZSTD,
            Codec::Raw => CODEC_RAW,
        }
    }

    pub(super) fn to_bytes(self, slots: u8) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.first_page.to_le_bytes());
        b[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        b[16] = self.codec_byte();
        b[17] = slots;
        b[18..20].copy_from_slice(&self.mask.to_le_bytes());
        b[24..40].copy_from_slice(&self.hash.to_le_bytes());
        b
    }
}

/// A frame ready to be appended: its present pages, hashed and encoded.
pub type EncodedFrame = block::Encoded;

/// A frame to append, borrowing its stored bytes (so an ingest appends from its batch buffer).
#[derive(Debug, Clone, Copy)]
pub struct StoredFrame<'a> {
    /// xxh3-128 of the decoded present pages.
    pub hash: u128,
    pub codec: Codec,
    pub bytes: &'a [u8],
}

impl<'a> From<&'a EncodedFrame> for StoredFrame<'a> {
    fn from(e: &'a EncodedFrame) -> Self {
        StoredFrame {
            hash: e.hash,
            codec: e.codec,
            bytes: &e.bytes,
        }
    }
}

/// Encodes the present pages of a frame, concatenated in slot order (`pages.len()` a multiple
/// of [`PAGE_SIZE`], as [`FrameWriter::append`] checks): compressed with `how` when that saves
/// 1/32, else raw.
pub fn encode_frame(pages: &[u8], how: Compression) -> EncodedFrame {
    block::encode(pages, block::hash(pages), how)
}

pub(super) fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, detail)
}

/// The number of slots of a valid frame size, or `None`.
pub(super) fn slots_of(frame_size: u32) -> Option<u8> {
    let valid =
        frame_size.is_power_of_two() && (MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&frame_size);
    valid
        .then(|| u8::try_from(page::frame_slots(frame_size)).ok())
        .flatten()
}

/// Where frame `frame`'s entry is: its table chunk and its index in that chunk.
pub fn table_position(frame: u32) -> (u32, usize) {
    (
        frame / FRAMES_PER_CHUNK,
        (frame % FRAMES_PER_CHUNK) as usize,
    )
}

/// Where the fingerprint of page `page` (a [`FrameEntry::page_fingerprint_index`]) is: its
/// fingerprint chunk and its index in that chunk.
pub fn fingerprint_position(page: u32) -> (u32, usize) {
    (
        page / FINGERPRINTS_PER_CHUNK,
        (page % FINGERPRINTS_PER_CHUNK) as usize,
    )
}

/// Chunks needed for `n` items, `per` to a chunk.
pub(super) fn chunks(n: u32, per: u32) -> u32 {
    n.div_ceil(per)
}
