//! Writing a frame pack: [`FrameWriter`] streams frames to a new object and writes the
//! fingerprints, table, directory and trailer at [`FrameWriter::finish`].
//!
//! Invariants: a frame is checked against the format before anything is written (mask within
//! the frame's slots, stored length possible for its codec, one fingerprint per page); nothing
//! is published until `finish` commits the object, so a writer dropped after an error leaves no
//! pack.

#![warn(clippy::arithmetic_side_effects)]

use std::io::{self, Write};

use super::entry::*;
use crate::store::block::Codec;
use crate::store::page::{self, Fingerprint, PAGE_SIZE};
use crate::store::storage::ObjectWriter;
use uuid::Uuid;

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
