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
