//! Filesystems inside a disk restore point (the whole disk or one partition), read-only, for
//! file-level restore: ext2/3/4 through `ext4-view` (journal replayed in memory), FAT through
//! `fatfs` and NTFS through `ntfs`.
//!
//! Invariants:
//! - The guest's bytes are untrusted. A parser sees only its window, runs on its own thread
//!   (`worker`), and its errors and panics become [`GuestError`]s of this filesystem alone.
//!   Listings, link targets and paths are bounded ([`MAX_DIR_ENTRIES`], [`MAX_LINK`],
//!   [`MAX_PATH`]), so a cycle in damaged metadata ends in an error, not a loop.
//! - Symlinks are returned as their targets and never followed here.
//! - A committed point never changes, so what is cached here (attributes, listings) stays true.
//! - Inode numbers are the filesystem's own where it has them (ext4: hard links share one), else
//!   assigned per path on first sight (FAT); either way one number names one file for as long
//!   as its [`GuestNames`] live, which a caller may keep beyond the [`Guest`] (to close an idle
//!   filesystem and reopen it with the same numbers). Every number handed out was first seen in
//!   a listing, so its path is known.
//! - A damaged entry fails alone: a directory lists every entry whose name it holds, and one
//!   whose inode cannot be read is [`Unreadable`] (EIO when looked up), not an error of the
//!   directory.
//! - What is cached is bounded: listings by bytes in a [`ListingCache`] shared by the guests of
//!   a mount ([`CACHED_LISTING_BYTES`]), open files and placements per parser by count.

mod backend;
mod ext4;
mod fat;
mod filesystem;
mod ntfs;
mod worker;

pub use backend::{
    Backend, DirItem, FsType, GuestAttr, GuestError, GuestKind, MAX_DIR_ENTRIES, MAX_LINK,
    MAX_PATH, Piece, Source, Stream, Unreadable,
};
pub use filesystem::{CACHED_LISTING_BYTES, Guest, GuestNames, Listing, ListingCache};
