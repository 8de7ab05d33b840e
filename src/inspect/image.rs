//! The one interface this layer reads disk images through, and its implementation by the
//! engine's disk restore points.
//!
//! Invariants: a read is short only at the end of the image; `next_data`/`next_hole` follow the
//! image's own holes, which read as zeros; an image never changes while it is read.

use crate::engine::{DiskImage, Error};

/// A disk image, read at any offset.
pub trait Image: Send + Sync + 'static {
    /// Why a read failed.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Size of the image in bytes.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the image.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error>;
    /// The first offset at or after `offset` inside data (SEEK_DATA), or `None`.
    fn next_data(&self, offset: u64) -> Option<u64>;
    /// The first offset at or after `offset` inside a hole, or the size (SEEK_HOLE).
    fn next_hole(&self, offset: u64) -> u64;
}

impl Image for DiskImage {
    type Error = Error;
    fn size(&self) -> u64 {
        DiskImage::size(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        DiskImage::read_at(self, offset, buf)
    }
    fn next_data(&self, offset: u64) -> Option<u64> {
        DiskImage::next_data(self, offset)
    }
    fn next_hole(&self, offset: u64) -> u64 {
        DiskImage::next_hole(self, offset)
    }
}
