//! How one block's bytes are encoded on disk: hashed, compressed with the store's
//! [`Compression`] (LZ4 unless `rpfs init --compression zstd` chose zstd) when that pays, and
//! decoded with the output bounded by the block size.
//!
//! Invariants: every stored block carries the xxh3-128 hash of its *uncompressed* content, and
//! [`decode`] never returns bytes whose hash differs from it. Decompression writes into a buffer
//! of exactly one block, so a hostile frame cannot make it allocate more. Every codec is read
//! whatever the store's compression (zstd blocks of rpfs 0.1 stores included), so the choice
//! only ever affects what is written.

use std::cell::RefCell;

/// How a stored block's bytes encode its content.
///
/// New blocks use LZ4: on 64 KiB blocks of real filesystem data it compresses ~2.5x at
/// ~740 MB/s per core here, against zstd -1's ~3.0x at ~490 MB/s: 1.5x the speed where a first
/// point is bound by the CPU. Where the device bounds it, the two measured even (zstd's ~14%
/// smaller writes cost ~50% more CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is (compression would not have saved enough).
    Raw,
    /// One zstd frame (stores made with `--compression zstd`, and blocks written before LZ4 was
    /// adopted).
    Zstd,
    /// One LZ4 block (no frame header; the content length is the block size).
    Lz4,
}

impl Codec {
    /// True for the codecs that store fewer bytes than the block.
    pub fn is_compressed(self) -> bool {
        self != Codec::Raw
    }
}

/// A block is stored raw unless compression saves at least 1/32 of it; raw blocks read faster.
const MIN_SAVING_DIVISOR: usize = 32;

/// Hash of a block's uncompressed content.
pub fn hash(data: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(data)
}

/// True when every byte is zero (such blocks are stored as holes).
pub fn is_zero(data: &[u8]) -> bool {
    // Compare 16 bytes at a time; LLVM vectorises this loop.
    let chunks = data.chunks_exact(16);
    chunks.remainder().iter().all(|&b| b == 0) && chunks.into_iter().all(|c| c == [0u8; 16])
}

/// A block ready to be written into a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub hash: u128,
    pub codec: Codec,
    pub bytes: Vec<u8>,
}

/// What a store compresses new blocks and frames with, chosen at `rpfs init --compression`.
///
/// LZ4 is the default: it decodes ~4x faster than zstd and compresses ~1.5x faster, which is
/// what keeps full points and cold reads at the device's pace. zstd stores ~25% fewer bytes of
/// compressible data (measured on the bench's OS files: 2.10x for LZ4, 2.75x for zstd -1,
/// 2.86x for zstd -3 in 64 KiB frames), for stores where bytes cost more than time (object
/// storage, slow links). Random data stores the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Lz4,
    /// zstd at a level in [`ZSTD_LEVELS`].
    Zstd(i32),
}

/// The zstd levels a store may use. Levels past 19 need windows larger than a block, which
/// gains nothing on 64 KiB frames.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
/// The level of `--compression zstd` without one: zstd's own default.
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

impl Compression {
    /// The codec of what this compression writes.
    pub fn codec(self) -> Codec {
        match self {
            Compression::Lz4 => Codec::Lz4,
            Compression::Zstd(_) => Codec::Zstd,
        }
    }

    /// Parses `lz4`, `zstd` or `zstd:LEVEL`, or says why not.
    pub fn parse(text: &str) -> Result<Compression, String> {
        let level = |l: &str| match l.parse::<i32>() {
            Ok(n) if ZSTD_LEVELS.contains(&n) => Ok(n),
            _ => Err(format!(
                "compression \"{text}\": the zstd level must be a whole number from {} to {}",
                ZSTD_LEVELS.start(),
                ZSTD_LEVELS.end()
            )),
        };
        match text.split_once(':') {
            None if text == "lz4" => Ok(Compression::Lz4),
            None if text == "zstd" => Ok(Compression::Zstd(ZSTD_DEFAULT_LEVEL)),
            Some(("zstd", l)) => level(l).map(Compression::Zstd),
            _ => Err(format!(
                "compression \"{text}\" is not one of lz4, zstd, zstd:LEVEL"
            )),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd(level) => write!(f, "zstd:{level}"),
        }
    }
}

impl serde::Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Compression::parse(&text).map_err(serde::de::Error::custom)
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// A zstd context per thread (an ingest worker compresses many frames): its level.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Room [`compress_into`] needs for a block of `len` bytes (the worst case of either codec).
pub fn compress_bound(len: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(len).max(zstd::zstd_safe::compress_bound(len))
}

/// Compresses `data` with `how` into `dst` (at least [`compress_bound`] bytes) and returns the
/// compressed length, or `None` when that does not save at least 1/32: store the block raw.
pub fn compress_into(data: &[u8], dst: &mut [u8], how: Compression) -> Option<usize> {
    let n = match how {
        Compression::Lz4 => lz4_flex::block::compress_into(data, dst).ok()?,
        Compression::Zstd(level) => COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
            }
            // A failure (never seen: `dst` holds the worst case) stores the block raw.
            slot.as_mut()?.1.compress_to_buffer(data, dst).ok()
        })?,
    };
    (n <= data.len() - data.len() / MIN_SAVING_DIVISOR).then_some(n)
}

/// Compresses `data` (whose hash is `hash`) with `how` if that saves enough, else keeps it raw.
pub fn encode(data: &[u8], hash: u128, how: Compression) -> Encoded {
    let mut bytes = Vec::new();
    let codec = encode_into(data, &mut bytes, how);
    Encoded { hash, codec, bytes }
}

/// [`encode`] onto the end of `out`, without a buffer of its own (an ingest encodes a batch's
/// frames into one); returns the codec. `out` grows by the stored bytes only, after briefly
/// holding room for the worst case ([`compress_bound`]).
pub fn encode_into(data: &[u8], out: &mut Vec<u8>, how: Compression) -> Codec {
    let at = out.len();
    out.resize(at.saturating_add(compress_bound(data.len())), 0);
    match out
        .get_mut(at..)
        .and_then(|dst| compress_into(data, dst, how))
    {
        Some(n) => {
            out.truncate(at.saturating_add(n));
            how.codec()
        }
        None => {
            out.truncate(at);
            out.extend_from_slice(data);
            Codec::Raw
        }
    }
}

/// Why a stored block could not be turned back into its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} data does not decompress: {1}")]
    Decompress(&'static str, String),
    #[error("decompressed to {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("content hash mismatch (stored {stored:032x}, computed {computed:032x})")]
    Hash { stored: u128, computed: u128 },
}

/// Decodes `stored` into `out` (exactly one block) and verifies the content hash.
pub fn decode(
    stored: &[u8],
    codec: Codec,
    hash_want: u128,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    let n = match codec {
        Codec::Raw => {
            if stored.len() == out.len() {
                out.copy_from_slice(stored);
            }
            stored.len()
        }
        Codec::Lz4 => lz4_flex::block::decompress_into(stored, out)
            .map_err(|e| DecodeError::Decompress("LZ4", e.to_string()))?,
        Codec::Zstd => DECOMPRESSOR.with(|cell| {
            let zstd_error = |e: std::io::Error| DecodeError::Decompress("zstd", e.to_string());
            let mut slot = cell.borrow_mut();
            let d = match &mut *slot {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new().map_err(zstd_error)?),
            };
            d.decompress_to_buffer(stored, &mut *out)
                .map_err(zstd_error)
        })?,
    };
    if n != out.len() {
        return Err(DecodeError::Length {
            got: n,
            want: out.len(),
        });
    }
    verify(out, hash_want)
}

/// Checks that `data` hashes to `hash_want`.
pub fn verify(data: &[u8], hash_want: u128) -> Result<(), DecodeError> {
    let computed = hash(data);
    if computed != hash_want {
        return Err(DecodeError::Hash {
            stored: hash_want,
            computed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 65536]));
        assert!(is_zero(&[0u8; 17]));
        let mut b = vec![0u8; 4096];
        b[4095] = 1;
        assert!(!is_zero(&b));
        b[4095] = 0;
        b[0] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn compressible_and_random_blocks_round_trip() {
        let text: Vec<u8> = b"restore point "
            .iter()
            .cycle()
            .take(65536)
            .copied()
            .collect();
        let mut random = vec![0u8; 65536];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in &mut random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for (data, expect) in [(text, Codec::Lz4), (random, Codec::Raw)] {
            let h = hash(&data);
            let enc = encode(&data, h, Compression::Lz4);
            assert_eq!(enc.codec, expect);
            let mut out = vec![0u8; data.len()];
            decode(&enc.bytes, enc.codec, h, &mut out).expect("decodes");
            assert_eq!(out, data);
        }
    }

    #[test]
    fn zstd_stores_compress_with_their_level_and_decode() {
        let data: Vec<u8> = b"restore point collection "
            .iter()
            .cycle()
            .take(65536)
            .copied()
            .collect();
        let h = hash(&data);
        let mut sizes = Vec::new();
        for level in [1, 19] {
            let enc = encode(&data, h, Compression::Zstd(level));
            assert_eq!(enc.codec, Codec::Zstd);
            let mut out = vec![0u8; data.len()];
            decode(&enc.bytes, enc.codec, h, &mut out).expect("decodes");
            assert_eq!(out, data);
            sizes.push(enc.bytes.len());
        }
        // The thread's context follows the level asked for.
        assert_eq!(encode(&data, h, Compression::Zstd(1)).bytes.len(), sizes[0]);
        let mut x = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let enc = encode(&random, hash(&random), Compression::Zstd(3));
        assert_eq!(enc.codec, Codec::Raw, "incompressible data is stored raw");
    }

    #[test]
    fn compression_names_parse_and_print() {
        for (text, want) in [
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd(ZSTD_DEFAULT_LEVEL)),
            ("zstd:1", Compression::Zstd(1)),
            ("zstd:19", Compression::Zstd(19)),
        ] {
            assert_eq!(Compression::parse(text), Ok(want), "{text}");
            assert_eq!(Compression::parse(&want.to_string()), Ok(want));
        }
        for bad in [
            "", "LZ4", "gzip", "zstd:", "zstd:0", "zstd:20", "zstd:-1", "zstd:x", "lz4:1",
        ] {
            let why = Compression::parse(bad).expect_err(bad);
            assert!(why.contains(&format!("\"{bad}\"")), "{why}");
        }
        let json = serde_json::to_string(&Compression::Zstd(7)).expect("serialises");
        assert_eq!(json, "\"zstd:7\"");
        assert!(serde_json::from_str::<Compression>("\"brotli\"").is_err());
    }

    #[test]
    fn zstd_blocks_of_older_stores_still_decode() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 7 % 251) as u8).collect();
        let frame = zstd::bulk::compress(&data, -1).expect("compresses");
        let mut out = vec![0u8; data.len()];
        decode(&frame, Codec::Zstd, hash(&data), &mut out).expect("decodes");
        assert_eq!(out, data);
        assert!(decode(&frame, Codec::Lz4, hash(&data), &mut out).is_err());
    }

    #[test]
    fn damage_is_detected() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let h = hash(&data);
        let enc = encode(&data, h, Compression::Lz4);
        assert_eq!(enc.codec, Codec::Lz4);
        let mut out = vec![0u8; data.len()];
        for i in [0, enc.bytes.len() / 2, enc.bytes.len() - 1] {
            let mut bad = enc.bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                decode(&bad, Codec::Lz4, h, &mut out).is_err(),
                "flip at {i} missed"
            );
        }
        let raw = data.clone();
        let mut bad = raw.clone();
        bad[100] ^= 1;
        assert!(matches!(
            decode(&bad, Codec::Raw, h, &mut out),
            Err(DecodeError::Hash { .. })
        ));
        assert!(matches!(
            decode(&raw[..100], Codec::Raw, h, &mut out),
            Err(DecodeError::Length { .. })
        ));
    }
}
