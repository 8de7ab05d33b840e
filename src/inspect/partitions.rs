//! Partition tables inside a disk restore point: GPT (behind its protective MBR) or, failing
//! that, MBR with the logical partitions of an extended one, read with `gptman` and `mbrman`.
//!
//! Invariants: the disk's content is the guest's, so untrusted: a table whose header asks for
//! more than [`MAX_ENTRIES`] entries is not read, and a partition that does not lie wholly inside
//! the disk, or is empty, is left out. Numbers follow Linux: GPT entry numbers as stored (from
//! 1), MBR primaries 1–4 and logical partitions from 5. An extended partition itself is not
//! listed. A disk with neither table has no partitions.

#![warn(clippy::arithmetic_side_effects)]

use std::io::{self, Read, Seek, SeekFrom};

use super::image::Image;

/// Most entries a GPT header may declare before the table is refused (the usual is 128).
pub const MAX_ENTRIES: u32 = 1024;

/// One partition: its number and its byte range within the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

/// A disk image as `Read + Seek`, for the table parsers.
struct Reader<'a, I> {
    image: &'a I,
    pos: u64,
}

impl<I: Image> Read for Reader<'_, I> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .image
            .read_at(self.pos, buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

impl<I: Image> Seek for Reader<'_, I> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.image.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the disk"))?;
        Ok(self.pos)
    }
}

/// The partitions of `image`, sorted by number; empty when it holds no table rpfs can read.
pub fn read<I: Image>(image: &I) -> Vec<Partition> {
    let size = image.size();
    let inside =
        |number: u32, start: u64, len: u64| {
            (len > 0 && start.checked_add(len).is_some_and(|end| end <= size))
                .then_some(Partition { number, start, len })
        };
    let mut out: Vec<Partition> = match gpt(image) {
        Some(gpt) => {
            let ss = gpt.sector_size;
            gpt.iter()
                .filter(|(_, e)| e.is_used() && e.ending_lba >= e.starting_lba)
                .filter_map(|(n, e)| {
                    let start = e.starting_lba.checked_mul(ss)?;
                    let sectors = e.ending_lba.checked_sub(e.starting_lba)?.checked_add(1)?;
                    let len = sectors.checked_mul(ss)?;
                    inside(n, start, len)
                })
                .collect()
        }
        None => match mbrman::MBR::read_from(&mut Reader { image, pos: 0 }, 512) {
            Ok(mbr) => mbr
                .iter()
                .filter(|(_, e)| e.is_used() && !e.is_extended())
                .filter_map(|(n, e)| {
                    inside(
                        n as u32,
                        u64::from(e.starting_lba) * 512,
                        u64::from(e.sectors) * 512,
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        },
    };
    out.sort_by_key(|p| p.number);
    out
}

/// The GPT of `image`, if it has one of a sane size, at either sector size.
fn gpt<I: Image>(image: &I) -> Option<gptman::GPT> {
    for ss in [512u64, 4096] {
        let mut r = Reader { image, pos: ss };
        let Ok(header) = gptman::GPTHeader::read_from(&mut r) else {
            continue;
        };
        if header.number_of_partition_entries > MAX_ENTRIES {
            return None;
        }
        if let Ok(gpt) = gptman::GPT::read_from(&mut Reader { image, pos: 0 }, ss) {
            return Some(gpt);
        }
    }
    None
}
