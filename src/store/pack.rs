//! Pack files: the blocks one disk restore point stored, plus a table saying where each one is.
//!
//! ```text
//! offset          size  field
//! 0               64    header: magic "RPFSPACK", version u16, reserved u16, block size u32,
//!                       pack id (16 bytes, the UUID of the disk restore point that wrote it),
//!                       reserved (28 zero bytes), crc32c of bytes 0..60
//! 64              ...   stored blocks, back to back (LZ4 blocks, zstd frames or raw blocks)
//! table_offset    40*n  table, sorted by block number: block u64, offset u64, stored length u32,
//!                       flags u32 (bit 0: zstd, bit 1: LZ4, neither: raw; version 1 packs have
//!                       no LZ4), xxh3-128 of the uncompressed block (16 bytes)
//! len - 32        32    trailer: magic "RPFSPEND", table offset u64, entry count u64,
//!                       crc32c of the table u32, crc32c of trailer bytes 0..28
//! ```
//!
//! All integers are little-endian. The magics are the ASCII of "RPFS" + "PACK"/"PEND" so a hexdump
//! names the file. Invariants: a pack is written once and published whole; it is only ever
//! replaced whole by a repack that keeps its id and a subset of its blocks with identical bytes, so
//! `(pack id, block number)` names the same content for the store's lifetime. [`PackIndex::load`]
//! checks every length and offset against the file length before trusting it.

#![warn(clippy::arithmetic_side_effects)]

use std::io::{self, Write};

use super::block::{self, Codec, DecodeError};
use super::le;
use super::storage::{Object, ObjectWriter};
use super::{Corrupt, CorruptKind};
use uuid::Uuid;

thread_local! {
    /// Scratch space for the stored bytes of compressed blocks being read.
    static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Format version of pack files written by this build: 2 added LZ4 blocks. Version 1 packs
/// (zstd or raw blocks only) are still read.
pub const VERSION: u16 = 2;
const HEADER_MAGIC: &[u8; 8] = b"RPFSPACK";
const TRAILER_MAGIC: &[u8; 8] = b"RPFSPEND";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Size of one table entry.
pub const ENTRY_LEN: usize = 40;
/// Size of the fixed trailer.
pub const TRAILER_LEN: usize = 32;
const FLAG_ZSTD: u32 = 1;
const FLAG_LZ4: u32 = 2;
/// A pack being written starts writeback every this many bytes (see `start_writeback`).
const WRITEBACK_EVERY: u64 = 32 << 20;

const _: () = assert!(HEADER_LEN == 8 + 2 + 2 + 4 + 16 + 28 + 4);
const _: () = assert!(ENTRY_LEN == 8 + 8 + 4 + 4 + 16);
const _: () = assert!(TRAILER_LEN == 8 + 8 + 8 + 4 + 4);

/// Where one stored block lives inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub block: u64,
    pub offset: u64,
    pub stored_len: u32,
    pub codec: Codec,
    pub hash: u128,
}

impl PackEntry {
    fn flags(&self) -> u32 {
        match self.codec {
            Codec::Raw => 0,
            Codec::Zstd => FLAG_ZSTD,
            Codec::Lz4 => FLAG_LZ4,
        }
    }
}

/// The codec a table entry's flags name in a pack of `version`, if they name exactly one.
fn codec_of(flags: u32, version: u16) -> Option<Codec> {
    match flags {
        0 => Some(Codec::Raw),
        FLAG_ZSTD => Some(Codec::Zstd),
        FLAG_LZ4 if version >= 2 => Some(Codec::Lz4),
        _ => None,
    }
}

/// Streams blocks into a new pack object.
pub struct PackWriter {
    out: Box<dyn ObjectWriter>,
    pos: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    /// Starts a pack with the given id and block size.
    pub fn new(mut out: Box<dyn ObjectWriter>, id: Uuid, block_size: u32) -> io::Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(HEADER_MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&block_size.to_le_bytes());
        h[16..32].copy_from_slice(id.as_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&h)?;
        Ok(PackWriter {
            out,
            pos: HEADER_LEN as u64,
            entries: Vec::new(),
        })
    }

    /// Appends one stored block. Blocks must arrive in increasing block order.
    pub fn append(
        &mut self,
        block: u64,
        stored: &[u8],
        codec: Codec,
        hash: u128,
    ) -> io::Result<()> {
        if self.entries.last().is_some_and(|e| e.block >= block) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pack blocks out of order at block {block}"),
            ));
        }
        let stored_len = u32::try_from(stored.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "stored block too large"))?;
        self.out.write_all(stored)?;
        let end = self
            .pos
            .checked_add(stored.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pack over 2^64 bytes"))?;
        if self.pos / WRITEBACK_EVERY != end / WRITEBACK_EVERY {
            self.out.start_writeback()?;
        }
        self.entries.push(PackEntry {
            block,
            offset: self.pos,
            stored_len,
            codec,
            hash,
        });
        self.pos = end;
        Ok(())
    }

    /// Number of blocks appended so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no block has been appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the table and trailer and publishes the pack. Returns its size in bytes.
    pub fn finish(mut self) -> io::Result<u64> {
        let mut table = Vec::with_capacity(self.entries.len().saturating_mul(ENTRY_LEN));
        for e in &self.entries {
            table.extend_from_slice(&e.block.to_le_bytes());
            table.extend_from_slice(&e.offset.to_le_bytes());
            table.extend_from_slice(&e.stored_len.to_le_bytes());
            table.extend_from_slice(&e.flags().to_le_bytes());
            table.extend_from_slice(&e.hash.to_le_bytes());
        }
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.pos.to_le_bytes());
        t[16..24].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        t[24..28].copy_from_slice(&crc32c::crc32c(&table).to_le_bytes());
        let crc = crc32c::crc32c(&t[..28]);
        t[28..32].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&table)?;
        self.out.write_all(&t)?;
        self.out.commit()
    }
}

/// The table of a published pack, validated.
#[derive(Debug, Clone)]
pub struct PackIndex {
    pub id: Uuid,
    pub block_size: u32,
    pub entries: Vec<PackEntry>,
    /// Where the table starts: the end of the data region.
    pub data_end: u64,
}

impl PackIndex {
    /// Reads and validates the header, trailer and table of `obj` (named `file` in errors).
    pub fn load(
        obj: &dyn Object,
        file: &str,
        expect_id: Uuid,
        expect_block_size: u32,
    ) -> Result<PackIndex, PackError> {
        let corrupt = |kind: CorruptKind, detail: String| {
            PackError::Corrupt(Corrupt::new(file, kind, detail))
        };
        use CorruptKind::*;
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
        if !(1..=VERSION).contains(&version) {
            return Err(corrupt(
                Version,
                format!("unsupported pack version {version}"),
            ));
        }
        let block_size = le::u32_at(&h, 12);
        if block_size != expect_block_size {
            return Err(corrupt(
                BlockSize,
                format!("pack block size {block_size}, store uses {expect_block_size}"),
            ));
        }
        let id = Uuid::from_slice(&h[16..32]).map_err(|e| corrupt(WrongId, e.to_string()))?;
        if id != expect_id {
            return Err(corrupt(
                WrongId,
                format!("pack holds id {id}, expected {expect_id}"),
            ));
        }
        let mut t = [0u8; TRAILER_LEN];
        // `len` holds at least a header and a trailer (checked above).
        let trailer_at = len.saturating_sub(TRAILER_LEN as u64);
        obj.read_exact_at(&mut t, trailer_at)
            .map_err(PackError::Io)?;
        if crc32c::crc32c(&t[..28]) != le::u32_at(&t, 28) {
            return Err(corrupt(
                TrailerChecksum,
                "pack trailer checksum mismatch".into(),
            ));
        }
        if &t[0..8] != TRAILER_MAGIC {
            return Err(corrupt(Magic, "bad pack trailer magic".into()));
        }
        let table_offset = le::u64_at(&t, 8);
        let count = le::u64_at(&t, 16);
        let table_len = count
            .checked_mul(ENTRY_LEN as u64)
            .ok_or_else(|| corrupt(Bounds, format!("absurd entry count {count}")))?;
        let expected_len = table_offset
            .checked_add(table_len)
            .and_then(|v| v.checked_add(TRAILER_LEN as u64));
        if table_offset < HEADER_LEN as u64 || expected_len != Some(len) {
            return Err(corrupt(
                Bounds,
                format!(
                    "table at {table_offset} with {count} entries does not fit a {len}-byte pack"
                ),
            ));
        }
        let table_len = usize::try_from(table_len)
            .map_err(|_| corrupt(Bounds, format!("table of {table_len} bytes too large")))?;
        let mut table = vec![0u8; table_len];
        obj.read_exact_at(&mut table, table_offset)
            .map_err(PackError::Io)?;
        if crc32c::crc32c(&table) != le::u32_at(&t, 24) {
            return Err(corrupt(
                TableChecksum,
                "pack table checksum mismatch".into(),
            ));
        }
        let mut entries = Vec::with_capacity(table.len() / ENTRY_LEN);
        for (i, e) in table.chunks_exact(ENTRY_LEN).enumerate() {
            let flags = le::u32_at(e, 20);
            let Some(codec) = codec_of(flags, version) else {
                return Err(corrupt(
                    Entry,
                    format!(
                        "table entry {i} has flags {flags:#x}, which name no codec of a version \
                         {version} pack"
                    ),
                ));
            };
            let entry = PackEntry {
                block: le::u64_at(e, 0),
                offset: le::u64_at(e, 8),
                stored_len: le::u32_at(e, 16),
                codec,
                hash: le::u128_at(e, 24),
            };
            let in_bounds = entry.offset >= HEADER_LEN as u64
                && entry
                    .offset
                    .checked_add(u64::from(entry.stored_len))
                    .is_some_and(|end| end <= table_offset);
            let len_ok = if entry.codec.is_compressed() {
                entry.stored_len > 0 && entry.stored_len < block_size
            } else {
                entry.stored_len == block_size
            };
            // Written in block order, back to back: no block twice, no bytes shared.
            let ordered = entries.last().is_none_or(|p: &PackEntry| {
                p.block < entry.block
                    && p.offset
                        .checked_add(u64::from(p.stored_len))
                        .is_some_and(|end| end <= entry.offset)
            });
            if !in_bounds || !len_ok || !ordered {
                return Err(corrupt(
                    Entry,
                    format!("table entry {i} is invalid: {entry:?}"),
                ));
            }
            entries.push(entry);
        }
        Ok(PackIndex {
            id,
            block_size,
            entries,
            data_end: table_offset,
        })
    }

    /// The entry for `block`, if this pack stores it.
    pub fn find(&self, block: u64) -> Option<&PackEntry> {
        self.entries
            .binary_search_by_key(&block, |e| e.block)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Reads the stored (still encoded) bytes of `entry`.
    pub fn read_stored(&self, obj: &dyn Object, entry: &PackEntry) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; entry.stored_len as usize];
        obj.read_exact_at(&mut buf, entry.offset)?;
        Ok(buf)
    }

    /// Reads, decodes and verifies one block into `out` (exactly one block long). Raw blocks
    /// are read straight into `out`; compressed ones through a per-thread scratch buffer.
    pub fn read_block(
        &self,
        obj: &dyn Object,
        entry: &PackEntry,
        out: &mut [u8],
    ) -> Result<(), BlockReadError> {
        if entry.codec == Codec::Raw {
            if entry.stored_len as usize != out.len() {
                return Err(BlockReadError::Decode(block::DecodeError::Length {
                    got: entry.stored_len as usize,
                    want: out.len(),
                }));
            }
            obj.read_exact_at(out, entry.offset)
                .map_err(BlockReadError::Io)?;
            return block::verify(out, entry.hash).map_err(BlockReadError::Decode);
        }
        STORED.with_borrow_mut(|stored| {
            stored.resize(entry.stored_len as usize, 0);
            obj.read_exact_at(stored, entry.offset)
                .map_err(BlockReadError::Io)?;
            block::decode(stored, entry.codec, entry.hash, out).map_err(BlockReadError::Decode)
        })
    }
}

/// Failure to load a pack's table (or, in format 2, a frame pack's or page map's parts): the
/// storage failed (I/O, not damage), or what it returned is damaged.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Io(io::Error),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Failure to read one block out of a pack.
#[derive(Debug, thiserror::Error)]
pub enum BlockReadError {
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Decode(DecodeError),
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

    const BS: u32 = 4096;

    fn block(seed: u8) -> Vec<u8> {
        (0..BS).map(|i| (i as u8).wrapping_mul(seed)).collect()
    }

    fn write_pack(s: &LocalStorage, id: Uuid) -> Vec<Vec<u8>> {
        let mut w = PackWriter::new(s.create("p.pack").expect("create"), id, BS).expect("new");
        let blocks: Vec<Vec<u8>> = (1..=5).map(block).collect();
        for (i, b) in blocks.iter().enumerate() {
            let h = block::hash(b);
            let enc = block::encode(b, h, block::Compression::Lz4);
            w.append(i as u64 * 3, &enc.bytes, enc.codec, h)
                .expect("append");
        }
        w.finish().expect("finish");
        blocks
    }

    fn load(s: &LocalStorage, id: Uuid) -> Result<PackIndex, PackError> {
        PackIndex::load(&*s.open("p.pack").expect("open"), "p.pack", id, BS)
    }

    #[test]
    fn blocks_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let id = Uuid::new_v4();
        let blocks = write_pack(&s, id);
        let idx = load(&s, id).expect("valid pack");
        let obj = s.open("p.pack").expect("open");
        for (i, b) in blocks.iter().enumerate() {
            let e = idx.find(i as u64 * 3).expect("present");
            let mut out = vec![0u8; BS as usize];
            idx.read_block(&*obj, e, &mut out).expect("reads");
            assert_eq!(&out, b);
        }
        assert!(idx.find(1).is_none());
    }

    #[test]
    fn out_of_order_append_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let mut w =
            PackWriter::new(s.create("p.pack").expect("create"), Uuid::new_v4(), BS).expect("new");
        let b = block(1);
        w.append(5, &b, Codec::Raw, block::hash(&b)).expect("first");
        assert!(w.append(5, &b, Codec::Raw, block::hash(&b)).is_err());
    }

    /// Rewrites a pack's header version and each table entry's flags, with valid checksums.
    fn rewrite(bytes: &mut [u8], version: u16, flags: impl Fn(u32) -> u32) {
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        let len = bytes.len();
        let t = len - TRAILER_LEN;
        let (table_at, count) = (
            le::u64_at(bytes, t + 8) as usize,
            le::u64_at(bytes, t + 16) as usize,
        );
        for i in 0..count {
            let at = table_at + i * ENTRY_LEN + 20;
            let f = flags(le::u32_at(bytes, at));
            bytes[at..at + 4].copy_from_slice(&f.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes[table_at..t]);
        bytes[t + 24..t + 28].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[t..t + 28]);
        bytes[t + 28..t + 32].copy_from_slice(&crc.to_le_bytes());
    }

    /// Packs of rpfs 0.1 (version 1, zstd frames) still read; a version 1 pack cannot hold
    /// LZ4 blocks, and flags naming no codec, or two, are refused.
    #[test]
    fn version_1_zstd_packs_still_read_and_bad_flags_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let id = Uuid::new_v4();
        let blocks: Vec<Vec<u8>> = (1..=4).map(block).collect();
        let mut w = PackWriter::new(s.create("p.pack").expect("create"), id, BS).expect("new");
        for (i, b) in blocks.iter().enumerate() {
            let frame = zstd::bulk::compress(b, -1).expect("zstd");
            assert!(frame.len() < b.len());
            w.append(i as u64, &frame, Codec::Zstd, block::hash(b))
                .expect("append");
        }
        w.finish().expect("finish");
        let mut v1 = s.read("p.pack").expect("read");
        rewrite(&mut v1, 1, |f| f);
        s.put("p.pack", &v1).expect("put");
        let idx = load(&s, id).expect("a version 1 pack loads");
        let obj = s.open("p.pack").expect("open");
        for (e, b) in idx.entries.iter().zip(&blocks) {
            assert_eq!(e.codec, Codec::Zstd);
            let mut out = vec![0u8; BS as usize];
            idx.read_block(&*obj, e, &mut out).expect("reads");
            assert_eq!(&out, b);
        }

        let cases: [(u16, u32, &str); 4] = [
            (
                1,
                FLAG_LZ4,
                "flags 0x2, which name no codec of a version 1 pack",
            ),
            (2, FLAG_ZSTD | FLAG_LZ4, "flags 0x3"),
            (2, 8, "flags 0x8"),
            (3, FLAG_ZSTD, "unsupported pack version 3"),
        ];
        for (version, flags, want) in cases {
            let mut bad = v1.clone();
            rewrite(&mut bad, version, |_| flags);
            s.put("p.pack", &bad).expect("put");
            let r = load(&s, id);
            let err = format!("{:?}", r.as_ref().err());
            assert!(err.contains(want), "{err}");
            let kind = if version == 3 {
                CorruptKind::Version
            } else {
                CorruptKind::Entry
            };
            assert_eq!(kind_of(r), kind, "{err}");
        }
    }

    fn kind_of(r: Result<PackIndex, PackError>) -> CorruptKind {
        match r {
            Err(PackError::Corrupt(c)) => c.kind,
            other => panic!("expected damage, got {other:?}"),
        }
    }

    /// Reseals header, table and trailer checksums of `bytes` after `edit`, so the damage
    /// reaches the checks behind them.
    fn resealed(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = bytes.to_vec();
        edit(&mut b);
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        let t = b.len() - TRAILER_LEN;
        let table_at = (le::u64_at(&b, t + 8) as usize).min(t);
        let crc = crc32c::crc32c(&b[table_at..t]);
        b[t + 24..t + 28].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[t..t + 28]);
        b[t + 28..t + 32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// One damage per documented byte range (header 0..64, data, table, trailer), each with its
    /// kind and exact diagnosis.
    #[test]
    fn each_region_of_damage_has_its_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let id = Uuid::new_v4();
        write_pack(&s, id);
        let good = s.read("p.pack").expect("read");
        let len = good.len();
        let t = len - TRAILER_LEN;
        let table_at = t - 5 * ENTRY_LEN;
        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x40;
            b
        };
        let put = |at: usize, v: &[u8]| resealed(&good, |b| b[at..at + v.len()].copy_from_slice(v));
        let cases: Vec<(Vec<u8>, CorruptKind, &str)> = vec![
            (
                good[..90].to_vec(),
                CorruptKind::Length,
                "shorter than header and trailer",
            ),
            (
                flip(3),
                CorruptKind::HeaderChecksum,
                "pack header checksum mismatch",
            ),
            (
                flip(20),
                CorruptKind::HeaderChecksum,
                "pack header checksum mismatch",
            ),
            (put(0, b"RPFSXXXX"), CorruptKind::Magic, "bad pack magic"),
            (
                put(8, &9u16.to_le_bytes()),
                CorruptKind::Version,
                "unsupported pack version 9",
            ),
            (
                put(12, &8192u32.to_le_bytes()),
                CorruptKind::BlockSize,
                "store uses 4096",
            ),
            (put(16, &[7; 16]), CorruptKind::WrongId, "expected"),
            (
                flip(table_at + 2),
                CorruptKind::TableChecksum,
                "pack table checksum mismatch",
            ),
            (
                flip(t + 9),
                CorruptKind::TrailerChecksum,
                "pack trailer checksum mismatch",
            ),
            (
                flip(len - 1),
                CorruptKind::TrailerChecksum,
                "pack trailer checksum mismatch",
            ),
            (
                put(t, b"RPFSXXXX"),
                CorruptKind::Magic,
                "bad pack trailer magic",
            ),
            (
                put(t + 16, &u64::MAX.to_le_bytes()),
                CorruptKind::Bounds,
                "absurd entry count",
            ),
            (
                put(t + 16, &6u64.to_le_bytes()),
                CorruptKind::Bounds,
                "does not fit",
            ),
            (
                put(t + 8, &10u64.to_le_bytes()),
                CorruptKind::Bounds,
                "does not fit",
            ),
            // An entry whose offset points past the data area.
            (
                put(table_at + 8, &(t as u64).to_le_bytes()),
                CorruptKind::Entry,
                "table entry 0 is invalid",
            ),
            (
                put(table_at + 20, &8u32.to_le_bytes()),
                CorruptKind::Entry,
                "flags 0x8",
            ),
        ];
        for (i, (bytes, kind, want)) in cases.into_iter().enumerate() {
            s.put("p.pack", &bytes).expect("put");
            let r = load(&s, id);
            let err = format!("{:?}", r.as_ref().err());
            assert!(err.contains(want), "case {i}: {err}");
            assert_eq!(kind_of(r), kind, "case {i}: {err}");
        }
        s.put("p.pack", &good).expect("put");
        assert_eq!(kind_of(load(&s, Uuid::new_v4())), CorruptKind::WrongId);

        // Damage inside a stored block: the table loads, that block fails, the others read.
        let idx = load(&s, id).expect("valid");
        let victim = idx.entries[2];
        let mut bad = good.clone();
        bad[victim.offset as usize + 7] ^= 0x01;
        s.put("p.pack", &bad).expect("put");
        let obj = s.open("p.pack").expect("open");
        let mut out = vec![0u8; BS as usize];
        for e in &idx.entries {
            let r = idx.read_block(&*obj, e, &mut out);
            assert_eq!(r.is_err(), e.block == victim.block, "block {}", e.block);
        }
    }
}
