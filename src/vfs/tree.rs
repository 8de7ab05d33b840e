//! Names and listings of the catalog's part of the tree: collections, points, and the
//! directories inside a point. Guest directories are answered by `guests.rs`.
//!
//! Invariants: a name resolves against one snapshot; listings put `.` and `..` first; a lookup
//! answered to the kernel counts as one of its lookups (see `inodes.rs`) until it forgets it.

use std::ffi::OsStr;

use super::node::{
    COLLECTION_JSON, DISKS, DirEntry, Entry, FILES, IMAGE_SUFFIX, Kind, LATEST, Node, PARTITIONS,
    POINT_JSON, VM_CONFIG,
};
use super::snapshot::Snapshot;
use super::{FsError, Vfs};

impl Vfs {
    /// The node `name` names inside catalog directory `parent`.
    fn child(&self, snap: &Snapshot, parent: Node, name: &str) -> Result<Node, FsError> {
        match parent {
            Node::Root => snap
                .cat
                .collections
                .iter()
                .find(|c| c.name == name)
                .map(|c| Node::Collection(c.id))
                .ok_or(FsError::NotFound),
            Node::Collection(c) => match name {
                COLLECTION_JSON => Ok(Node::CollectionJson(c)),
                LATEST if snap.latest(c).is_some() => Ok(Node::Latest(c)),
                _ => snap
                    .cat
                    .points_in(c)
                    .find(|p| p.name == name)
                    .map(|p| Node::Point(p.id))
                    .ok_or(FsError::NotFound),
            },
            Node::Point(p) => {
                snap.point(p)?;
                match name {
                    POINT_JSON => Ok(Node::PointJson(p)),
                    VM_CONFIG => Ok(Node::VmConfig(p)),
                    DISKS => Ok(Node::Disks(p)),
                    PARTITIONS => Ok(Node::Partitions(p)),
                    FILES => Ok(Node::Files(p)),
                    _ => Err(FsError::NotFound),
                }
            }
            Node::Partitions(p) => snap
                .point(p)?
                .disks
                .iter()
                .find(|d| d.name == name)
                .map(|d| Node::PartitionDisk(p, d.disk_id))
                .ok_or(FsError::NotFound),
            Node::Files(p) => {
                let point = snap.point(p)?;
                let d = point
                    .disks
                    .iter()
                    .find(|d| d.name == name)
                    .ok_or(FsError::NotFound)?;
                self.files_disk(snap, point, d.disk_id)
            }
            Node::FilesDisk(p, d) => {
                let n: u32 = name
                    .strip_prefix('p')
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0 && name == format!("p{n}"))
                    .ok_or(FsError::NotFound)?;
                self.guest_fs(snap, (p, d, n))?;
                Ok(Node::Guest(p, d, n, 0))
            }
            // Guest names are bytes: `lookup` resolves them.
            Node::Guest(..) => Err(FsError::NotFound),
            Node::PartitionDisk(p, d) => {
                let n: u32 = name
                    .strip_prefix('p')
                    .and_then(|n| n.strip_suffix(IMAGE_SUFFIX))
                    .and_then(|n| n.parse().ok())
                    .ok_or(FsError::NotFound)?;
                let point = snap.point(p)?;
                self.media.partition(snap, point, d, n)?;
                Ok(Node::PartitionImage(p, d, n))
            }
            Node::Disks(p) => {
                let point = snap.point(p)?;
                let disk = name.strip_suffix(IMAGE_SUFFIX).ok_or(FsError::NotFound)?;
                point
                    .disks
                    .iter()
                    .find(|d| d.name == disk)
                    .map(|d| Node::DiskImage(p, d.disk_id))
                    .ok_or(FsError::NotFound)
            }
            Node::CollectionJson(_)
            | Node::Latest(_)
            | Node::PointJson(_)
            | Node::VmConfig(_)
            | Node::DiskImage(..)
            | Node::PartitionImage(..) => Err(FsError::NotDir),
        }
    }

    /// Resolves `name` inside directory `parent`; the kernel holds the answer from now on.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, FsError> {
        let parent = self.node(parent)?;
        let snap = self.snapshot()?;
        if let Node::Guest(p, d, n, ino) = parent {
            // The guest filesystem counts the lookups it answers.
            return self.guest_lookup(&snap, (p, d, n), ino, name);
        }
        // No rpfs name is anything but UTF-8, so such a name simply does not exist.
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let node = self.child(&snap, parent, name)?;
        self.held_entry(&snap, node)
    }

    /// The entries of directory `ino`, with `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.node(ino)?;
        let snap = self.snapshot()?;
        let entry = |node: Node, kind: Kind, name: &str| -> Result<DirEntry, FsError> {
            Ok(DirEntry {
                ino: self.ino(node)?,
                kind,
                name: name.into(),
            })
        };
        let dir = |node: Node, name: &str| entry(node, Kind::Directory, name);
        let file = |node: Node, name: &str| entry(node, Kind::File, name);
        let (parent, children): (Node, Vec<DirEntry>) = match node {
            Node::Root => (
                Node::Root,
                snap.cat
                    .collections
                    .iter()
                    .map(|c| dir(Node::Collection(c.id), &c.name))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Collection(c) => {
                snap.collection(c)?;
                let mut out = vec![file(Node::CollectionJson(c), COLLECTION_JSON)?];
                if snap.latest(c).is_some() {
                    out.push(entry(Node::Latest(c), Kind::Symlink, LATEST)?);
                }
                for p in snap.cat.points_in(c) {
                    out.push(dir(Node::Point(p.id), &p.name)?);
                }
                (Node::Root, out)
            }
            Node::Point(p) => {
                let point = snap.point(p)?;
                (
                    Node::Collection(point.collection_id),
                    vec![
                        file(Node::PointJson(p), POINT_JSON)?,
                        file(Node::VmConfig(p), VM_CONFIG)?,
                        dir(Node::Disks(p), DISKS)?,
                        dir(Node::Partitions(p), PARTITIONS)?,
                        dir(Node::Files(p), FILES)?,
                    ],
                )
            }
            Node::Files(p) => {
                let point = snap.point(p)?;
                let mut out = Vec::with_capacity(point.disks.len());
                for d in &point.disks {
                    out.push(dir(self.files_disk(&snap, point, d.disk_id)?, &d.name)?);
                }
                (Node::Point(p), out)
            }
            Node::FilesDisk(p, d) => {
                let point = snap.point(p)?;
                let mut out = Vec::new();
                let table = self.media.partition_table(&snap, point, d)?;
                for (part, _) in table.iter() {
                    let n = part.number;
                    if self.media.guest(&snap, point, d, n)?.is_some() {
                        out.push(dir(Node::Guest(p, d, n, 0), &format!("p{n}"))?);
                    }
                }
                (Node::Files(p), out)
            }
            Node::Guest(p, d, n, ino) => self.guest_listing(&snap, (p, d, n), ino)?,
            Node::Partitions(p) => {
                let mut out = Vec::new();
                for d in &snap.point(p)?.disks {
                    out.push(dir(Node::PartitionDisk(p, d.disk_id), &d.name)?);
                }
                (Node::Point(p), out)
            }
            Node::PartitionDisk(p, d) => {
                let point = snap.point(p)?;
                let mut out = Vec::new();
                let table = self.media.partition_table(&snap, point, d)?;
                for (part, _) in table.iter() {
                    let n = part.number;
                    let name = format!("p{n}{IMAGE_SUFFIX}");
                    out.push(file(Node::PartitionImage(p, d, n), &name)?);
                }
                (Node::Partitions(p), out)
            }
            Node::Disks(p) => {
                let mut out = Vec::new();
                for d in &snap.point(p)?.disks {
                    let name = format!("{}{IMAGE_SUFFIX}", d.name);
                    out.push(file(Node::DiskImage(p, d.disk_id), &name)?);
                }
                (Node::Point(p), out)
            }
            Node::CollectionJson(_)
            | Node::Latest(_)
            | Node::PointJson(_)
            | Node::VmConfig(_)
            | Node::DiskImage(..)
            | Node::PartitionImage(..) => return Err(FsError::NotDir),
        };
        let mut out = vec![dir(node, ".")?, dir(parent, "..")?];
        out.extend(children);
        Ok(out)
    }

    /// The target of symlink `ino` (`latest`: the newest point's name).
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        match self.node(ino)? {
            Node::Latest(c) => {
                let snap = self.snapshot()?;
                let p = snap.latest(c).ok_or(FsError::NotFound)?;
                Ok(p.name.clone().into_bytes())
            }
            Node::Guest(p, d, n, ino) => {
                let snap = self.snapshot()?;
                self.guest_readlink(&snap, (p, d, n), ino)
            }
            _ => Err(FsError::Invalid("not a symbolic link".into())),
        }
    }
}
