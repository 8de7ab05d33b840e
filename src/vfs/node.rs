//! What the mount shows, as nodes, and the inode numbers that name them.
//!
//! ```text
//! /                                         Root
//! /<collection>/                            Collection
//! /<collection>/collection.json             CollectionJson
//! /<collection>/latest -> <point>           Latest
//! /<collection>/<point>/                    Point
//! /<collection>/<point>/restore-point.json  PointJson
//! /<collection>/<point>/vm-config           VmConfig
//! /<collection>/<point>/disks/              Disks
//! /<collection>/<point>/disks/<disk>.img    DiskImage
//! /<collection>/<point>/partitions/         Partitions
//! /<collection>/<point>/partitions/<disk>/  PartitionDisk
//! /<collection>/<point>/partitions/<disk>/p<N>.img  PartitionImage (a window of the disk)
//! /<collection>/<point>/files/              Files
//! /<collection>/<point>/files/<disk>/       FilesDisk (a disk with a partition table)
//! /<collection>/<point>/files/<disk>/p<N>/… Guest (the files of partition N)
//! /<collection>/<point>/files/<disk>/…      Guest (a disk that is one filesystem; N = 0)
//! ```
//!
//! Invariants: a node is identified by the UUIDs of what it shows, never by a name, so renames
//! cannot alias nodes (their numbers are in `inodes.rs`); a deleted point's nodes simply stop
//! resolving.

use std::ffi::OsString;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;
/// Cache lifetime of what changes: listings, `latest`, JSON resources.
pub const CHANGING_TTL: Duration = Duration::from_secs(1);
/// Cache lifetime of what never changes: the content of a committed point.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);

/// Names inside a point directory.
pub use crate::resource::POINT_DOCUMENT as POINT_JSON;
pub const VM_CONFIG: &str = "vm-config";
pub const DISKS: &str = "disks";
pub const PARTITIONS: &str = "partitions";
pub const FILES: &str = "files";
/// Names inside a collection directory besides its points (reserved where names are checked).
pub use crate::engine::names::{COLLECTION_JSON, LATEST};
/// Suffix of disk image files.
pub const IMAGE_SUFFIX: &str = ".img";

/// A node of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Collection(Uuid),
    CollectionJson(Uuid),
    Latest(Uuid),
    /// A restore point, by point id.
    Point(Uuid),
    PointJson(Uuid),
    VmConfig(Uuid),
    Disks(Uuid),
    /// A disk restore point: (point id, disk id).
    DiskImage(Uuid, Uuid),
    Partitions(Uuid),
    /// The partitions of one disk: (point id, disk id).
    PartitionDisk(Uuid, Uuid),
    /// Partition N of a disk: (point id, disk id, N).
    PartitionImage(Uuid, Uuid, u32),
    Files(Uuid),
    /// The filesystems of a partitioned disk: (point id, disk id).
    FilesDisk(Uuid, Uuid),
    /// A file inside partition N (0: the whole disk) of a disk: (point id, disk id, N, guest
    /// inode number). Hard links share the guest's number, so they share this node.
    Guest(Uuid, Uuid, u32, u64),
}

impl Node {
    /// How long the kernel may cache the node's attributes and name.
    pub fn ttl(self) -> Duration {
        if self.is_immutable() {
            IMMUTABLE_TTL
        } else {
            CHANGING_TTL
        }
    }

    /// True for what never changes once it exists (the content of a committed point).
    pub fn is_immutable(self) -> bool {
        matches!(
            self,
            Node::VmConfig(_)
                | Node::Disks(_)
                | Node::DiskImage(..)
                | Node::Partitions(_)
                | Node::PartitionDisk(..)
                | Node::PartitionImage(..)
                | Node::Files(_)
                | Node::FilesDisk(..)
                | Node::Guest(..)
        )
    }

    /// True for the nodes whose bytes are a disk's or the VM configuration's: private to the
    /// mounting user (and the image group) whatever else the mount allows. Exhaustive, so a
    /// new node must decide.
    pub fn is_raw_view(self) -> bool {
        match self {
            Node::VmConfig(_) | Node::DiskImage(..) | Node::PartitionImage(..) => true,
            Node::Root
            | Node::Collection(_)
            | Node::CollectionJson(_)
            | Node::Latest(_)
            | Node::Point(_)
            | Node::PointJson(_)
            | Node::Disks(_)
            | Node::Partitions(_)
            | Node::PartitionDisk(..)
            | Node::Files(_)
            | Node::FilesDisk(..)
            | Node::Guest(..) => false,
        }
    }
}

/// Kind of a node, as `stat` reports it: the same kinds a guest filesystem's files have.
pub use crate::inspect::guest::GuestKind as Kind;

/// Attributes of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Allocated 512-byte blocks: only stored (non-hole) data counts.
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Device number of a device file.
    pub rdev: u32,
}

/// A resolved name: its attributes and how long the kernel may cache them and the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: OsString,
}
