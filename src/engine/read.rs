//! The read path: a disk restore point as a random-access image.
//!
//! Resolving a byte offset costs the same at any chain depth. Format 1: block number → the
//! point's own complete block map → pack → pack table (binary search) → block cache or one read +
//! decode. Format 2 (`paged::read`): block → the map's page entries → frames, through the
//! metadata and frame caches.
//!
//! Caching: every read looks in the block cache; a block decoded for a read of only part of it
//! is kept there (its other parts are likely next, as with 4 KiB random reads), while a block
//! read whole goes straight into the caller's buffer and is not kept (the caller, or the
//! kernel's page cache above the mount, has it).
//!
//! Invariants: a read never returns bytes whose hash does not match the stored hash; a damaged
//! block fails only the reads that touch it; holes read as zeros without touching storage. Pack
//! handles are shared between images through the registry of open packs (`super::packs`).
//!
//! Arithmetic here is on the geometry `BlockMap::decode` validated (at most 2^28 blocks of at
//! most 4 MiB, so offsets stay under 2^50) and on request offsets cut to the disk's size first,
//! so it cannot overflow; the decoders, which meet the untrusted values, check every sum
//! (`clippy::arithmetic_side_effects` is on there).

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use uuid::Uuid;

use super::cache::BlockKey;
use super::error::{Damage, Error, Result};
use super::packs::{OpenError, PackHandle};
use super::paged::read::{Cause as BlockCause, PagedDisk};
use super::shared::Shared;
use crate::store::blockmap::BlockMap;
use crate::store::pack::BlockReadError;
use crate::store::page::PAGE_SHIFT;

thread_local! {
    /// Scratch block for reads that cover only part of a block.
    static PARTIAL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One disk restore point, readable at any offset.
pub struct DiskImage {
    shared: Arc<Shared>,
    /// "restore point C/P disk 'D'", for messages.
    label: String,
    /// Key of the point's record, to tell a point deleted while being read from damage.
    point_key: String,
    vm: Uuid,
    disk: Uuid,
    layout: Layout,
}

/// Where the image's blocks are described.
enum Layout {
    /// Format 1: a block map and the packs it names.
    Blocks {
        map: BlockMap,
        packs: Vec<OnceLock<Arc<PackHandle>>>,
    },
    /// Format 2: a page map over shared frames.
    Pages(PagedDisk),
}

impl std::fmt::Debug for DiskImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskImage")
            .field("label", &self.label)
            .finish()
    }
}

impl DiskImage {
    pub(crate) fn new(
        shared: Arc<Shared>,
        label: String,
        point_key: String,
        vm: Uuid,
        disk: Uuid,
        map: BlockMap,
    ) -> Self {
        let packs = (0..map.packs.len()).map(|_| OnceLock::new()).collect();
        DiskImage {
            shared,
            label,
            point_key,
            vm,
            disk,
            layout: Layout::Blocks { map, packs },
        }
    }

    /// The image of a format-2 point's disk, whose page map is open.
    pub(crate) fn paged(
        shared: Arc<Shared>,
        label: String,
        point_key: String,
        (vm, disk): (Uuid, Uuid),
        paged: PagedDisk,
    ) -> Self {
        DiskImage {
            shared,
            label,
            point_key,
            vm,
            disk,
            layout: Layout::Pages(paged),
        }
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        match &self.layout {
            Layout::Blocks { map, .. } => map.disk_size,
            Layout::Pages(p) => p.size(),
        }
    }

    /// The unit reads are resolved in: the store's block (format 1) or frame (format 2) size.
    pub fn block_size(&self) -> u32 {
        self.shared.header.block_size
    }

    /// Blocks covering the disk.
    pub fn block_count(&self) -> u64 {
        self.size().div_ceil(u64::from(self.block_size()))
    }

    /// What this image is, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Bytes of the image that are not holes (whole blocks).
    pub fn allocated_bytes(&self) -> u64 {
        match &self.layout {
            Layout::Blocks { map, .. } => map.data_blocks() * u64::from(map.block_size),
            Layout::Pages(p) => p.allocated_bytes(),
        }
    }

    fn pack(
        &self,
        (map, packs): (&BlockMap, &[OnceLock<Arc<PackHandle>>]),
        slot: usize,
    ) -> Result<Arc<PackHandle>, OpenError> {
        if let Some(h) = packs[slot].get() {
            return Ok(h.clone());
        }
        let h = self.shared.open_pack(self.vm, self.disk, map.packs[slot])?;
        // Another thread may have set it first; both handles are equivalent.
        let _ = packs[slot].set(h.clone());
        Ok(h)
    }

    /// The error for a block that could not be read: not found when the point was deleted
    /// meanwhile (its packs may be gone), an I/O error when storage failed (a full descriptor
    /// table is not damage), damage otherwise.
    fn block_error(&self, block: u64, cause: BlockCause) -> Error {
        if let Err(e) = self.shared.storage.size(&self.point_key)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Error::NotFound {
                what: "restore point",
                name: self.label.clone(),
                hint: "; it was deleted while being read".into(),
            };
        }
        let context = format!(
            "{} block {block} (offset {})",
            self.label,
            block * u64::from(self.block_size())
        );
        match cause {
            BlockCause::Io(source) => Error::Io { context, source },
            BlockCause::Damage(damage) => Error::Damaged { context, damage },
        }
    }

    /// Opens every pack the image references now. Open packs outlive a deletion of the point
    /// (a removed or repacked file stays readable through its descriptor), so a reader that
    /// opened the image keeps reading it.
    pub fn open_all_packs(&self) -> Result<()> {
        match &self.layout {
            Layout::Blocks { map, packs } => {
                for slot in 0..packs.len() {
                    self.pack((map, packs), slot)?;
                }
            }
            Layout::Pages(p) => p
                .open_all_packs(&self.shared)
                .map_err(|cause| self.block_error(0, cause))?,
        }
        Ok(())
    }

    /// Writes the content of `block` into `out` (exactly one block): zeros for a hole, else the
    /// decoded, hash-checked block, from the cache or decoded straight into `out`.
    pub fn read_block(&self, block: u64, out: &mut [u8]) -> Result<()> {
        self.fetch_block(block, out, false)
    }

    /// Like [`DiskImage::read_block`]; `keep` puts a decoded block in the cache. Whole-block
    /// reads do not: whoever asked for a whole block has it (the kernel keeps it in its page
    /// cache), while a block read in parts will likely be asked for again.
    fn fetch_block(&self, block: u64, out: &mut [u8], keep: bool) -> Result<()> {
        if block >= self.block_count() {
            return Err(Error::InvalidArgument(format!(
                "{}: block {block} is past the end of the disk",
                self.label
            )));
        }
        let (map, packs) = match &self.layout {
            Layout::Blocks { map, packs } => (map, packs),
            Layout::Pages(p) => {
                return p
                    .read_block(&self.shared, block, out, keep)
                    .map_err(|cause| self.block_error(block, cause));
            }
        };
        let entry = map.entries[block as usize];
        if entry == 0 {
            out.fill(0);
            return Ok(());
        }
        let slot = entry as usize - 1;
        let key = BlockKey {
            pack: map.packs[slot],
            block,
        };
        if let Some(data) = self.shared.cache.get(&key) {
            out.copy_from_slice(&data);
            return Ok(());
        }
        let handle = self.pack((map, packs), slot).map_err(|e| match e {
            OpenError::Io { source, .. } => self.block_error(block, BlockCause::Io(source)),
            OpenError::Corrupt(c) => self.block_error(block, BlockCause::Damage(Damage::File(c))),
        })?;
        let Some(pe) = handle.index.find(block) else {
            let pack = handle.key.clone();
            let damage = Damage::MissingBlock { pack };
            return Err(self.block_error(block, BlockCause::Damage(damage)));
        };
        handle
            .index
            .read_block(&*handle.object, pe, out)
            .map_err(|e| match e {
                BlockReadError::Io(source) => self.block_error(block, BlockCause::Io(source)),
                BlockReadError::Decode(cause) => {
                    let pack = handle.key.clone();
                    let damage = Damage::Block { pack, cause };
                    self.block_error(block, BlockCause::Damage(damage))
                }
            })?;
        if keep && self.shared.cache.capacity() > 0 {
            self.shared.cache.insert(key, Arc::from(&*out));
        }
        Ok(())
    }

    /// Copies `dest.len()` bytes of `block`, starting `from` bytes into it, into `dest`.
    fn copy_from_block(&self, block: u64, from: usize, dest: &mut [u8]) -> Result<()> {
        let bs = self.block_size() as usize;
        if from == 0 && dest.len() == bs {
            return self.read_block(block, dest);
        }
        if let Layout::Pages(p) = &self.layout {
            // Only the pages asked for: a block mixing frames need not decode them all.
            return p
                .read_part(&self.shared, block, from, dest)
                .map_err(|cause| self.block_error(block, cause));
        }
        PARTIAL.with_borrow_mut(|tmp| {
            tmp.resize(bs, 0);
            self.fetch_block(block, tmp, true)?;
            dest.copy_from_slice(&tmp[from..from + dest.len()]);
            Ok(())
        })
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the disk. Whole
    /// blocks are decoded straight into `buf`, on all cores when the read spans several.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let len = buf
            .len()
            .min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        let bs = u64::from(self.block_size());
        // Split the request at block boundaries: (block, offset into it, destination).
        let mut pieces = Vec::new();
        let mut rest = &mut buf[..len];
        let mut pos = offset;
        while !rest.is_empty() {
            let from = (pos % bs) as usize;
            let n = (bs as usize - from).min(rest.len());
            let (head, tail) = rest.split_at_mut(n);
            pieces.push((pos / bs, from, head));
            rest = tail;
            pos += n as u64;
        }
        if pieces.len() > 2 {
            pieces
                .into_par_iter()
                .try_for_each(|(b, from, dest)| self.copy_from_block(b, from, dest))?;
        } else {
            for (b, from, dest) in pieces {
                self.copy_from_block(b, from, dest)?;
            }
        }
        Ok(len)
    }

    /// Format 1: the block size, the map's packs and its entries (per block, 0 for a hole, else
    /// 1 + the pack's position). A block is named by its pack and its number, so two points
    /// whose entries for a block name the same pack hold the same bytes there. `None` for
    /// format 2.
    pub(crate) fn stored_blocks(&self) -> Option<(u64, Vec<Uuid>, Vec<u32>)> {
        let Layout::Blocks { map, .. } = &self.layout else {
            return None;
        };
        Some((
            u64::from(map.block_size),
            map.packs.clone(),
            map.entries.to_vec(),
        ))
    }

    /// The first offset at or after `offset` inside a data block (SEEK_DATA), or `None`.
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        let map = match &self.layout {
            Layout::Blocks { map, .. } => map,
            Layout::Pages(p) => {
                let page = p.next_data_page(&self.shared, offset >> PAGE_SHIFT)?;
                return Some((page << PAGE_SHIFT).max(offset)).filter(|&o| o < p.size());
            }
        };
        let bs = u64::from(map.block_size);
        let start = offset / bs;
        let i = map
            .entries
            .iter()
            .skip(usize::try_from(start).ok()?)
            .position(|&e| e != 0)?;
        let block = start + i as u64;
        Some((block * bs).max(offset)).filter(|&o| o < map.disk_size)
    }

    /// [`DiskImage::next_data`] before `end`: the search stops there (format 1 scans its map,
    /// so a search without an end would cost the rest of the disk each time).
    pub(crate) fn next_data_before(&self, offset: u64, end: u64) -> Option<u64> {
        let map = match &self.layout {
            Layout::Blocks { map, .. } => map,
            Layout::Pages(p) => {
                let end = end.min(p.size());
                let page = p.next_data_page_before(
                    &self.shared,
                    offset >> PAGE_SHIFT,
                    end.div_ceil(1 << PAGE_SHIFT),
                )?;
                return Some((page << PAGE_SHIFT).max(offset)).filter(|&o| o < end);
            }
        };
        let bs = u64::from(map.block_size);
        let (start, stop) = (offset / bs, end.min(map.disk_size).div_ceil(bs));
        let i = map
            .entries
            .get(usize::try_from(start).ok()?..usize::try_from(stop).ok()?)?
            .iter()
            .position(|&e| e != 0)?;
        Some(((start + i as u64) * bs).max(offset)).filter(|&o| o < end.min(map.disk_size))
    }

    /// [`DiskImage::next_hole`], looking no further than `end`: at most `end` when there is no
    /// hole before it (format 1 scans its map; see [`DiskImage::next_data_before`]).
    pub(crate) fn next_hole_before(&self, offset: u64, end: u64) -> u64 {
        let end = end.min(self.size());
        let map = match &self.layout {
            Layout::Blocks { map, .. } => map,
            Layout::Pages(p) => {
                let page = p.next_hole_page_before(
                    &self.shared,
                    offset >> PAGE_SHIFT,
                    end.div_ceil(1 << PAGE_SHIFT),
                );
                return (page << PAGE_SHIFT).max(offset).min(end);
            }
        };
        let bs = u64::from(map.block_size);
        let (start, stop) = (offset / bs, end.div_ceil(bs));
        let range = usize::try_from(start).unwrap_or(usize::MAX)
            ..usize::try_from(stop).unwrap_or(usize::MAX);
        match map
            .entries
            .get(range)
            .and_then(|e| e.iter().position(|&e| e == 0))
        {
            Some(i) => ((start + i as u64) * bs).max(offset).min(end),
            None => end,
        }
    }

    /// The first offset at or after `offset` inside a hole, or the disk size (SEEK_HOLE).
    pub fn next_hole(&self, offset: u64) -> u64 {
        let map = match &self.layout {
            Layout::Blocks { map, .. } => map,
            Layout::Pages(p) => {
                let page = p.next_hole_page(&self.shared, offset >> PAGE_SHIFT);
                return (page << PAGE_SHIFT).max(offset).min(p.size());
            }
        };
        let bs = u64::from(map.block_size);
        let start = offset / bs;
        let skip = usize::try_from(start).unwrap_or(usize::MAX);
        match map.entries.iter().skip(skip).position(|&e| e == 0) {
            Some(i) => ((start + i as u64) * bs).max(offset).min(map.disk_size),
            None => map.disk_size,
        }
    }
}
