//! What the mount reads points through, made on first use and shared: open disk images, their
//! sizes, their partition tables, and the guest filesystems inside them.
//!
//! Invariants: everything here describes a committed point, so it never changes and is never
//! refreshed; it is dropped when its point leaves the catalog ([`Media::retain_points`]). Locks
//! are held only to look up or insert: opening an image, reading a table or probing a
//! filesystem happens outside them (two threads may both do it; the first result stays). Guest
//! filesystems are kept open within the ceilings of `open_guests.rs`; images, sizes and
//! partition tables are a few bytes per disk of the catalog, except open images, which live
//! only while something (a handle, an open guest filesystem) holds them.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use uuid::Uuid;

use super::errno::FsError;
use super::inodes::GuestKey;
use super::open_guests::OpenGuests;
use super::snapshot::Snapshot;
use crate::engine::{DiskImage, Engine};
use crate::inspect::Window;
use crate::inspect::guest::{FsType, Guest};
use crate::inspect::partitions::{self, Partition};
use crate::store::records::PointRecord;

/// The partitions of a disk image, each with its data bytes.
pub type PartitionTable = Arc<Vec<(Partition, u64)>>;

/// A guest filesystem rpfs can read, with what to call it in errors.
#[derive(Clone)]
pub struct GuestFs {
    pub fs: Arc<Guest>,
    pub label: Arc<str>,
}

/// The media of the mount's points, by (point, disk).
pub struct Media {
    engine: Engine,
    /// Open disk images, shared by the handles that read them.
    images: Mutex<HashMap<(Uuid, Uuid), Weak<DiskImage>>>,
    /// (size, allocated bytes) of disk images: costly to count.
    sizes: Mutex<HashMap<(Uuid, Uuid), (u64, u64)>>,
    /// Partitions of disk images, with the data bytes of each.
    partitions: Mutex<HashMap<(Uuid, Uuid), PartitionTable>>,
    /// Guest filesystems: probed, open (bounded) and the files of each the kernel holds.
    guests: OpenGuests,
}

/// The name of disk `disk` of `point`.
fn disk_name(point: &PointRecord, disk: Uuid) -> Result<&str, FsError> {
    point
        .disks
        .iter()
        .find(|d| d.disk_id == disk)
        .map(|d| d.name.as_str())
        .ok_or(FsError::NotFound)
}

impl Media {
    pub fn new(engine: Engine) -> Media {
        Media {
            engine,
            images: Mutex::default(),
            sizes: Mutex::default(),
            partitions: Mutex::default(),
            guests: OpenGuests::new(),
        }
    }

    /// Forgets what belongs to points `live` rejects (they left the catalog).
    pub fn retain_points(&self, live: impl Fn(Uuid) -> bool) {
        self.images.lock().retain(|_, w| w.strong_count() > 0);
        self.sizes.lock().retain(|(p, _), _| live(*p));
        self.partitions.lock().retain(|(p, _), _| live(*p));
        self.guests.retain_points(live);
    }

    /// Loads the block map of disk `disk` of `point`.
    fn open_image(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        disk: Uuid,
    ) -> Result<DiskImage, FsError> {
        let coll = snap.collection(point.collection_id)?;
        Ok(self
            .engine
            .open_disk(&coll.name, point, disk_name(point, disk)?)?)
    }

    /// The shared, open image of disk `disk` of `point`, with all its packs open.
    pub fn image(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        disk: Uuid,
    ) -> Result<Arc<DiskImage>, FsError> {
        let key = (point.id, disk);
        if let Some(img) = self.images.lock().get(&key).and_then(Weak::upgrade) {
            return Ok(img);
        }
        let img = Arc::new(self.open_image(snap, point, disk)?);
        img.open_all_packs()?;
        self.images.lock().insert(key, Arc::downgrade(&img));
        Ok(img)
    }

    /// (size, allocated bytes) of disk `disk` of `point`.
    pub fn image_size(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        disk: Uuid,
    ) -> Result<(u64, u64), FsError> {
        if let Some(&s) = self.sizes.lock().get(&(point.id, disk)) {
            return Ok(s);
        }
        // Counting needs the block map only: no pack is opened for a `stat`.
        let img = self.open_image(snap, point, disk)?;
        let s = (img.size(), img.allocated_bytes());
        self.sizes.lock().insert((point.id, disk), s);
        Ok(s)
    }

    /// The partitions of disk `disk` of `point`, each with its data bytes; read once.
    pub fn partition_table(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        disk: Uuid,
    ) -> Result<PartitionTable, FsError> {
        if let Some(t) = self.partitions.lock().get(&(point.id, disk)) {
            return Ok(t.clone());
        }
        let image = self.image(snap, point, disk)?;
        let table: Vec<(Partition, u64)> = partitions::read(&*image)
            .into_iter()
            .map(|part| (part, Window::partition(image.clone(), &part).allocated()))
            .collect();
        let table = Arc::new(table);
        self.partitions
            .lock()
            .insert((point.id, disk), table.clone());
        Ok(table)
    }

    /// Partition `n` of disk `disk` of `point`, with its data bytes.
    pub fn partition(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        disk: Uuid,
        n: u32,
    ) -> Result<(Partition, u64), FsError> {
        self.partition_table(snap, point, disk)?
            .iter()
            .find(|(p, _)| p.number == n)
            .copied()
            .ok_or(FsError::NotFound)
    }

    /// The window of disk `disk` of `point` that partition `n` covers (0: the whole disk).
    pub fn window(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        disk: Uuid,
        n: u32,
    ) -> Result<Window<DiskImage>, FsError> {
        if n == 0 {
            return Ok(Window::whole(self.image(snap, point, disk)?));
        }
        let (part, _) = self.partition(snap, point, disk, n)?;
        Ok(Window::partition(self.image(snap, point, disk)?, &part))
    }

    /// The filesystem in partition `n` (0: the whole disk) of disk `d` of `point`, if rpfs
    /// reads it; probed once, opened on demand (again after it was closed).
    pub fn guest(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        d: Uuid,
        n: u32,
    ) -> Result<Option<GuestFs>, FsError> {
        let key = (point.id, d, n);
        if self.guests.probed(&key).is_none() {
            let window = self.window(snap, point, d, n)?;
            let found = FsType::probe(&window).map(|fs| {
                let coll = snap
                    .collection(point.collection_id)
                    .map_or("?", |c| &c.name);
                let disk = disk_name(point, d).unwrap_or("?");
                let place = match n {
                    0 => format!("disk {disk}"),
                    n => format!("partition {n} of disk {disk}"),
                };
                let label: Arc<str> =
                    format!("{} in {place} of {coll}/{}", fs.name(), point.name).into();
                (fs, label)
            });
            self.guests.set_probed(key, found);
        }
        let open = self.guests.get(key, || self.window(snap, point, d, n))?;
        Ok(open.map(|(fs, label)| GuestFs { fs, label }))
    }

    /// Returns `n` of the kernel's lookups of guest file `ino` of `key`.
    pub fn forget_guest(&self, key: &GuestKey, ino: u64, n: u64) {
        self.guests.forget(key, ino, n);
    }

    /// Guest files looked up and not forgotten, in all (each filesystem's root included).
    pub fn known_guest_files(&self) -> usize {
        self.guests.known_files()
    }
}
