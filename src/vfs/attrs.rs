//! Attributes of the catalog's nodes, and the JSON documents the tree shows.
//!
//! Invariants: a node's attributes come from one snapshot; directories of committed points are
//! read-only (0555), JSON documents read-only files (0444), raw views of VM data (disk and
//! partition images, `vm-config`) 0400 or 0440 with the image group (see `access.rs`), and
//! `st_blocks` counts only stored data, so `du` and `cp --sparse` see a disk image's holes.

use std::sync::Arc;
use std::time::SystemTime;

use super::access;
use super::node::{Attr, Entry, Kind, Node};
use super::snapshot::Snapshot;
use super::{FsError, Vfs, parse_time};
use crate::resource;
use crate::store::records::{CollectionRecord, PointRecord};

impl Vfs {
    /// Attributes of `node` in `snap`.
    pub(super) fn attr(&self, snap: &Snapshot, node: Node) -> Result<Attr, FsError> {
        if let Node::Guest(p, d, n, ino) = node {
            return self.guest_attr(snap, (p, d, n), ino);
        }
        let dir = |perm: u16, nlink: u32, time| (Kind::Directory, 0, 0, perm, nlink, time);
        let file = |size: u64, time| (Kind::File, size, size.div_ceil(512), 0o444, 1, time);
        // Disk and partition images and `vm-config`: private whatever else the mount allows.
        let raw = access::raw_view(&self.options);
        let (kind, size, blocks, perm, nlink, time) = match node {
            Node::Root => dir(
                0o755,
                2 + snap.cat.collections.len() as u32,
                self.store_created,
            ),
            Node::Collection(c) => {
                let coll = snap.collection(c)?;
                let points = snap.cat.points_in(c).count() as u32;
                dir(0o755, 2 + points, collection_time(snap, coll))
            }
            Node::CollectionJson(c) => {
                let coll = snap.collection(c)?;
                file(
                    self.collection_json(snap, coll)?.len() as u64,
                    collection_time(snap, coll),
                )
            }
            Node::Latest(c) => {
                let p = snap.latest(c).ok_or(FsError::NotFound)?;
                (
                    Kind::Symlink,
                    p.name.len() as u64,
                    0,
                    0o777,
                    1,
                    parse_time(&p.created),
                )
            }
            Node::Point(p) => dir(0o555, 4, parse_time(&snap.point(p)?.created)),
            Node::Disks(p) => dir(0o555, 2, parse_time(&snap.point(p)?.created)),
            Node::Partitions(p) => {
                let point = snap.point(p)?;
                dir(
                    0o555,
                    2 + point.disks.len() as u32,
                    parse_time(&point.created),
                )
            }
            Node::PartitionDisk(p, _) | Node::Files(p) | Node::FilesDisk(p, _) => {
                dir(0o555, 2, parse_time(&snap.point(p)?.created))
            }
            // Answered above, by the guest filesystem.
            Node::Guest(..) => return Err(FsError::NotFound),
            Node::PartitionImage(p, d, n) => {
                let point = snap.point(p)?;
                let (part, allocated) = self.media.partition(snap, point, d, n)?;
                (
                    Kind::File,
                    part.len,
                    allocated.div_ceil(512),
                    raw.perm,
                    1,
                    parse_time(&point.created),
                )
            }
            Node::PointJson(p) => {
                let point = snap.point(p)?;
                file(
                    self.point_json(snap, point)?.len() as u64,
                    parse_time(&point.created),
                )
            }
            Node::VmConfig(p) => {
                let point = snap.point(p)?;
                let size = point.config_len;
                let time = parse_time(&point.created);
                (Kind::File, size, size.div_ceil(512), raw.perm, 1, time)
            }
            Node::DiskImage(p, d) => {
                let point = snap.point(p)?;
                let (size, allocated) = self.media.image_size(snap, point, d)?;
                (
                    Kind::File,
                    size,
                    allocated.div_ceil(512),
                    raw.perm,
                    1,
                    parse_time(&point.created),
                )
            }
        };
        let (uid, gid) = if node.is_raw_view() {
            (raw.uid, raw.gid)
        } else {
            (self.options.owner_uid, self.options.owner_gid)
        };
        Ok(Attr {
            ino: self.ino(node)?,
            kind,
            size,
            blocks,
            perm,
            nlink,
            uid,
            gid,
            atime: time,
            mtime: time,
            ctime: time,
            rdev: 0,
        })
    }

    pub(super) fn entry(&self, snap: &Snapshot, node: Node) -> Result<Entry, FsError> {
        Ok(Entry {
            attr: self.attr(snap, node)?,
            ttl: node.ttl(),
        })
    }

    /// The entry of `node` for a lookup (or mkdir) answering the kernel: its number is held
    /// (counted) before the attributes are made, and released again if they cannot be.
    pub(super) fn held_entry(&self, snap: &Snapshot, node: Node) -> Result<Entry, FsError> {
        let ino = self.inodes.lock().hold(node);
        let entry = self.entry(snap, node);
        if let (Some(ino), Err(_)) = (ino, &entry) {
            self.inodes.lock().forget(ino, 1);
        }
        entry
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Entry, FsError> {
        let node = self.node(ino)?;
        let snap = self.snapshot()?;
        self.entry(&snap, node)
    }

    /// The collection's resource document, made once per snapshot.
    pub(super) fn collection_json(
        &self,
        snap: &Snapshot,
        c: &CollectionRecord,
    ) -> Result<Arc<Vec<u8>>, FsError> {
        snap.document(Node::CollectionJson(c.id), || {
            let store_id = self.engine.header().store_id;
            Ok(resource::to_bytes(&resource::collection(
                store_id, &snap.cat, c,
            )))
        })
    }

    /// The point's resource document, made once per snapshot.
    pub(super) fn point_json(
        &self,
        snap: &Snapshot,
        p: &PointRecord,
    ) -> Result<Arc<Vec<u8>>, FsError> {
        snap.document(Node::PointJson(p.id), || {
            let coll = snap.collection(p.collection_id)?;
            let vm = snap.cat.vm_by_id(p.vm_id);
            let store_id = self.engine.header().store_id;
            Ok(resource::to_bytes(&resource::point(store_id, coll, vm, p)))
        })
    }
}

/// A collection's directory changes when a point is added: its time is its newest point's.
fn collection_time(snap: &Snapshot, c: &CollectionRecord) -> SystemTime {
    let created = parse_time(&c.created);
    snap.latest(c.id)
        .map_or(created, |p| parse_time(&p.created).max(created))
}
