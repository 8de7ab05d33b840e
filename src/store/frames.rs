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

#![warn(clippy::arithmetic_side_effects)]

use std::io::{self, Write};

use super::block::{self, Codec, Compression};
use super::le;
use super::pack::{BlockReadError, PackError};
use super::page::{self, Fingerprint, PAGE_SIZE};
use super::storage::{Object, ObjectWriter};
use super::{Corrupt, CorruptKind};
use uuid::Uuid;

thread_local! {
    /// Scratch space for the stored bytes of compressed frames being read.
    static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pack format version of frame packs (versions 1 and 2 are `pack.rs`, format-1 stores).
pub const VERSION: u16 = 3;
const HEADER_MAGIC: &[u8; 8] = b"RPFSPACK";
const TRAILER_MAGIC: &[u8; 8] = b"RPFSPEND";
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
const TABLE_DIR_LEN: usize = 8;
/// Bytes of a full table chunk and of a full fingerprint chunk.
const TABLE_CHUNK_LEN: usize = FRAMES_PER_CHUNK as usize * ENTRY_LEN;
const FINGERPRINT_CHUNK_LEN: usize = FINGERPRINTS_PER_CHUNK as usize * FINGERPRINT_LEN;
const FINGERPRINT_DIR_LEN: usize = 4;
/// Smallest and largest frame sizes (one page; 16 pages, the width of a `u16` mask).
pub const MIN_FRAME_SIZE: u32 = PAGE_SIZE as u32;
pub const MAX_FRAME_SIZE: u32 = (PAGE_SIZE * page::MAX_FRAME_PAGES) as u32;
const CODEC_RAW: u8 = 0;
/// zstd frames: stores made with `--compression zstd` (builds before it refuse them as damage).
const CODEC_ZSTD: u8 = 1;
const CODEC_LZ4: u8 = 2;
/// A pack being written starts writeback every this many bytes (see `start_writeback`).
const WRITEBACK_EVERY: u64 = 32 << 20;

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

    fn to_bytes(self, slots: u8) -> [u8; ENTRY_LEN] {
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

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, detail)
}

/// The number of slots of a valid frame size, or `None`.
fn slots_of(frame_size: u32) -> Option<u8> {
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
fn chunks(n: u32, per: u32) -> u32 {
    n.div_ceil(per)
}

/// Streams frames into a new frame pack object.
///
/// Holds the table (40 bytes per frame) and the fingerprints (16 bytes per page) in memory until
/// [`FrameWriter::finish`]; frames themselves go to the object as they are appended. After an
/// error the writer must be dropped, which publishes nothing.
pub struct FrameWriter {
    out: Box<dyn ObjectWriter>,
    slots: u8,
    pos: u64,
    frames: u32,
    pages: u32,
    table: Vec<u8>,
    fingerprints: Vec<u8>,
    /// First page of each table chunk begun so far.
    chunk_first_pages: Vec<u32>,
}

impl FrameWriter {
    /// Starts a pack `pack`, created by VM `vm`, of frames of `frame_size` bytes.
    pub fn new(
        mut out: Box<dyn ObjectWriter>,
        pack: Uuid,
        vm: Uuid,
        frame_size: u32,
    ) -> io::Result<Self> {
        let slots = slots_of(frame_size).ok_or_else(|| {
            invalid(format!(
                "frame size {frame_size} is not a power of two from {MIN_FRAME_SIZE} to \
                 {MAX_FRAME_SIZE}"
            ))
        })?;
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(HEADER_MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&frame_size.to_le_bytes());
        h[16..32].copy_from_slice(pack.as_bytes());
        h[32..48].copy_from_slice(vm.as_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&h)?;
        Ok(FrameWriter {
            out,
            slots,
            pos: HEADER_LEN as u64,
            frames: 0,
            pages: 0,
            table: Vec::new(),
            fingerprints: Vec::new(),
            chunk_first_pages: Vec::new(),
        })
    }

    /// Appends a frame whose present pages (`mask`) were encoded by [`encode_frame`], with the
    /// fingerprint of each present page in slot order; returns the frame's index.
    pub fn append(
        &mut self,
        mask: u16,
        frame: StoredFrame<'_>,
        fingerprints: &[Fingerprint],
    ) -> io::Result<u32> {
        let full = page::full_mask(u32::from(self.slots));
        if mask == 0 || mask & !full != 0 {
            return Err(invalid(format!(
                "frame mask {mask:#x} is empty or names slots beyond the frame's {}",
                self.slots
            )));
        }
        let pages = mask.count_ones();
        // At most 16 pages of 4 KiB.
        let decoded = (pages as usize).saturating_mul(PAGE_SIZE);
        let len_ok = match frame.codec {
            Codec::Raw => frame.bytes.len() == decoded,
            Codec::Lz4 | Codec::Zstd => !frame.bytes.is_empty() && frame.bytes.len() < decoded,
        };
        if !len_ok {
            return Err(invalid(format!(
                "a {:?} frame of {} bytes cannot hold {pages} pages",
                frame.codec,
                frame.bytes.len()
            )));
        }
        if fingerprints.len() != pages as usize {
            return Err(invalid(format!(
                "{} fingerprints for a frame of {pages} pages",
                fingerprints.len()
            )));
        }
        // Shorter than the decoded frame, so under 64 KiB.
        let stored_len = u32::try_from(frame.bytes.len())
            .map_err(|_| invalid("stored frame too large".into()))?;
        let entry = FrameEntry {
            offset: self.pos,
            first_page: self.pages,
            stored_len,
            codec: frame.codec,
            mask,
            hash: frame.hash,
        };
        let index = self.push(entry)?;
        self.out.write_all(frame.bytes)?;
        let end = self
            .pos
            .checked_add(u64::from(stored_len))
            .ok_or_else(|| invalid("pack over 2^64 bytes".into()))?;
        if self.pos / WRITEBACK_EVERY != end / WRITEBACK_EVERY {
            self.out.start_writeback()?;
        }
        self.pos = end;
        for fp in fingerprints {
            self.fingerprints.extend_from_slice(&fp.to_le_bytes());
        }
        Ok(index)
    }

    /// Appends an empty frame (mask 0, no bytes), which keeps frame indices when repacking.
    pub fn append_empty(&mut self) -> io::Result<u32> {
        self.push(FrameEntry {
            offset: self.pos,
            first_page: self.pages,
            stored_len: 0,
            codec: Codec::Raw,
            mask: 0,
            hash: 0,
        })
    }

    /// Records `entry` in the table; returns its index.
    fn push(&mut self, entry: FrameEntry) -> io::Result<u32> {
        let frames = self
            .frames
            .checked_add(1)
            .ok_or_else(|| invalid("more than 2^32 frames in a pack".into()))?;
        let pages = self
            .pages
            .checked_add(entry.pages())
            .ok_or_else(|| invalid("more than 2^32 pages in a pack".into()))?;
        if self.frames.is_multiple_of(FRAMES_PER_CHUNK) {
            self.chunk_first_pages.push(self.pages);
        }
        self.table.extend_from_slice(&entry.to_bytes(self.slots));
        let index = self.frames;
        self.frames = frames;
        self.pages = pages;
        Ok(index)
    }

    /// Frames appended so far.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Pages appended so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Bytes of frames written so far (header and tables excluded): what a pack rolls over on.
    pub fn stored_bytes(&self) -> u64 {
        self.pos.saturating_sub(HEADER_LEN as u64)
    }

    /// Writes the fingerprints, table, directory and trailer, and publishes the pack. Returns
    /// its length in bytes.
    pub fn finish(mut self) -> io::Result<u64> {
        let too_large = || invalid("pack over 2^64 bytes".into());
        let fp_offset = self.pos;
        let table_offset = fp_offset
            .checked_add(self.fingerprints.len() as u64)
            .ok_or_else(too_large)?;
        let dir_offset = table_offset
            .checked_add(self.table.len() as u64)
            .ok_or_else(too_large)?;
        let mut dir = Vec::new();
        for (chunk, first) in self
            .table
            .chunks(TABLE_CHUNK_LEN)
            .zip(&self.chunk_first_pages)
        {
            dir.extend_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
            dir.extend_from_slice(&first.to_le_bytes());
        }
        for chunk in self.fingerprints.chunks(FINGERPRINT_CHUNK_LEN) {
            dir.extend_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
        }
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(TRAILER_MAGIC);
        t[8..16].copy_from_slice(&fp_offset.to_le_bytes());
        t[16..24].copy_from_slice(&table_offset.to_le_bytes());
        t[24..32].copy_from_slice(&dir_offset.to_le_bytes());
        t[32..36].copy_from_slice(&self.pages.to_le_bytes());
        t[36..40].copy_from_slice(&self.frames.to_le_bytes());
        t[40..44].copy_from_slice(&crc32c::crc32c(&dir).to_le_bytes());
        let crc = crc32c::crc32c(&t[..44]);
        t[44..48].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.fingerprints)?;
        self.out.write_all(&self.table)?;
        self.out.write_all(&dir)?;
        self.out.write_all(&t)?;
        self.out.commit()
    }
}

/// What the directory says of one table chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableChunk {
    crc: u32,
    first_page: u32,
}

/// A published frame pack: header, trailer and directory, validated. Tables and fingerprints
/// are read chunk by chunk.
#[derive(Debug, Clone)]
pub struct FramePack {
    pub pack: Uuid,
    /// The VM whose point created the pack (informational).
    pub vm: Uuid,
    pub frame_size: u32,
    slots: u8,
    fp_offset: u64,
    table_offset: u64,
    page_count: u32,
    frame_count: u32,
    table_dir: Vec<TableChunk>,
    fingerprint_dir: Vec<u32>,
}

fn damage(key: &str, kind: CorruptKind, detail: String) -> PackError {
    PackError::Corrupt(Corrupt::new(key, kind, detail))
}

impl FramePack {
    /// Reads and validates the header, trailer and directory of `obj` (named `key` in errors),
    /// which must be pack `expect_pack` of frames of `expect_frame_size` bytes.
    pub fn open(
        key: &str,
        obj: &dyn Object,
        expect_pack: Uuid,
        expect_frame_size: u32,
    ) -> Result<FramePack, PackError> {
        use CorruptKind::*;
        let corrupt = |kind, detail: String| damage(key, kind, detail);
        let len = obj.len();
        if len < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt(
                Length,
                format!("pack is {len} bytes, shorter than header and trailer"),
            ));
        }
        let mut h = [0u8; HEADER_LEN];
        obj.read_exact_at(&mut h, 0).map_err(PackError::Io)?;
        if crc32c::crc32c(&h[..60]) != le::u32_at(&h, 60) {
            return Err(corrupt(
                HeaderChecksum,
                "pack header checksum mismatch".into(),
            ));
        }
        if &h[0..8] != HEADER_MAGIC {
            return Err(corrupt(Magic, "bad pack magic".into()));
        }
        let version = le::u16_at(&h, 8);
        if version != VERSION {
            return Err(corrupt(
                Version,
                format!("pack version {version} is not a frame pack (version {VERSION})"),
            ));
        }
        let frame_size = le::u32_at(&h, 12);
        if frame_size != expect_frame_size {
            return Err(corrupt(
                BlockSize,
                format!("pack frame size {frame_size}, store uses {expect_frame_size}"),
            ));
        }
        let Some(slots) = slots_of(frame_size) else {
            return Err(corrupt(
                BlockSize,
                format!("frame size {frame_size} is not a power of two from 4 KiB to 64 KiB"),
            ));
        };
        let pack = Uuid::from_slice(&h[16..32]).map_err(|e| corrupt(WrongId, e.to_string()))?;
        if pack != expect_pack {
            return Err(corrupt(
                WrongId,
                format!("pack holds id {pack}, expected {expect_pack}"),
            ));
        }
        let vm = Uuid::from_slice(&h[32..48]).map_err(|e| corrupt(WrongId, e.to_string()))?;

        let mut t = [0u8; TRAILER_LEN];
        // `len` holds at least a header and a trailer (checked above).
        let trailer_at = len.saturating_sub(TRAILER_LEN as u64);
        obj.read_exact_at(&mut t, trailer_at)
            .map_err(PackError::Io)?;
        if crc32c::crc32c(&t[..44]) != le::u32_at(&t, 44) {
            return Err(corrupt(
                TrailerChecksum,
                "pack trailer checksum mismatch".into(),
            ));
        }
        if &t[0..8] != TRAILER_MAGIC {
            return Err(corrupt(Magic, "bad pack trailer magic".into()));
        }
        let fp_offset = le::u64_at(&t, 8);
        let table_offset = le::u64_at(&t, 16);
        let dir_offset = le::u64_at(&t, 24);
        let page_count = le::u32_at(&t, 32);
        let frame_count = le::u32_at(&t, 36);
        if u64::from(page_count) > u64::from(frame_count).saturating_mul(u64::from(slots)) {
            return Err(corrupt(
                Bounds,
                format!("{page_count} pages cannot fit {frame_count} frames of {slots} pages"),
            ));
        }
        let table_chunks = chunks(frame_count, FRAMES_PER_CHUNK);
        let fp_chunks = chunks(page_count, FINGERPRINTS_PER_CHUNK);
        // u32 counts times small sizes: no overflow in u64.
        let fp_len = u64::from(page_count).saturating_mul(FINGERPRINT_LEN as u64);
        let table_len = u64::from(frame_count).saturating_mul(ENTRY_LEN as u64);
        let dir_len = u64::from(table_chunks)
            .saturating_mul(TABLE_DIR_LEN as u64)
            .saturating_add(u64::from(fp_chunks).saturating_mul(FINGERPRINT_DIR_LEN as u64));
        let fits = fp_offset >= HEADER_LEN as u64
            && fp_offset.checked_add(fp_len) == Some(table_offset)
            && table_offset.checked_add(table_len) == Some(dir_offset)
            && dir_offset.checked_add(dir_len) == Some(trailer_at);
        if !fits {
            return Err(corrupt(
                Bounds,
                format!(
                    "sections do not fit a pack of {len} bytes: fingerprints at {fp_offset}, \
                     table at {table_offset}, directory at {dir_offset}, {page_count} pages, \
                     {frame_count} frames"
                ),
            ));
        }
        // Bounded by `len` (checked just above).
        let dir_len = usize::try_from(dir_len)
            .map_err(|_| corrupt(TooLarge, format!("directory of {dir_len} bytes")))?;
        let mut dir = vec![0u8; dir_len];
        obj.read_exact_at(&mut dir, dir_offset)
            .map_err(PackError::Io)?;
        if crc32c::crc32c(&dir) != le::u32_at(&t, 40) {
            return Err(corrupt(
                TableChecksum,
                "pack directory checksum mismatch".into(),
            ));
        }
        let (table_part, fp_part) =
            dir.split_at((table_chunks as usize).saturating_mul(TABLE_DIR_LEN));
        let table_dir: Vec<TableChunk> = table_part
            .chunks_exact(TABLE_DIR_LEN)
            .map(|c| TableChunk {
                crc: le::u32_at(c, 0),
                first_page: le::u32_at(c, 4),
            })
            .collect();
        // Each chunk's first page: 0 for the first, then at most a full chunk of full frames
        // more than the previous one, and within the page count.
        let most_per_chunk = u64::from(FRAMES_PER_CHUNK).saturating_mul(u64::from(slots));
        let mut prev: Option<u32> = None;
        for (c, d) in table_dir.iter().enumerate() {
            let ok = match prev {
                None => d.first_page == 0,
                Some(p) => {
                    d.first_page >= p
                        && u64::from(d.first_page) <= u64::from(p).saturating_add(most_per_chunk)
                }
            } && d.first_page <= page_count;
            if !ok {
                return Err(corrupt(
                    Bounds,
                    format!(
                        "directory gives table chunk {c} first page {}, which does not follow \
                         {prev:?} within {page_count} pages",
                        d.first_page
                    ),
                ));
            }
            prev = Some(d.first_page);
        }
        let fingerprint_dir = fp_part
            .chunks_exact(FINGERPRINT_DIR_LEN)
            .map(|c| le::u32_at(c, 0))
            .collect();
        Ok(FramePack {
            pack,
            vm,
            frame_size,
            slots,
            fp_offset,
            table_offset,
            page_count,
            frame_count,
            table_dir,
            fingerprint_dir,
        })
    }

    /// Frames in the pack, empty ones included.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Present pages in the pack: entries of the fingerprint section.
    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// Table chunks; frame `f` is entry `f % FRAMES_PER_CHUNK` of chunk `f / FRAMES_PER_CHUNK`.
    pub fn table_chunks(&self) -> u32 {
        chunks(self.frame_count, FRAMES_PER_CHUNK)
    }

    /// Fingerprint chunks; page `p` is entry `p % FINGERPRINTS_PER_CHUNK` of chunk
    /// `p / FINGERPRINTS_PER_CHUNK`.
    pub fn fingerprint_chunks(&self) -> u32 {
        chunks(self.page_count, FINGERPRINTS_PER_CHUNK)
    }

    /// Bytes of the frames region (header and tables excluded).
    pub fn stored_bytes(&self) -> u64 {
        self.fp_offset.saturating_sub(HEADER_LEN as u64)
    }

    /// Reads table chunk `chunk` (of [`Self::table_chunks`]; another number is an
    /// `InvalidInput` error: the caller checks a frame against [`Self::frame_count`] first),
    /// verifies its checksum and validates every entry.
    pub fn table_chunk(
        &self,
        key: &str,
        obj: &dyn Object,
        chunk: u32,
    ) -> Result<Vec<FrameEntry>, PackError> {
        use CorruptKind::*;
        let corrupt = |kind, detail: String| damage(key, kind, detail);
        let Some(dir) = self.table_dir.get(chunk as usize) else {
            return Err(PackError::Io(invalid(format!(
                "{key}: table chunk {chunk} asked of a pack with {} chunks",
                self.table_chunks()
            ))));
        };
        // `chunk` < table_chunks, so `start` < frame_count and nothing below overflows.
        let start = chunk.saturating_mul(FRAMES_PER_CHUNK);
        let n = self.frame_count.saturating_sub(start).min(FRAMES_PER_CHUNK);
        let at = self
            .table_offset
            .saturating_add(u64::from(start).saturating_mul(ENTRY_LEN as u64));
        let mut buf = vec![0u8; (n as usize).saturating_mul(ENTRY_LEN)];
        obj.read_exact_at(&mut buf, at).map_err(PackError::Io)?;
        if crc32c::crc32c(&buf) != dir.crc {
            return Err(corrupt(
                TableChecksum,
                format!("pack table chunk {chunk} checksum mismatch"),
            ));
        }
        let end_page = self
            .table_dir
            .get((chunk as usize).saturating_add(1))
            .map_or(self.page_count, |d| d.first_page);
        let full = page::full_mask(u32::from(self.slots));
        let mut next_page = dir.first_page;
        let mut prev_end = HEADER_LEN as u64;
        let mut entries = Vec::with_capacity(n as usize);
        for (i, b) in buf.chunks_exact(ENTRY_LEN).enumerate() {
            let frame = u64::from(start).saturating_add(i as u64);
            let bad = |what: String| corrupt(Entry, format!("frame {frame} is invalid: {what}"));
            let codec = match b[16] {
                CODEC_RAW => Codec::Raw,
                CODEC_ZSTD => Codec::Zstd,
                CODEC_LZ4 => Codec::Lz4,
                other => {
                    return Err(bad(format!(
                        "codec {other} is not raw (0), zstd (1) or LZ4 (2)"
                    )));
                }
            };
            let e = FrameEntry {
                offset: le::u64_at(b, 0),
                first_page: le::u32_at(b, 8),
                stored_len: le::u32_at(b, 12),
                codec,
                mask: le::u16_at(b, 18),
                hash: le::u128_at(b, 24),
            };
            if b[17] != self.slots {
                return Err(bad(format!("{} slots in a pack of {}", b[17], self.slots)));
            }
            if e.mask & !full != 0 {
                return Err(bad(format!(
                    "mask {:#x} names slots beyond the frame's {}",
                    e.mask, self.slots
                )));
            }
            if le::u32_at(b, 20) != 0 {
                return Err(bad("reserved bytes are not zero".into()));
            }
            // At most 16 pages of 4 KiB: fits u32.
            let decoded = e.pages().saturating_mul(PAGE_SIZE as u32);
            let len_ok = match (e.mask, e.codec) {
                (0, _) => e.stored_len == 0 && e.codec == Codec::Raw && e.hash == 0,
                (_, Codec::Raw) => e.stored_len == decoded,
                _ => e.stored_len > 0 && e.stored_len < decoded,
            };
            if !len_ok {
                return Err(bad(format!(
                    "stored length {} of a {:?} frame of {} pages",
                    e.stored_len,
                    e.codec,
                    e.pages()
                )));
            }
            if e.first_page != next_page {
                return Err(bad(format!(
                    "first page {} where the frames before it lead to {next_page}",
                    e.first_page
                )));
            }
            next_page = match next_page.checked_add(e.pages()) {
                Some(p) if p <= end_page => p,
                _ => {
                    return Err(bad(format!(
                        "its pages go past page {end_page}, where the next chunk or the \
                         pack ends"
                    )));
                }
            };
            let end = e.offset.checked_add(u64::from(e.stored_len));
            if e.offset < prev_end || end.is_none_or(|end| end > self.fp_offset) {
                return Err(bad(format!(
                    "offset {} and length {} are not after {prev_end} within the frames \
                     region ending at {}",
                    e.offset, e.stored_len, self.fp_offset
                )));
            }
            prev_end = end.unwrap_or(prev_end);
            entries.push(e);
        }
        if next_page != end_page {
            return Err(corrupt(
                Entry,
                format!(
                    "table chunk {chunk} ends at page {next_page}, but the next chunk or the \
                     pack starts at {end_page}"
                ),
            ));
        }
        Ok(entries)
    }

    /// Reads fingerprint chunk `chunk` (of [`Self::fingerprint_chunks`]; another number is an
    /// `InvalidInput` error) and verifies its checksum.
    pub fn fingerprint_chunk(
        &self,
        key: &str,
        obj: &dyn Object,
        chunk: u32,
    ) -> Result<Vec<Fingerprint>, PackError> {
        let Some(&crc) = self.fingerprint_dir.get(chunk as usize) else {
            return Err(PackError::Io(invalid(format!(
                "{key}: fingerprint chunk {chunk} asked of a pack with {} chunks",
                self.fingerprint_chunks()
            ))));
        };
        // `chunk` < fingerprint_chunks, so `start` < page_count and nothing below overflows.
        let start = chunk.saturating_mul(FINGERPRINTS_PER_CHUNK);
        let n = self
            .page_count
            .saturating_sub(start)
            .min(FINGERPRINTS_PER_CHUNK);
        let at = self
            .fp_offset
            .saturating_add(u64::from(start).saturating_mul(FINGERPRINT_LEN as u64));
        let mut buf = vec![0u8; (n as usize).saturating_mul(FINGERPRINT_LEN)];
        obj.read_exact_at(&mut buf, at).map_err(PackError::Io)?;
        if crc32c::crc32c(&buf) != crc {
            return Err(damage(
                key,
                CorruptKind::BodyChecksum,
                format!("pack fingerprint chunk {chunk} checksum mismatch"),
            ));
        }
        Ok(buf
            .chunks_exact(FINGERPRINT_LEN)
            .map(|c| le::u128_at(c, 0))
            .collect())
    }

    /// Reads, decodes and verifies frame `e` into `out`, which must be exactly
    /// [`FrameEntry::decoded_len`] long (else `InvalidInput`). Raw frames are read straight into
    /// `out`; compressed ones through a per-thread scratch buffer, their decompression bounded
    /// by `out`. An empty frame reads nothing.
    pub fn read_frame(
        &self,
        obj: &dyn Object,
        e: &FrameEntry,
        out: &mut [u8],
    ) -> Result<(), BlockReadError> {
        let want = e.decoded_len();
        if out.len() != want {
            return Err(BlockReadError::Io(invalid(format!(
                "a buffer of {} bytes for a frame of {} pages",
                out.len(),
                e.pages()
            ))));
        }
        if want == 0 {
            return Ok(());
        }
        let stored = e.stored_len as usize;
        let length = |got| BlockReadError::Decode(block::DecodeError::Length { got, want });
        if e.codec == Codec::Raw {
            if stored != want {
                return Err(length(stored));
            }
            obj.read_exact_at(out, e.offset)
                .map_err(BlockReadError::Io)?;
            return block::verify(out, e.hash).map_err(BlockReadError::Decode);
        }
        // A compressed frame is shorter than its pages; this bounds the scratch buffer even for
        // an entry that did not come from `table_chunk`.
        if stored >= want {
            return Err(length(stored));
        }
        STORED.with_borrow_mut(|buf| {
            buf.resize(stored, 0);
            obj.read_exact_at(buf, e.offset)
                .map_err(BlockReadError::Io)?;
            block::decode(buf, e.codec, e.hash, out).map_err(BlockReadError::Decode)
        })
    }

    /// Reads the stored (still encoded) bytes of frame `e`, for byte-for-byte copies in
    /// repacks. A length beyond the frame size is `InvalidInput`.
    pub fn read_stored(&self, obj: &dyn Object, e: &FrameEntry) -> io::Result<Vec<u8>> {
        if e.stored_len > self.frame_size {
            return Err(invalid(format!(
                "a stored frame of {} bytes in a pack of {}-byte frames",
                e.stored_len, self.frame_size
            )));
        }
        let mut buf = vec![0u8; e.stored_len as usize];
        obj.read_exact_at(&mut buf, e.offset)?;
        Ok(buf)
    }
}

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
mod tests {
    #![allow(
        clippy::arithmetic_side_effects,
        reason = "tests compute offsets into the small files they build"
    )]

    use super::*;
    use crate::store::LocalStorage;
    use crate::store::storage::Storage;
    use proptest::prelude::*;

    const KEY: &str = "p.pack";

    /// One page: compressible (a slow pattern) or not (xorshift), different per seed.
    fn page_of(seed: u32, compressible: bool) -> Vec<u8> {
        if compressible {
            return (0..PAGE_SIZE)
                .map(|i| ((i / 64) as u32 ^ seed) as u8)
                .collect();
        }
        let mut x = u64::from(seed) | 0x9e37_79b9_0000_0000;
        (0..PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A frame of the model: its mask and its present pages in slot order.
    #[derive(Debug, Clone)]
    struct Frame {
        mask: u16,
        pages: Vec<Vec<u8>>,
    }

    fn frame(mask: u16, seed: u32, compressible: impl Fn(u8) -> bool) -> Frame {
        let pages = (0..16u8)
            .filter(|s| mask & (1 << s) != 0)
            .map(|s| {
                page_of(
                    seed.wrapping_mul(31).wrapping_add(u32::from(s)),
                    compressible(s),
                )
            })
            .collect();
        Frame { mask, pages }
    }

    fn append(w: &mut FrameWriter, f: &Frame) -> u32 {
        if f.mask == 0 {
            return w.append_empty().expect("append empty");
        }
        // Odd frames zstd, even ones LZ4: a pack may hold both (a repack keeps old frames).
        let how = if w.frames() % 2 == 1 {
            Compression::Zstd(1)
        } else {
            Compression::Lz4
        };
        let enc = encode_frame(&f.pages.concat(), how);
        let fps: Vec<Fingerprint> = f.pages.iter().map(|p| page::fingerprint(p)).collect();
        w.append(f.mask, (&enc).into(), &fps).expect("append")
    }

    fn write(s: &LocalStorage, id: Uuid, frame_size: u32, frames: &[Frame]) -> u64 {
        let mut w = FrameWriter::new(s.create(KEY).expect("create"), id, Uuid::nil(), frame_size)
            .expect("new");
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(append(&mut w, f), i as u32);
        }
        assert_eq!(w.frames(), frames.len() as u32);
        w.finish().expect("finish")
    }

    fn entries(p: &FramePack, obj: &dyn Object) -> Vec<FrameEntry> {
        (0..p.table_chunks())
            .flat_map(|c| p.table_chunk(KEY, obj, c).expect("table chunk"))
            .collect()
    }

    /// Every page of the model reads back by slot through the current mask, with its
    /// fingerprint at the index the entry gives; absent slots resolve to nothing.
    fn check(s: &LocalStorage, id: Uuid, frame_size: u32, frames: &[Frame]) {
        let obj = s.open(KEY).expect("open");
        let p = FramePack::open(KEY, &*obj, id, frame_size).expect("valid pack");
        assert_eq!((p.pack, p.frame_size), (id, frame_size));
        assert_eq!(p.frame_count(), frames.len() as u32);
        let pages: usize = frames.iter().map(|f| f.pages.len()).sum();
        assert_eq!(p.page_count() as usize, pages);
        let fps: Vec<Fingerprint> = (0..p.fingerprint_chunks())
            .flat_map(|c| p.fingerprint_chunk(KEY, &*obj, c).expect("fingerprints"))
            .collect();
        assert_eq!(fps.len(), pages);
        let es = entries(&p, &*obj);
        assert_eq!(es.len(), frames.len());
        for (e, f) in es.iter().zip(frames) {
            assert_eq!(e.mask, f.mask);
            let mut out = vec![0u8; e.decoded_len()];
            p.read_frame(&*obj, e, &mut out).expect("frame reads");
            let mut present = f.pages.iter();
            for slot in 0..(frame_size / PAGE_SIZE as u32) as u8 {
                if f.mask & (1 << slot) == 0 {
                    assert_eq!(e.page_offset(slot), None);
                    assert_eq!(e.page_fingerprint_index(slot), None);
                    continue;
                }
                let want = present.next().expect("a model page per present slot");
                let at = e.page_offset(slot).expect("present");
                assert_eq!(&out[at..at + PAGE_SIZE], &want[..]);
                let i = e.page_fingerprint_index(slot).expect("present");
                assert_eq!(fps[i as usize], page::fingerprint(want));
                let (chunk, at) = fingerprint_position(i);
                assert_eq!(i as usize, chunk as usize * 4096 + at);
            }
        }
    }

    /// What a repack does with one frame: copy it byte for byte, empty it, or keep only the
    /// pages of `keep` (re-encoded).
    fn repack(s: &LocalStorage, id: Uuid, frame_size: u32, keep: &[u16]) -> Vec<Frame> {
        let obj = s.open(KEY).expect("open");
        let p = FramePack::open(KEY, &*obj, id, frame_size).expect("valid pack");
        let fps: Vec<Fingerprint> = (0..p.fingerprint_chunks())
            .flat_map(|c| p.fingerprint_chunk(KEY, &*obj, c).expect("fingerprints"))
            .collect();
        let mut w = FrameWriter::new(
            s.create("q.pack").expect("create"),
            id,
            Uuid::nil(),
            frame_size,
        )
        .expect("new");
        let mut model = Vec::new();
        for (e, &keep) in entries(&p, &*obj).iter().zip(keep) {
            let mask = e.mask & keep;
            let mut out = vec![0u8; e.decoded_len()];
            p.read_frame(&*obj, e, &mut out).expect("frame reads");
            let live: Vec<u8> = (0..16u8).filter(|s| mask & (1 << s) != 0).collect();
            let pages: Vec<Vec<u8>> = live
                .iter()
                .map(|&s| {
                    let at = e.page_offset(s).expect("live pages are present");
                    out[at..at + PAGE_SIZE].to_vec()
                })
                .collect();
            let live_fps: Vec<Fingerprint> = live
                .iter()
                .map(|&s| fps[e.page_fingerprint_index(s).expect("present") as usize])
                .collect();
            if mask == 0 {
                w.append_empty().expect("empty");
            } else if mask == e.mask {
                let stored = p.read_stored(&*obj, e).expect("stored bytes");
                let copy = EncodedFrame {
                    hash: e.hash,
                    codec: e.codec,
                    bytes: stored,
                };
                w.append(mask, (&copy).into(), &live_fps).expect("copy");
            } else {
                w.append(
                    mask,
                    (&encode_frame(&pages.concat(), Compression::Zstd(3))).into(),
                    &live_fps,
                )
                .expect("re-encoded");
            }
            model.push(Frame { mask, pages });
        }
        w.finish().expect("finish");
        s.put(KEY, &s.read("q.pack").expect("read")).expect("put");
        model
    }

    fn frames_strategy() -> impl Strategy<Value = (u32, Vec<(u16, u32, u8, u16)>)> {
        (
            prop_oneof![Just(4096u32), Just(16384), Just(65536)],
            proptest::collection::vec((any::<u16>(), any::<u32>(), 0u8..5, any::<u16>()), 0..20),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Random frames (random masks, compressible, random and mixed pages, empty frames) at
        /// every frame size read back as the model says; so does a repack that copies, empties
        /// and thins them while keeping every frame index.
        #[test]
        fn frames_round_trip_and_survive_a_repack((frame_size, spec) in frames_strategy()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let s = LocalStorage::new(dir.path());
            let id = Uuid::new_v4();
            let full = page::full_mask(frame_size / PAGE_SIZE as u32);
            let frames: Vec<Frame> = spec
                .iter()
                .map(|&(mask, seed, kind, _)| {
                    let mask = if kind == 0 { 0 } else { mask & full };
                    frame(mask, seed, |slot| match kind {
                        1 => true,
                        2 => false,
                        _ => slot % 2 == 0,
                    })
                })
                .collect();
            write(&s, id, frame_size, &frames);
            check(&s, id, frame_size, &frames);
            let keep: Vec<u16> = spec.iter().map(|&(.., keep)| keep).collect();
            let repacked = repack(&s, id, frame_size, &keep);
            check(&s, id, frame_size, &repacked);
        }
    }

    /// Enough frames and pages to span several table chunks and two fingerprint chunks, each
    /// read and verified alone.
    #[test]
    fn tables_span_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let id = Uuid::new_v4();
        let frames: Vec<Frame> = (0..4900u32)
            .map(|i| frame(if i % 7 == 3 { 0 } else { 1 }, i, |_| true))
            .collect();
        write(&s, id, 4096, &frames);
        let obj = s.open(KEY).expect("open");
        let p = FramePack::open(KEY, &*obj, id, 4096).expect("valid");
        assert_eq!(p.table_chunks(), 5);
        assert_eq!(p.fingerprint_chunks(), 2);
        check(&s, id, 4096, &frames);
        let (chunk, at) = table_position(3000);
        let e = p.table_chunk(KEY, &*obj, chunk).expect("chunk")[at];
        let mut out = vec![0u8; e.decoded_len()];
        p.read_frame(&*obj, &e, &mut out).expect("reads");
        assert_eq!(out, frames[3000].pages.concat());
        assert!(matches!(
            p.table_chunk(KEY, &*obj, 5),
            Err(PackError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput
        ));
        assert!(p.fingerprint_chunk(KEY, &*obj, 2).is_err());
    }

    #[test]
    fn the_writer_refuses_what_the_format_cannot_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        for bad in [0, 2048, 12288, 131072] {
            assert!(
                FrameWriter::new(s.create(KEY).expect("c"), Uuid::nil(), Uuid::nil(), bad).is_err()
            );
        }
        let mut w = FrameWriter::new(s.create(KEY).expect("c"), Uuid::nil(), Uuid::nil(), 16384)
            .expect("new");
        let two = [page_of(1, false), page_of(2, false)].concat();
        let enc = encode_frame(&two, Compression::Lz4);
        assert_eq!(enc.codec, Codec::Raw);
        let fps = [1u128, 2];
        assert!(w.append(0, (&enc).into(), &[]).is_err(), "no pages");
        assert!(
            w.append(0b1_0001, (&enc).into(), &fps).is_err(),
            "slot beyond the frame"
        );
        assert!(
            w.append(0b0111, (&enc).into(), &[1, 2, 3]).is_err(),
            "raw bytes of 2 pages"
        );
        assert!(
            w.append(0b0011, (&enc).into(), &fps[..1]).is_err(),
            "one fingerprint short"
        );
        let zstd = EncodedFrame {
            codec: Codec::Zstd,
            bytes: vec![1; 8192],
            hash: 0,
        };
        assert!(
            w.append(0b0011, (&zstd).into(), &fps).is_err(),
            "zstd no shorter than its pages"
        );
        assert_eq!(w.frames(), 0);
        assert_eq!(w.append(0b0101, (&enc).into(), &fps).expect("valid"), 0);
        assert_eq!(w.append_empty().expect("valid"), 1);
        assert_eq!((w.frames(), w.pages(), w.stored_bytes()), (2, 2, 8192));
    }

    fn kind_of<T: std::fmt::Debug>(r: Result<T, PackError>) -> CorruptKind {
        match r {
            Err(PackError::Corrupt(c)) => c.kind,
            other => panic!("expected damage, got {other:?}"),
        }
    }

    const FS: u32 = 16384;

    /// Frames 0 and 3 compress, 1 and 4 are raw, 2 is empty: 9 pages.
    fn damage_fixture(s: &LocalStorage, id: Uuid) -> Vec<Frame> {
        let frames = vec![
            frame(0b1111, 1, |_| true),
            frame(0b0101, 2, |_| false),
            frame(0, 3, |_| true),
            frame(0b1000, 4, |_| true),
            frame(0b0011, 5, |_| false),
        ];
        write(s, id, FS, &frames);
        frames
    }

    /// Offsets of the fingerprint section, table and directory of a pack.
    fn sections(b: &[u8]) -> (usize, usize, usize, usize) {
        let t = b.len() - TRAILER_LEN;
        (
            le::u64_at(b, t + 8) as usize,
            le::u64_at(b, t + 16) as usize,
            le::u64_at(b, t + 24) as usize,
            t,
        )
    }

    fn open(s: &LocalStorage, id: Uuid) -> Result<(FramePack, Arc<dyn Object>), PackError> {
        let obj = s.open(KEY).expect("open");
        FramePack::open(KEY, &*obj, id, FS).map(|p| (p, obj))
    }

    use std::sync::Arc;

    /// One damage per documented byte range (header, frames, fingerprints, table, directory,
    /// trailer, and a truncated file), each with its kind and diagnosis.
    #[test]
    fn each_region_of_damage_has_its_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let id = Uuid::new_v4();
        damage_fixture(&s, id);
        let good = s.read(KEY).expect("read");
        let len = good.len();
        let (fp, table, dirat, t) = sections(&good);
        assert_eq!(
            (table - fp, dirat - table, t - dirat),
            (9 * 16, 5 * 40, 8 + 4)
        );
        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x40;
            b
        };
        let put = |at: usize, v: &[u8]| {
            let mut b = good.clone();
            b[at..at + v.len()].copy_from_slice(v);
            reseal(&mut b);
            b
        };
        use CorruptKind::*;
        let cases: Vec<(Vec<u8>, CorruptKind, &str)> = vec![
            (
                good[..100].to_vec(),
                Length,
                "shorter than header and trailer",
            ),
            (
                good[..len - 1].to_vec(),
                TrailerChecksum,
                "pack trailer checksum mismatch",
            ),
            (flip(3), HeaderChecksum, "pack header checksum mismatch"),
            (flip(40), HeaderChecksum, "pack header checksum mismatch"),
            (put(0, b"RPFSXXXX"), Magic, "bad pack magic"),
            (
                put(8, &2u16.to_le_bytes()),
                Version,
                "pack version 2 is not a frame pack",
            ),
            (
                put(12, &8192u32.to_le_bytes()),
                BlockSize,
                "store uses 16384",
            ),
            (put(16, &[7; 16]), WrongId, "expected"),
            (
                flip(t + 9),
                TrailerChecksum,
                "pack trailer checksum mismatch",
            ),
            (
                flip(len - 1),
                TrailerChecksum,
                "pack trailer checksum mismatch",
            ),
            (put(t, b"RPFSXXXX"), Magic, "bad pack trailer magic"),
            (
                put(t + 8, &10u64.to_le_bytes()),
                Bounds,
                "sections do not fit",
            ),
            (
                put(t + 16, &(table as u64 + 16).to_le_bytes()),
                Bounds,
                "sections do not fit",
            ),
            (
                put(t + 32, &10u32.to_le_bytes()),
                Bounds,
                "sections do not fit",
            ),
            (
                put(t + 32, &100u32.to_le_bytes()),
                Bounds,
                "100 pages cannot fit 5 frames",
            ),
            (
                put(t + 36, &u32::MAX.to_le_bytes()),
                Bounds,
                "sections do not fit",
            ),
            (
                flip(dirat + 1),
                TableChecksum,
                "pack directory checksum mismatch",
            ),
            (
                put(dirat + 4, &1u32.to_le_bytes()),
                Bounds,
                "table chunk 0 first page 1",
            ),
        ];
        for (i, (bytes, kind, want)) in cases.into_iter().enumerate() {
            s.put(KEY, &bytes).expect("put");
            let r = open(&s, id);
            let err = format!("{:?}", r.as_ref().err());
            assert!(err.contains(want), "case {i}: {err}");
            assert_eq!(kind_of(r), kind, "case {i}: {err}");
        }
        s.put(KEY, &good).expect("put");
        assert_eq!(kind_of(open(&s, Uuid::new_v4())), WrongId);
        let obj = s.open(KEY).expect("open");
        assert_eq!(kind_of(FramePack::open(KEY, &*obj, id, 65536)), BlockSize);

        // The table and the fingerprints are checked when their chunk is read.
        s.put(KEY, &flip(table + 2)).expect("put");
        let (p, obj) = open(&s, id).expect("directory intact");
        let r = p.table_chunk(KEY, &*obj, 0);
        assert!(format!("{r:?}").contains("pack table chunk 0 checksum mismatch"));
        assert_eq!(kind_of(r), TableChecksum);
        assert!(p.fingerprint_chunk(KEY, &*obj, 0).is_ok());
        s.put(KEY, &flip(fp + 3)).expect("put");
        let (p, obj) = open(&s, id).expect("directory intact");
        let r = p.fingerprint_chunk(KEY, &*obj, 0);
        assert!(format!("{r:?}").contains("pack fingerprint chunk 0 checksum mismatch"));
        assert_eq!(kind_of(r), BodyChecksum);
        assert!(p.table_chunk(KEY, &*obj, 0).is_ok());

        // Damage inside a frame: that frame fails to read, the others read.
        s.put(KEY, &good).expect("put");
        let (p, obj) = open(&s, id).expect("valid");
        let es = entries(&p, &*obj);
        for victim in [0, 1, 3] {
            let mut bad = good.clone();
            bad[es[victim].offset as usize + 7] ^= 0x01;
            s.put(KEY, &bad).expect("put");
            let obj = s.open(KEY).expect("open");
            for (i, e) in es.iter().enumerate() {
                let mut out = vec![0u8; e.decoded_len()];
                let r = p.read_frame(&*obj, e, &mut out);
                assert_eq!(r.is_err(), i == victim, "frame {i}, victim {victim}: {r:?}");
            }
        }
    }

    /// Table entries that pass their chunk's checksum but break the format are refused, each
    /// with its diagnosis.
    #[test]
    fn hostile_table_entries_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let id = Uuid::new_v4();
        damage_fixture(&s, id);
        let good = s.read(KEY).expect("read");
        let (fp, table, ..) = sections(&good);
        let (p, obj) = open(&s, id).expect("valid");
        let es = entries(&p, &*obj);
        assert_eq!(
            es.iter().map(|e| e.codec).collect::<Vec<_>>(),
            [Codec::Lz4, Codec::Raw, Codec::Raw, Codec::Zstd, Codec::Raw]
        );
        let entry = |i: usize, field: usize| table + i * ENTRY_LEN + field;
        let put = |at: usize, v: &[u8]| {
            let mut b = good.clone();
            b[at..at + v.len()].copy_from_slice(v);
            reseal(&mut b);
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                put(entry(4, 0), &(fp as u64).to_le_bytes()),
                "frames region ending at",
            ),
            (put(entry(1, 0), &10u64.to_le_bytes()), "are not after"),
            (
                put(entry(0, 0), &(es[1].offset).to_le_bytes()),
                "are not after",
            ),
            (
                put(entry(0, 18), &0x1fu16.to_le_bytes()),
                "mask 0x1f names slots beyond",
            ),
            (put(entry(0, 16), &[3]), "codec 3 is not raw"),
            (put(entry(0, 16), &[9]), "codec 9 is not raw"),
            (put(entry(1, 8), &5u32.to_le_bytes()), "first page 5 where"),
            (put(entry(0, 17), &[16]), "16 slots in a pack of 4"),
            (put(entry(3, 20), &[1]), "reserved bytes are not zero"),
            (
                put(entry(1, 12), &8191u32.to_le_bytes()),
                "stored length 8191",
            ),
            (
                put(entry(2, 24), &[1]),
                "stored length 0 of a Raw frame of 0 pages",
            ),
            // Frame 3 claims a second page: frame 4 no longer starts where it says.
            (
                put(entry(3, 18), &0b1100u16.to_le_bytes()),
                "first page 7 where",
            ),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            s.put(KEY, &bytes).expect("put");
            let (p, obj) = open(&s, id).expect("header, trailer and directory intact");
            let r = p.table_chunk(KEY, &*obj, 0);
            let err = format!("{r:?}");
            assert!(err.contains(want), "case {i}: {err}");
            assert_eq!(kind_of(r), CorruptKind::Entry, "case {i}: {err}");
        }
        // The last (raw) frame claims a third page: its pages run past the pack's count; one
        // page fewer leaves the chunk short of it.
        for (mask, want) in [(0b0111u16, "go past page 9"), (0b0001, "ends at page 8")] {
            let mut b = put(entry(4, 18), &mask.to_le_bytes());
            let raw_len = mask.count_ones() * PAGE_SIZE as u32;
            b[entry(4, 12)..entry(4, 12) + 4].copy_from_slice(&raw_len.to_le_bytes());
            reseal(&mut b);
            s.put(KEY, &b).expect("put");
            let (p, obj) = open(&s, id).expect("intact");
            let r = p.table_chunk(KEY, &*obj, 0);
            assert!(format!("{r:?}").contains(want), "{r:?}");
            assert_eq!(kind_of(r), CorruptKind::Entry);
        }

        // Entries built by hand cannot make reads allocate beyond a frame.
        s.put(KEY, &good).expect("put");
        let (p, obj) = open(&s, id).expect("valid");
        let mut e = es[0];
        e.stored_len = u32::MAX;
        let mut out = vec![0u8; e.decoded_len()];
        assert!(p.read_frame(&*obj, &e, &mut out).is_err());
        assert!(p.read_stored(&*obj, &e).is_err());
        assert!(p.read_frame(&*obj, &es[0], &mut [0u8; 10]).is_err());
    }

    /// Writes the seed corpus of the `frame_pack` fuzz target:
    /// `cargo test --lib --features testing store::frames::tests::write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/frame_pack"]
    fn write_fuzz_seeds() {
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_pack");
        std::fs::create_dir_all(&out).expect("corpus dir");
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        damage_fixture(&s, Uuid::new_v4());
        std::fs::write(out.join("seed-16k"), s.read(KEY).expect("read")).expect("seed");
        write(&s, Uuid::new_v4(), 4096, &[]);
        std::fs::write(out.join("seed-empty"), s.read(KEY).expect("read")).expect("seed");
        let frames: Vec<Frame> = (0..40u32)
            .map(|i| frame(if i % 5 == 2 { 0 } else { 1 }, i, |_| i % 3 != 0))
            .collect();
        write(&s, Uuid::new_v4(), 4096, &frames);
        std::fs::write(out.join("seed-4k"), s.read(KEY).expect("read")).expect("seed");
        let frames = [
            frame(0xf0f1, 9, |s| s < 12),
            frame(0, 1, |_| true),
            frame(0x8000, 2, |_| true),
        ];
        write(&s, Uuid::new_v4(), 65536, &frames);
        std::fs::write(out.join("seed-64k"), s.read(KEY).expect("read")).expect("seed");
    }
}
