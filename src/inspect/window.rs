//! A byte range of a disk image: the whole disk, or one partition of it.
//!
//! Invariants: a window never reads outside its range (a read past its end is short, a read
//! that must be whole fails), so a parser given one partition cannot see another; its range
//! lies inside its image (`start + len` is at most the image's size, as partitions are only
//! made of ranges inside the disk), so no offset inside it overflows.

#![warn(clippy::arithmetic_side_effects)]

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

    /// Where `offset` of the window lies in the image, when it lies inside the window.
    fn absolute(&self, offset: u64) -> Option<u64> {
        // Below start + len, which is at most the image's size: cannot saturate.
        (offset < self.len).then(|| self.start.saturating_add(offset))
    }

    /// Reads at `offset` (within the window) into `buf`; short only at the window's end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, I::Error> {
        let Some(at) = self.absolute(offset) else {
            return Ok(0);
        };
        let len = (buf.len() as u64).min(self.len.saturating_sub(offset)) as usize;
        self.image.read_at(at, &mut buf[..len])
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
        let at = self.image.next_data(self.absolute(offset)?)?;
        let rel = at.checked_sub(self.start)?;
        (rel < self.len).then_some(rel)
    }

    /// The first hole at or after `offset`, or the window's end.
    pub fn next_hole(&self, offset: u64) -> u64 {
        match self.absolute(offset) {
            Some(at) => self
                .image
                .next_hole(at)
                .saturating_sub(self.start)
                .min(self.len),
            None => self.len,
        }
    }

    /// Bytes of the window that hold data (not holes).
    pub fn allocated(&self) -> u64 {
        let mut total = 0u64;
        let mut at = 0;
        while let Some(data) = self.next_data(at) {
            let hole = self.next_hole(data);
            total = total.saturating_add(hole.saturating_sub(data));
            at = hole;
            if at >= self.len {
                break;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::arithmetic_side_effects,
        reason = "tests compute offsets into the small files they build"
    )]

    use super::*;

    /// An image in memory with one hole: bytes 4096..8192 are zeros and read as a hole.
    struct Memory(Vec<u8>);

    impl Image for Memory {
        type Error = std::convert::Infallible;
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(self.0.len());
            let n = buf.len().min(self.0.len() - from);
            buf[..n].copy_from_slice(&self.0[from..from + n]);
            Ok(n)
        }
        fn next_data(&self, offset: u64) -> Option<u64> {
            match offset {
                o if o < 4096 => Some(o),
                o if o < 8192 => Some(8192),
                o => (o < self.size()).then_some(o),
            }
        }
        fn next_hole(&self, offset: u64) -> u64 {
            match offset {
                o if o < 4096 => 4096,
                o if o < 8192 => o,
                _ => self.size(),
            }
        }
    }

    fn image() -> Arc<Memory> {
        let mut bytes: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8 + 1).collect();
        bytes[4096..8192].fill(0);
        Arc::new(Memory(bytes))
    }

    #[test]
    fn a_window_reads_its_range_and_nothing_else() {
        let part = Partition {
            number: 1,
            start: 2048,
            len: 8192,
        };
        let w = Window::partition(image(), &part);
        let mut buf = vec![0u8; 100];
        assert_eq!(w.read_at(0, &mut buf).expect("read"), 100);
        assert_eq!(buf[0], (2048 % 251) as u8 + 1);
        assert_eq!(
            w.read_at(8150, &mut buf).expect("read"),
            42,
            "short at the end"
        );
        for far in [8192, 1 << 40, u64::MAX - 1, u64::MAX] {
            assert_eq!(w.read_at(far, &mut buf).expect("read"), 0, "offset {far}");
            assert_eq!(w.next_data(far), None);
            assert_eq!(w.next_hole(far), 8192);
        }
        assert!(w.read_exact_at(8100, &mut buf).is_err());
        // The hole of the image at 4096..8192 is 2048..6144 of the window.
        assert_eq!(w.next_hole(0), 2048);
        assert_eq!(w.next_data(2048), Some(6144));
        assert_eq!(w.allocated(), 8192 - 4096);
    }
}
