//! A byte range of a disk image: the whole disk, or one partition of it.
//!
//! Invariants: a window never reads outside its range (a read past its end is short, a read
//! that must be whole fails), so a parser given one partition cannot see another.

use std::io;
use std::sync::Arc;

use super::image::Image;
use super::partitions::Partition;

/// `len` bytes of a disk image from `start`.
pub struct Window<I> {
    pub image: Arc<I>,
    pub start: u64,
    pub len: u64,
}

// Not derived: a window is cloned by sharing its image, whatever the image's type.
impl<I> Clone for Window<I> {
    fn clone(&self) -> Self {
        Window {
            image: self.image.clone(),
            start: self.start,
            len: self.len,
        }
    }
}

impl<I: Image> Window<I> {
    /// The whole disk.
    pub fn whole(image: Arc<I>) -> Window<I> {
        let len = image.size();
        Window {
            image,
            start: 0,
            len,
        }
    }

    /// The bytes of partition `part`.
    pub fn partition(image: Arc<I>, part: &Partition) -> Window<I> {
        Window {
            image,
            start: part.start,
            len: part.len,
        }
    }

    /// Reads at `offset` (within the window) into `buf`; short only at the window's end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, I::Error> {
        let len = (buf.len() as u64).min(self.len.saturating_sub(offset)) as usize;
        self.image.read_at(self.start + offset, &mut buf[..len])
    }

    /// Fills `buf` from `offset`, or fails naming the range.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self
            .read_at(offset, buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} passes the end of a {}-byte partition",
                    buf.len(),
                    self.len
                ),
            ));
        }
        Ok(())
    }

    /// The first data at or after `offset` (within the window), if any.
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        let at = self.image.next_data(self.start + offset)?;
        (at < self.start + self.len).then_some(at - self.start)
    }

    /// The first hole at or after `offset`, or the window's end.
    pub fn next_hole(&self, offset: u64) -> u64 {
        self.image
            .next_hole(self.start + offset)
            .min(self.start + self.len)
            - self.start
    }

    /// Bytes of the window that hold data (not holes).
    pub fn allocated(&self) -> u64 {
        let mut total = 0;
        let mut at = 0;
        while let Some(data) = self.next_data(at) {
            let hole = self.next_hole(data);
            total += hole - data;
            at = hole;
            if at >= self.len {
                break;
            }
        }
        total
    }
}
