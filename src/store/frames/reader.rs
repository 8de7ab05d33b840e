//! Reading a published frame pack: [`FramePack::open`] validates header, trailer and
//! directory; table and fingerprint chunks are read and checked one at a time; frames are read
//! and decoded with their hash verified.
//!
//! Invariants: every count and offset is checked against the object's length before anything
//! is allocated; every chunk is verified by its crc32c before use; a damaged frame fails alone
//! (see the parent module for the [`CorruptKind`] of each region).

#![warn(clippy::arithmetic_side_effects)]

use std::io;

use super::entry::*;
use crate::store::block::{self, Codec};
use crate::store::le;
use crate::store::pack::{BlockReadError, PackError};
use crate::store::page::{self, Fingerprint, PAGE_SIZE};
use crate::store::storage::Object;
use crate::store::{Corrupt, CorruptKind};
use uuid::Uuid;

thread_local! {
    /// Scratch space for the stored bytes of compressed frames being read.
    static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
