//! Block maps: for one disk restore point, which pack holds each block of the disk (or that the
//! block is a hole). Every map is complete, so resolving a block costs one array lookup whatever
//! the depth of the chain behind it.
//!
//! ```text
//! offset  size  field
//! 0       64    header: magic "RPFSBMAP", version u16, reserved u16, block size u32,
//!               disk size u64, block count u64, pack count u32, body length u32,
//!               crc32c of the body u32, reserved (16 zero bytes), crc32c of bytes 0..60
//! 64      ...   body: one zstd frame holding `pack count` pack ids (16 bytes each) followed by
//!               `block count` u32 entries: 0 = hole, k = the k-th pack id
//! ```
//!
//! Invariants: block count is exactly `ceil(disk size / block size)` and at most [`MAX_BLOCKS`];
//! the body decompresses to exactly the size the header implies, into a buffer of that size; every
//! entry names a listed pack. Maps are written once and never changed.

#![warn(clippy::arithmetic_side_effects)]

use super::le;
use super::{Corrupt, CorruptKind};
use std::io;
use uuid::Uuid;

/// Format version of block maps written by this build.
pub const VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"RPFSBMAP";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Largest disk a map can describe, in blocks (1 GiB of entries; 16 TiB at 64 KiB blocks).
pub const MAX_BLOCKS: u64 = 1 << 28;
const _: () = assert!(HEADER_LEN == 8 + 2 + 2 + 4 + 8 + 8 + 4 + 4 + 4 + 16 + 4);

/// The block map of one disk restore point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub block_size: u32,
    pub disk_size: u64,
    /// Packs referenced by `entries`; entry `k` means `packs[k - 1]`.
    pub packs: Vec<Uuid>,
    /// One entry per block: 0 for a hole, else a 1-based index into `packs`.
    pub entries: Vec<u32>,
}

/// Number of blocks covering `disk_size` bytes.
pub fn block_count(disk_size: u64, block_size: u32) -> u64 {
    disk_size.div_ceil(u64::from(block_size))
}

impl BlockMap {
    /// The pack holding `block`, or `None` for a hole (or a block past the end).
    pub fn pack_of(&self, block: u64) -> Option<Uuid> {
        let e = *self.entries.get(usize::try_from(block).ok()?)?;
        if e == 0 {
            None
        } else {
            self.packs.get((e as usize).checked_sub(1)?).copied()
        }
    }

    /// Number of blocks that hold data (not holes).
    pub fn data_blocks(&self) -> u64 {
        self.entries.iter().filter(|&&e| e != 0).count() as u64
    }

    /// Serialises the map; fails only if compression does.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let ids = self.packs.len().saturating_mul(16);
        let mut raw = Vec::with_capacity(ids.saturating_add(self.entries.len().saturating_mul(4)));
        for p in &self.packs {
            raw.extend_from_slice(p.as_bytes());
        }
        for e in &self.entries {
            raw.extend_from_slice(&e.to_le_bytes());
        }
        // Level 3: maps are small and mostly long runs; compression here is nearly free.
        let body = zstd::bulk::compress(&raw, 3)?;
        let body_len = u32::try_from(body.len())
            .map_err(|_| io::Error::other("a block map body over 4 GiB"))?;
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.disk_size.to_le_bytes());
        h[24..32].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        h[32..36].copy_from_slice(&(self.packs.len() as u32).to_le_bytes());
        h[36..40].copy_from_slice(&body_len.to_le_bytes());
        h[40..44].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses and validates a map read from `file`, expecting the store's block size.
    pub fn decode(file: &str, bytes: &[u8], expect_block_size: u32) -> Result<BlockMap, Corrupt> {
        let corrupt = |kind: CorruptKind, detail: String| Corrupt::new(file, kind, detail);
        use CorruptKind::*;
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(
                Length,
                format!("map is {} bytes, shorter than its header", bytes.len()),
            ));
        }
        let u32_at = |at: usize| le::u32_at(bytes, at);
        let u64_at = |at: usize| le::u64_at(bytes, at);
        if crc32c::crc32c(&bytes[..60]) != u32_at(60) {
            return Err(corrupt(
                HeaderChecksum,
                "map header checksum mismatch".into(),
            ));
        }
        if &bytes[0..8] != MAGIC {
            return Err(corrupt(Magic, "bad map magic".into()));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(corrupt(
                Version,
                format!("unsupported map version {version}"),
            ));
        }
        let block_size = u32_at(12);
        if block_size != expect_block_size {
            return Err(corrupt(
                BlockSize,
                format!("map block size {block_size}, store uses {expect_block_size}"),
            ));
        }
        let disk_size = u64_at(16);
        let blocks = u64_at(24);
        let pack_count = u64::from(u32_at(32));
        let body_len = u32_at(36) as usize;
        if blocks != block_count(disk_size, block_size) || blocks > MAX_BLOCKS {
            return Err(corrupt(
                Bounds,
                format!("{blocks} blocks do not describe a {disk_size}-byte disk within limits"),
            ));
        }
        if pack_count > blocks {
            return Err(corrupt(
                Bounds,
                format!("{pack_count} packs for {blocks} blocks"),
            ));
        }
        let body = &bytes[HEADER_LEN..];
        if body.len() != body_len {
            return Err(corrupt(
                Length,
                format!("map body is {} bytes, header says {body_len}", body.len()),
            ));
        }
        if crc32c::crc32c(body) != u32_at(40) {
            return Err(corrupt(BodyChecksum, "map body checksum mismatch".into()));
        }
        // Bounded by MAX_BLOCKS above: at most 16 + 4 bytes per block.
        let sizes = usize::try_from(pack_count)
            .ok()
            .and_then(|p| p.checked_mul(16))
            .and_then(|ids| {
                let entries = usize::try_from(blocks).ok()?.checked_mul(4)?;
                Some((ids, ids.checked_add(entries)?))
            });
        let Some((ids_len, raw_len)) = sizes else {
            return Err(corrupt(
                Bounds,
                format!("{pack_count} packs and {blocks} blocks do not fit in memory"),
            ));
        };
        let mut raw = vec![0u8; raw_len];
        let n = zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(body, &mut raw[..]))
            .map_err(|e| corrupt(Compression, format!("map body does not decompress: {e}")))?;
        if n != raw_len {
            return Err(corrupt(
                Compression,
                format!("map body holds {n} bytes, expected {raw_len}"),
            ));
        }
        let (ids, ents) = raw.split_at(ids_len);
        let packs: Vec<Uuid> = ids
            .chunks_exact(16)
            .map(|c| Uuid::from_slice(c).unwrap_or_default())
            .collect();
        let entries: Vec<u32> = ents
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = entries.iter().position(|&e| u64::from(e) > pack_count) {
            return Err(corrupt(
                Entry,
                format!("block {bad} names pack {} of {pack_count}", entries[bad]),
            ));
        }
        Ok(BlockMap {
            block_size,
            disk_size,
            packs,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BlockMap {
        let packs = vec![Uuid::new_v4(), Uuid::new_v4()];
        let entries = (0..1000u32)
            .map(|i| [0, 1, 2][(i % 7 % 3) as usize])
            .collect();
        BlockMap {
            block_size: 4096,
            disk_size: 1000 * 4096 - 100,
            packs,
            entries,
        }
    }

    fn encoded(m: &BlockMap) -> Vec<u8> {
        m.encode().expect("encode")
    }

    #[test]
    fn round_trip_and_lookup() {
        let m = sample();
        let back = BlockMap::decode("m", &encoded(&m), 4096).expect("valid");
        assert_eq!(back, m);
        assert_eq!(back.pack_of(0), None);
        assert_eq!(back.pack_of(1), Some(m.packs[0]));
        assert_eq!(back.pack_of(2), Some(m.packs[1]));
        assert_eq!(back.pack_of(5000), None);
    }

    /// `bytes` with the header's fields rewritten by `edit` and its checksum made right, so the
    /// damage reaches the check after the checksum.
    fn resealed(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut b = bytes.to_vec();
        edit(&mut b);
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// One damage per documented byte range of the format, each with its kind.
    #[test]
    fn each_region_of_damage_has_its_kind() {
        let good = encoded(&sample());
        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x08;
            b
        };
        let put = |at: usize, v: &[u8]| resealed(&good, |b| b[at..at + v.len()].copy_from_slice(v));
        let cases: Vec<(Vec<u8>, CorruptKind)> = vec![
            (good[..HEADER_LEN - 1].to_vec(), CorruptKind::Length),
            (flip(0), CorruptKind::HeaderChecksum),
            (flip(17), CorruptKind::HeaderChecksum),
            (flip(62), CorruptKind::HeaderChecksum),
            (put(0, b"XXXXXXXX"), CorruptKind::Magic),
            (put(8, &2u16.to_le_bytes()), CorruptKind::Version),
            (put(12, &8192u32.to_le_bytes()), CorruptKind::BlockSize),
            (put(24, &5u64.to_le_bytes()), CorruptKind::Bounds),
            (put(32, &5000u32.to_le_bytes()), CorruptKind::Bounds),
            (put(36, &3u32.to_le_bytes()), CorruptKind::Length),
            (good[..good.len() - 2].to_vec(), CorruptKind::Length),
            (flip(HEADER_LEN + 3), CorruptKind::BodyChecksum),
            (flip(good.len() - 1), CorruptKind::BodyChecksum),
        ];
        for (i, (bytes, kind)) in cases.into_iter().enumerate() {
            let err = BlockMap::decode("m", &bytes, 4096).expect_err("damaged");
            assert_eq!(err.kind, kind, "case {i}: {err}");
            assert_eq!(err.file, "m");
        }
    }

    #[test]
    fn a_body_that_does_not_decompress_to_its_size_is_refused() {
        let m = sample();
        // A valid zstd frame of the wrong content length, sealed with right checksums.
        let body = zstd::bulk::compress(&[0u8; 100], 3).expect("compress");
        let mut b = encoded(&m)[..HEADER_LEN].to_vec();
        b[36..40].copy_from_slice(&(body.len() as u32).to_le_bytes());
        b[40..44].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        b.extend_from_slice(&body);
        let b = resealed(&b, |_| {});
        let err = BlockMap::decode("m", &b, 4096).expect_err("wrong size");
        assert_eq!(err.kind, CorruptKind::Compression, "{err}");
    }

    #[test]
    fn entries_naming_missing_packs_are_refused() {
        let mut m = sample();
        m.entries[10] = 9;
        let err = BlockMap::decode("m", &encoded(&m), 4096).expect_err("bad entry");
        assert_eq!(err.kind, CorruptKind::Entry);
        assert!(err.to_string().contains("block 10 names pack 9"), "{err}");
    }
}
