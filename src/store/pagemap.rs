//! Page maps (block map format version 2, for format-2 stores): for one disk restore point,
//! where each 4 KiB page of the disk lives, as `(pack, frame, slot)`, or that it is a hole.
//! Every map is complete, so resolving a page costs one map page lookup at any chain depth. The
//! map is paged: a reader loads the directory at open and then single map pages on demand.
//!
//! ```text
//! offset      size       field
//! 0           64         header: magic "RPFSBMAP", version u16 (2), reserved u16,
//!                        frame size u32, disk size u64, page count u64 (ceil(disk size / 4096)),
//!                        reserved (28 zero bytes), crc32c of bytes 0..60
//! 64          ...        map pages, back to back, in order, all-hole ones left out: each is
//!                        one zstd frame of its entries (4096, the last one the rest) as u64
//!                        little-endian, each XORed with its prediction (below)
//! S           ...        summary: the RefSet of every entry (`refs.rs` encoding, a zstd frame)
//! P           16*packs   pack list: pack ids; entry pack slot k names the k-th (1-based)
//! D           20*pages   directory, one entry per map page: offset u64, stored length u32,
//!                        crc32c of the stored bytes u32, data pages (non-hole entries) u16,
//!                        flags u8 (bit 0: all holes, not stored; others 0), object u8 (0: this
//!                        map; others reserved for map pages shared with other maps)
//! len - 72    72         trailer: magic "RPFSMEND", summary offset S u64, summary length u64,
//!                        pack list offset P u64, directory offset D u64, data pages u64,
//!                        pack count u32, directory length u32, crc32c of the summary u32,
//!                        crc32c of the pack list u32, crc32c of the directory u32,
//!                        crc32c of trailer bytes 0..68
//! ```
//!
//! An entry (u64) is `pack slot << 40 | frame << 8 | slot`: pack slot 24 bits (1-based; 0 is a
//! hole, and then the whole entry is 0), frame 32 bits, 4 reserved zero bits, page slot 4 bits
//! (below the frame's slot count). Its prediction is the page after the previous entry of the
//! same map page: the next slot of the same frame, or slot 0 of the next frame after the
//! frame's last slot; a hole (or the first entry of a map page) predicts a hole. Runs of the
//! consecutive pages of consecutive frames, and runs of holes, are stored as zeros.
//!
//! Invariants, all checked by [`PageMap::open`] (header, trailer, pack list, directory) and by
//! [`PageMap::read_page`] / [`PageMap::summary`] (the rest): the regions are contiguous in the
//! order above and end at the object's end; the page count describes the disk size and is at
//! most [`MAX_PAGES`]; the frame size is a power of two from 4 KiB to 64 KiB; pack ids are
//! unique; a stored map page holds at least one data page and its count matches its entries;
//! the directory's counts sum to the trailer's data pages; every entry names a listed pack and
//! a slot its frame has; the summary equals what the entries reference (checked by `check`, not
//! here: that takes every map page) and names only listed packs and existing slots. Maps are
//! written once, streaming, and never changed.
//!
//! The code lies in child modules: `entry` holds the layout constants, the entries (encoding,
//! prediction, validation) and the directory entries both sides share; `writer` writes a map
//! ([`PageMapWriter`]); `reader` opens and reads one ([`PageMap`]); `reseal` (tests and
//! fuzzing) makes a damaged map's checksums right again. This module only declares them and
//! re-exports their public items: the children depend on `entry`, never on this module.

#![warn(clippy::arithmetic_side_effects)]

mod entry;
mod reader;
#[cfg(any(test, feature = "testing"))]
mod reseal;
#[cfg(test)]
mod tests;
mod writer;

pub use entry::{
    DIR_ENTRY_LEN, ENTRIES_PER_PAGE, HEADER_LEN, MAX_PACKS, MAX_PAGES, PageRef, TRAILER_LEN,
    VERSION, decode_entry, encode_entry, locate, map_page_count, page_count,
};
pub use reader::PageMap;
#[cfg(any(test, feature = "testing"))]
pub use reseal::reseal;
pub use writer::{MapInfo, PageMapWriter};
