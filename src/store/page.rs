//! Pages: the 4 KiB unit of change detection, identity and mapping in format-2 stores.
//!
//! A store's frame size (its `--block-size`, 4 KiB to 64 KiB) is the unit of compression,
//! storage and caching; a frame holds the present pages of one frame-sized stretch of a disk,
//! named by their *slot* (0..16) in that stretch. A page is identified two ways:
//! - its **fingerprint**, xxh3-128 of its bytes: cheap, compared only with the same page of the
//!   same disk's previous point (as blocks were in format 1), and stored beside every page;
//! - its **id**, BLAKE3-256 of its bytes (keyed by the store's identity key once stores are
//!   encrypted): strong, so a page found in another VM's pack by id is the same bytes.
//!
//! Invariants: `PAGE_SIZE` is fixed for the format; a frame has at most [`MAX_FRAME_PAGES`]
//! slots, so a frame's present pages fit a `u16` mask.

/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;
/// `PAGE_SIZE` as a shift.
pub const PAGE_SHIFT: u32 = 12;
/// Most pages a frame holds (64 KiB frames); a frame's present pages are a `u16` mask.
pub const MAX_FRAME_PAGES: usize = 16;

const _: () = assert!(PAGE_SIZE == 1 << PAGE_SHIFT);
const _: () = assert!(MAX_FRAME_PAGES == u16::BITS as usize);

/// The cheap per-page hash, compared with the previous point's page at the same offset.
pub type Fingerprint = u128;

/// A page's strong identity, used to find the same page anywhere in the store.
pub type PageId = [u8; 32];

/// Fingerprint of one page's bytes.
pub fn fingerprint(page: &[u8]) -> Fingerprint {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// How page ids are computed in a store: unkeyed BLAKE3, or keyed BLAKE3 so that ids reveal
/// nothing about content to whoever lacks the store's key.
#[derive(Clone, PartialEq, Eq)]
pub enum IdKey {
    Unkeyed,
    Keyed([u8; 32]),
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        match self {
            IdKey::Unkeyed => f.write_str("Unkeyed"),
            IdKey::Keyed(_) => f.write_str("Keyed(..)"),
        }
    }
}

/// BLAKE3's chunk length, initial value and domain flags (its specification, §2), for
/// [`IdKey::page_ids`].
const CHUNK_LEN: usize = 1024;
const CHUNKS: usize = PAGE_SIZE / CHUNK_LEN;
const BLAKE3_IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;
const KEYED_HASH: u8 = 1 << 4;
// A page is two levels of parents over four chunks.
const _: () = assert!(CHUNKS == 4);

/// Prefixed to the page ids a frame id hashes: frame ids and page ids share the index.
const FRAME_ID_CONTEXT: &[u8] = b"rpfs frame id v1\0";

impl IdKey {
    /// The id of one page's bytes.
    pub fn page_id(&self, page: &[u8]) -> PageId {
        match self {
            IdKey::Unkeyed => *blake3::hash(page).as_bytes(),
            IdKey::Keyed(k) => *blake3::keyed_hash(k, page).as_bytes(),
        }
    }

    /// The ids of up to [`MAX_FRAME_PAGES`] pages at once, into `out` (one per page; a shorter
    /// `out` gets the first ones): each the page's [`IdKey::page_id`], as the tests check for
    /// keyed and unkeyed ids. Hashing a 4 KiB page alone fills a quarter of the SIMD lanes
    /// (its four chunks); here each level of the pages' trees (chunks, then two levels of
    /// parents) goes through BLAKE3's `hash_many` for all the pages together, twice as fast.
    /// `blake3::platform` is BLAKE3's own undocumented interface, hence the exact version
    /// pinned in Cargo.toml.
    pub fn page_ids(&self, pages: &[&[u8; PAGE_SIZE]], out: &mut [PageId]) {
        use blake3::IncrementCounter::No;
        let n = pages.len().min(MAX_FRAME_PAGES).min(out.len());
        let (key, flags) = match self {
            IdKey::Unkeyed => (BLAKE3_IV, 0),
            IdKey::Keyed(k) => (blake3::platform::words_from_le_bytes_32(k), KEYED_HASH),
        };
        let platform = blake3::platform::Platform::detect();
        // Chunk c of every page (all with chunk counter c), then each page's two parents, then
        // its root.
        let mut cvs = [[0u8; 32 * MAX_FRAME_PAGES]; CHUNKS];
        for (c, cv) in cvs.iter_mut().enumerate() {
            let mut chunks: [&[u8; CHUNK_LEN]; MAX_FRAME_PAGES] =
                [&[0; CHUNK_LEN]; MAX_FRAME_PAGES];
            for (chunk, page) in chunks.iter_mut().zip(&pages[..n]) {
                let (split, _) = page.as_chunks::<CHUNK_LEN>();
                *chunk = &split[c];
            }
            let (start, end) = (CHUNK_START, CHUNK_END);
            platform.hash_many(&chunks[..n], &key, c as u64, No, flags, start, end, cv);
        }
        let mut parents = [[0u8; 64]; 2 * MAX_FRAME_PAGES];
        for (i, pair) in parents[..2 * n].chunks_mut(2).enumerate() {
            for (h, parent) in pair.iter_mut().enumerate() {
                parent[..32].copy_from_slice(&cvs[2 * h][32 * i..32 * (i + 1)]);
                parent[32..].copy_from_slice(&cvs[2 * h + 1][32 * i..32 * (i + 1)]);
            }
        }
        let mut level = [0u8; 64 * MAX_FRAME_PAGES];
        let inputs: [&[u8; 64]; 2 * MAX_FRAME_PAGES] = std::array::from_fn(|i| &parents[i]);
        platform.hash_many(
            &inputs[..2 * n],
            &key,
            0,
            No,
            flags | PARENT,
            0,
            0,
            &mut level,
        );
        let (roots, _) = level.as_chunks::<64>();
        let inputs: [&[u8; 64]; MAX_FRAME_PAGES] = std::array::from_fn(|i| &roots[i]);
        let mut ids = [0u8; 32 * MAX_FRAME_PAGES];
        platform.hash_many(
            &inputs[..n],
            &key,
            0,
            No,
            flags | PARENT | ROOT,
            0,
            0,
            &mut ids,
        );
        let (ids, _) = ids.as_chunks::<32>();
        out[..n].copy_from_slice(&ids[..n]);
    }

    /// The id of a whole frame, from its pages' ids in slot order: a hash of hashes, as strong
    /// as the page ids, which an ingest computes anyway; so a frame costs 512 more bytes of
    /// hashing, not another pass over its 64 KiB.
    pub fn frame_id(&self, page_ids: &[PageId]) -> PageId {
        let mut h = match self {
            IdKey::Unkeyed => blake3::Hasher::new(),
            IdKey::Keyed(k) => blake3::Hasher::new_keyed(k),
        };
        h.update(FRAME_ID_CONTEXT);
        for id in page_ids {
            h.update(id);
        }
        *h.finalize().as_bytes()
    }
}

/// Page slots in a frame of `frame_size` bytes (a power of two from 4 KiB to 64 KiB).
pub fn frame_slots(frame_size: u32) -> u32 {
    frame_size >> PAGE_SHIFT
}

/// The mask with every slot of a `slots`-page frame present.
pub fn full_mask(slots: u32) -> u16 {
    u16::try_from((1u32 << slots.min(16)) - 1).unwrap_or(u16::MAX)
}

/// Position of `slot` among the present pages of a frame with `mask`, or `None` when the slot
/// is not present: the page's offset in the frame's decoded bytes is this times [`PAGE_SIZE`].
pub fn ordinal(mask: u16, slot: u8) -> Option<usize> {
    if slot >= 16 || mask & (1 << slot) == 0 {
        return None;
    }
    Some((mask & ((1u16 << slot) - 1)).count_ones() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinal_counts_present_slots_below() {
        assert_eq!(ordinal(0b1011, 0), Some(0));
        assert_eq!(ordinal(0b1011, 1), Some(1));
        assert_eq!(ordinal(0b1011, 2), None);
        assert_eq!(ordinal(0b1011, 3), Some(2));
        assert_eq!(ordinal(u16::MAX, 15), Some(15));
        assert_eq!(ordinal(u16::MAX, 16), None);
    }

    #[test]
    fn full_masks() {
        assert_eq!(full_mask(frame_slots(4096)), 1);
        assert_eq!(full_mask(frame_slots(16 << 10)), 0xf);
        assert_eq!(full_mask(frame_slots(64 << 10)), 0xffff);
    }

    #[test]
    fn keyed_ids_differ_from_unkeyed_and_by_key() {
        let page = [7u8; PAGE_SIZE];
        let a = IdKey::Unkeyed.page_id(&page);
        let b = IdKey::Keyed([1; 32]).page_id(&page);
        let c = IdKey::Keyed([2; 32]).page_id(&page);
        assert!(a != b && b != c && a != c);
        assert_eq!(a, IdKey::Unkeyed.page_id(&page));
        assert_eq!(format!("{:?}", IdKey::Keyed([9; 32])), "Keyed(..)");
    }

    proptest::proptest! {
        #[test]
        fn page_ids_at_once_equal_one_by_one(
            seeds in proptest::collection::vec(proptest::num::u64::ANY, 0..=17),
            keyed in proptest::bool::ANY,
        ) {
            let key = if keyed { IdKey::Keyed([0x5a; 32]) } else { IdKey::Unkeyed };
            let pages: Vec<[u8; PAGE_SIZE]> = seeds.iter().map(|&s| {
                let mut x = s | 1;
                std::array::from_fn(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 })
            }).collect();
            let refs: Vec<&[u8; PAGE_SIZE]> = pages.iter().collect();
            let mut out = [[0u8; 32]; MAX_FRAME_PAGES];
            key.page_ids(&refs, &mut out);
            for (i, p) in pages.iter().enumerate().take(MAX_FRAME_PAGES) {
                proptest::prop_assert_eq!(out[i], key.page_id(p));
            }
        }
    }

    #[test]
    fn frame_ids_depend_on_every_page_in_order_and_on_the_key() {
        let pages: Vec<PageId> = (0..16u8)
            .map(|i| IdKey::Unkeyed.page_id(&[i; PAGE_SIZE]))
            .collect();
        let id = IdKey::Unkeyed.frame_id(&pages);
        assert_eq!(id, IdKey::Unkeyed.frame_id(&pages));
        let mut swapped = pages.clone();
        swapped.swap(3, 4);
        assert_ne!(id, IdKey::Unkeyed.frame_id(&swapped));
        assert_ne!(id, IdKey::Unkeyed.frame_id(&pages[..15]));
        assert_ne!(id, IdKey::Keyed([1; 32]).frame_id(&pages));
        // The bytes a frame id hashes, taken as a page, have another id.
        let mut bytes = FRAME_ID_CONTEXT.to_vec();
        pages.iter().for_each(|p| bytes.extend_from_slice(p));
        assert_ne!(id, IdKey::Unkeyed.page_id(&pages.concat()));
        assert_eq!(id, *blake3::hash(&bytes).as_bytes());
    }
}
