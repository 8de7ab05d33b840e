//! The subtree under `files/`: the filesystems inside a point's disks, file by file.
//!
//! Invariants: a guest file's node is (point, disk, partition, the guest's own inode number),
//! the root of each filesystem being number 0, so every file has one node and one inode number;
//! names are bytes, taken as the guest stores them; attributes are the guest's own (owned by
//! the mounting user where the filesystem has no owners), owners and modes mapped under
//! `--allow-other` as `access.rs` says; what a guest filesystem cannot give
//! is EIO naming the filesystem, in that filesystem alone, and an entry whose own inode is
//! damaged is listed (as the kernel's readdir lists names without reading inodes) and EIO when
//! looked up, stat'ed or opened, in that file alone. The filesystem behind a node may have been
//! closed as idle since the kernel got its number: it is reopened here on demand, and the
//! number still names the same file (see `open_guests.rs`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use uuid::Uuid;

use super::inodes::GuestKey;
use super::media::GuestFs;
use super::node::{Attr, DirEntry, Entry, IMMUTABLE_TTL, Node};
use super::snapshot::Snapshot;
use super::{FsError, Vfs};
use crate::inspect::guest::{GuestAttr, GuestError, GuestKind};
use crate::store::records::PointRecord;

impl Vfs {
    /// The filesystem `files/` shows for `key`; there is none where rpfs reads none.
    pub(super) fn guest_fs(
        &self,
        snap: &Snapshot,
        (p, d, n): GuestKey,
    ) -> Result<GuestFs, FsError> {
        self.media
            .guest(snap, snap.point(p)?, d, n)?
            .ok_or(FsError::NotFound)
    }

    /// The node of `files/<disk>`: the disk's filesystem when it has no partition table, else
    /// the directory of its partitions' filesystems.
    pub(super) fn files_disk(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        d: Uuid,
    ) -> Result<Node, FsError> {
        let media = &self.media;
        if media.partition_table(snap, point, d)?.is_empty()
            && media.guest(snap, point, d, 0)?.is_some()
        {
            Ok(Node::Guest(point.id, d, 0, 0))
        } else {
            Ok(Node::FilesDisk(point.id, d))
        }
    }

    /// Attributes of guest file `ino` (0: the root) of `key`.
    pub(super) fn guest_attr(
        &self,
        snap: &Snapshot,
        key: GuestKey,
        ino: u64,
    ) -> Result<Attr, FsError> {
        let g = self.guest_fs(snap, key)?;
        let a = g.fs.attr(guest_ino(&g, ino)?);
        let a = a.map_err(|e| guest_error(&g, e))?;
        self.attr_of(Node::Guest(key.0, key.1, key.2, ino), a)
    }

    /// A guest file's attributes as the mount shows them: the guest's own, with owners and
    /// mode mapped as `access.rs` says (under `--allow-other`, the mounting user's).
    fn attr_of(&self, node: Node, a: GuestAttr) -> Result<Attr, FsError> {
        let own = super::access::guest_file(&self.options, a.perm, a.uid, a.gid);
        Ok(Attr {
            ino: self.ino(node)?,
            kind: a.kind,
            size: a.size,
            blocks: a.blocks,
            perm: own.perm,
            nlink: a.nlink,
            uid: own.uid,
            gid: own.gid,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            rdev: a.rdev,
        })
    }

    /// Entry `name` of guest directory `dir` (0: the root) of `key`, counted by the guest
    /// filesystem as one lookup the kernel holds (returned if the entry cannot be made).
    pub(super) fn guest_lookup(
        &self,
        snap: &Snapshot,
        key: GuestKey,
        dir: u64,
        name: &OsStr,
    ) -> Result<Entry, FsError> {
        let g = self.guest_fs(snap, key)?;
        let a =
            g.fs.lookup(guest_ino(&g, dir)?, name.as_bytes())
                .map_err(|e| guest_error(&g, e))?;
        let attr = guest_node(&g, key, a.ino).and_then(|node| self.attr_of(node, a));
        if attr.is_err() {
            g.fs.forget(a.ino, 1);
        }
        Ok(Entry {
            attr: attr?,
            ttl: IMMUTABLE_TTL,
        })
    }

    /// The parent and the entries of guest directory `ino` (0: the root) of `key`.
    pub(super) fn guest_listing(
        &self,
        snap: &Snapshot,
        key: GuestKey,
        ino: u64,
    ) -> Result<(Node, Vec<DirEntry>), FsError> {
        let (p, d, n) = key;
        let g = self.guest_fs(snap, key)?;
        let listing =
            g.fs.list(guest_ino(&g, ino)?)
                .map_err(|e| guest_error(&g, e))?;
        let parent = match (ino, n) {
            (0, 0) => Node::Files(p),
            (0, _) => Node::FilesDisk(p, d),
            _ => {
                let up = g.fs.parent(ino).map_err(|e| guest_error(&g, e))?;
                guest_node(&g, key, up)?
            }
        };
        let mut out = Vec::with_capacity(listing.len());
        for (name, a) in listing.entries() {
            out.push(DirEntry {
                ino: self.ino(guest_node(&g, key, a.ino)?)?,
                kind: a.kind,
                name: OsString::from(OsStr::from_bytes(name)),
            });
        }
        Ok((parent, out))
    }

    /// The target of guest symlink `ino` of `key`, as stored.
    pub(super) fn guest_readlink(
        &self,
        snap: &Snapshot,
        key: GuestKey,
        ino: u64,
    ) -> Result<Vec<u8>, FsError> {
        let g = self.guest_fs(snap, key)?;
        g.fs.read_link(ino).map_err(|e| guest_error(&g, e))
    }

    /// Guest file `ino` of `key`, to be opened: refused unless it is a regular file.
    pub(super) fn guest_file(
        &self,
        snap: &Snapshot,
        key: GuestKey,
        ino: u64,
    ) -> Result<GuestFs, FsError> {
        let g = self.guest_fs(snap, key)?;
        let a = g.fs.attr(guest_ino(&g, ino)?);
        match a.map_err(|e| guest_error(&g, e))?.kind {
            GuestKind::File => Ok(g),
            GuestKind::Directory => Err(FsError::IsDir),
            GuestKind::Symlink => Err(FsError::Invalid("a symbolic link cannot be opened".into())),
            // The mount is `nodev`, so the kernel refuses these before asking.
            GuestKind::CharDevice
            | GuestKind::BlockDevice
            | GuestKind::Fifo
            | GuestKind::Socket => Err(FsError::AccessDenied(
                "device files, fifos and sockets of a restore point cannot be opened".into(),
            )),
        }
    }
}

/// The guest's inode number for a node's (0: the root).
fn guest_ino(g: &GuestFs, ino: u64) -> Result<u64, FsError> {
    match ino {
        0 => Ok(g.fs.root().map_err(|e| guest_error(g, e))?.ino),
        ino => Ok(ino),
    }
}

/// The node of guest file `ino` (the root is always number 0, so it has one node).
fn guest_node(g: &GuestFs, (p, d, n): GuestKey, ino: u64) -> Result<Node, FsError> {
    let root = g.fs.root().map_err(|e| guest_error(g, e))?.ino;
    Ok(Node::Guest(p, d, n, if ino == root { 0 } else { ino }))
}

/// A guest error as the mount reports it; damage names the filesystem it is in.
pub(super) fn guest_error(g: &GuestFs, e: GuestError) -> FsError {
    match e {
        GuestError::NotFound => FsError::NotFound,
        GuestError::NotDir => FsError::NotDir,
        GuestError::NotFile => FsError::Invalid("not a regular file".into()),
        GuestError::Damaged(why) => FsError::Guest(format!("{}: {why}", g.label)),
    }
}
