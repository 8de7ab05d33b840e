//! The filesystem users see, as plain Rust: the tree of collections, points and disk images;
//! attributes; listings; `mkdir` creating points and `rmdir` deleting them. Knows nothing of
//! FUSE (the adapter in `fuse/` translates), so every behaviour is testable without a kernel.
//!
//! Invariants:
//! - The tree is read-only except for `mkdir` (a new point directly inside a collection) and,
//!   when allowed, `rmdir` (of a point). Every other change is refused.
//! - Names resolve against a catalog snapshot at most [`VfsOptions::catalog_max_age`] old, so a
//!   point created or deleted by another process shows within that time; `mkdir` and `rmdir`
//!   refresh it at once.
//! - What a committed point holds never changes: its disk images and configuration are served
//!   with long cache lifetimes; what changes (collection listings, `latest`, JSON resources) is
//!   served with short ones.
//! - Locks: `inodes`, `snapshot`, `handles`, `images` and `guests` are each held only for a
//!   lookup or an insert, never across I/O or a creation, so a long `mkdir` blocks no read.
//! - `files/` costs nothing until entered: a disk's table is read and its filesystems probed on
//!   first use, each parsed by its own [`Guest`]; what one cannot read is EIO in it alone.

mod errno;
mod node;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use uuid::Uuid;

pub use errno::{FsError, Level};
pub use node::{Attr, DirEntry, Entry, Kind, Node, ROOT_INO};

use crate::engine::create::CreateRequest;
use crate::engine::progress::Silent;
use crate::engine::{Catalog, DiskImage, Engine, now_rfc3339};
use crate::inspect::Window;
use crate::inspect::guest::{FsType, Guest, GuestAttr, GuestError, GuestKind};
use crate::inspect::partitions::{self, Partition};
use crate::resource;
use crate::store::records::{CollectionRecord, LastOperation, PointRecord};
use node::{
    COLLECTION_JSON, DISKS, FILES, IMAGE_SUFFIX, Inodes, LATEST, PARTITIONS, POINT_JSON, VM_CONFIG,
};

/// Cache lifetime of what changes: listings, `latest`, JSON resources.
pub const CHANGING_TTL: Duration = Duration::from_secs(1);
/// Cache lifetime of what never changes: the content of a committed point.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;
const BLOCK: u32 = 4096;

/// How the tree behaves; built by the CLI from its flags.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// `rmdir` of a point deletes it; otherwise refused.
    pub allow_delete: bool,
    /// Other users may use the mount; then only root and `owner_uid` may `mkdir`/`rmdir`.
    pub allow_other: bool,
    /// Owner of every node: the mounting user.
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Oldest a catalog snapshot may be when a name is resolved or a directory listed.
    pub catalog_max_age: Duration,
}

/// A file opened through the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Keep the kernel's page cache across opens (the content never changes).
    pub keep_cache: bool,
    /// Bypass the page cache (generated content whose size may change).
    pub direct_io: bool,
}

/// Capacity figures for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub bsize: u32,
    pub namelen: u32,
}

enum Handle {
    /// A disk image, or the window of it a partition covers.
    Image(Window<DiskImage>),
    Bytes(Arc<Vec<u8>>),
    /// A file inside a guest filesystem, by its guest inode number.
    Guest(GuestFs, u64),
    /// A directory listing, taken at `opendir`, so offsets stay valid while the directory
    /// changes.
    Dir(Arc<Vec<DirEntry>>),
}

/// The partitions of a disk image, each with its data bytes.
type PartitionTable = Arc<Vec<(Partition, u64)>>;

/// A guest filesystem of a point, keyed by (point, disk, partition number or 0 for the disk).
type GuestKey = (Uuid, Uuid, u32);

/// A guest filesystem rpfs can read, with what to call it in errors.
#[derive(Clone)]
struct GuestFs {
    fs: Arc<Guest>,
    label: Arc<str>,
}

/// A catalog with indexes by id.
struct Snapshot {
    /// When the load that produced it started: anything committed before then is in it.
    loaded: Instant,
    cat: Catalog,
    points: HashMap<Uuid, usize>,
    collections: HashMap<Uuid, usize>,
    /// Generated JSON of this snapshot's collections and points, made on first use.
    json: Mutex<HashMap<Node, Arc<Vec<u8>>>>,
}

impl Snapshot {
    fn new(cat: Catalog, loaded: Instant) -> Snapshot {
        let points = cat
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id, i))
            .collect();
        let collections = cat
            .collections
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect();
        Snapshot {
            loaded,
            cat,
            points,
            collections,
            json: Mutex::new(HashMap::new()),
        }
    }

    fn point(&self, id: Uuid) -> Result<&PointRecord, FsError> {
        self.points
            .get(&id)
            .map(|&i| &self.cat.points[i])
            .ok_or(FsError::NotFound)
    }

    fn collection(&self, id: Uuid) -> Result<&CollectionRecord, FsError> {
        self.collections
            .get(&id)
            .map(|&i| &self.cat.collections[i])
            .ok_or(FsError::NotFound)
    }

    fn latest(&self, collection: Uuid) -> Option<&PointRecord> {
        self.cat.points_in(collection).max_by_key(|p| p.seq)
    }
}

/// The tree over one store.
pub struct Vfs {
    engine: Engine,
    options: VfsOptions,
    inodes: Mutex<Inodes>,
    snapshot: Mutex<Arc<Snapshot>>,
    /// Held while the catalog is reloaded: one reload at a time.
    reloading: Mutex<()>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Open disk images, shared by the handles that read them.
    images: Mutex<HashMap<(Uuid, Uuid), Weak<DiskImage>>>,
    /// (size, allocated bytes) of disk images: immutable, and costly to count.
    image_sizes: Mutex<HashMap<(Uuid, Uuid), (u64, u64)>>,
    /// Partitions of disk images, with the data bytes of each: immutable, read on first use.
    partitions: Mutex<HashMap<(Uuid, Uuid), PartitionTable>>,
    /// Guest filesystems probed so far (None: nothing rpfs reads there). Immutable, made on
    /// first use.
    guests: Mutex<HashMap<GuestKey, Option<GuestFs>>>,
    store_created: SystemTime,
}

fn parse_time(t: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(t).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn utf8(name: &OsStr) -> Result<&str, FsError> {
    name.to_str().ok_or(FsError::BadName)
}

impl Vfs {
    /// A tree over `engine`'s store.
    pub fn new(engine: Engine, options: VfsOptions) -> Result<Vfs, FsError> {
        let snapshot = Snapshot::new(engine.catalog()?, Instant::now());
        let store_created = parse_time(&engine.header().created);
        Ok(Vfs {
            engine,
            options,
            inodes: Mutex::new(Inodes::default()),
            snapshot: Mutex::new(Arc::new(snapshot)),
            reloading: Mutex::new(()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            images: Mutex::new(HashMap::new()),
            image_sizes: Mutex::new(HashMap::new()),
            partitions: Mutex::new(HashMap::new()),
            guests: Mutex::new(HashMap::new()),
            store_created,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The current snapshot, reloaded when older than the configured age.
    fn snapshot(&self) -> Result<Arc<Snapshot>, FsError> {
        let current = self.snapshot.lock().clone();
        if current.loaded.elapsed() <= self.options.catalog_max_age {
            return Ok(current);
        }
        // One reload at a time; whoever waited uses a reload that started after it asked.
        let asked = Instant::now();
        let _reloading = self.reloading.lock();
        let current = self.snapshot.lock().clone();
        if current.loaded >= asked {
            return Ok(current);
        }
        self.load()
    }

    /// Reloads the snapshot now (after a change made through the mount).
    fn refresh(&self) -> Result<Arc<Snapshot>, FsError> {
        let _reloading = self.reloading.lock();
        self.load()
    }

    /// Loads a snapshot and installs it unless a newer one is there. The caller holds
    /// `reloading`.
    fn load(&self) -> Result<Arc<Snapshot>, FsError> {
        let started = Instant::now();
        let fresh = Arc::new(Snapshot::new(self.engine.catalog()?, started));
        {
            let mut slot = self.snapshot.lock();
            if slot.loaded < fresh.loaded {
                *slot = fresh.clone();
            }
        }
        // Forget what belongs to points that are gone.
        self.images.lock().retain(|_, w| w.strong_count() > 0);
        self.image_sizes
            .lock()
            .retain(|(p, _), _| fresh.points.contains_key(p));
        self.partitions
            .lock()
            .retain(|(p, _), _| fresh.points.contains_key(p));
        self.guests
            .lock()
            .retain(|(p, _, _), _| fresh.points.contains_key(p));
        Ok(fresh)
    }

    fn ino(&self, node: Node) -> u64 {
        self.inodes.lock().ino(node)
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes.lock().node(ino).ok_or(FsError::Stale(ino))
    }

    // ----- attributes -----

    fn attr(&self, snap: &Snapshot, node: Node) -> Result<Attr, FsError> {
        if let Node::Guest(p, d, n, ino) = node {
            let g = self.guest_fs(snap, p, d, n)?;
            let a = g.fs.attr(Self::guest_ino(&g, ino)?);
            return Ok(self.guest_attr(node, a.map_err(|e| guest_error(&g, e))?));
        }
        let dir = |perm: u16, nlink: u32, time| (Kind::Directory, 0, 0, perm, nlink, time);
        let file = |size: u64, time| (Kind::File, size, size.div_ceil(512), 0o444, 1, time);
        let (kind, size, blocks, perm, nlink, time) = match node {
            Node::Root => dir(
                0o755,
                2 + snap.cat.collections.len() as u32,
                self.store_created,
            ),
            Node::Collection(c) => {
                let coll = snap.collection(c)?;
                let points = snap.cat.points_in(c).count() as u32;
                dir(0o755, 2 + points, self.collection_time(snap, coll))
            }
            Node::CollectionJson(c) => {
                let coll = snap.collection(c)?;
                file(
                    self.collection_json(snap, coll)?.len() as u64,
                    self.collection_time(snap, coll),
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
            Node::Guest(..) => return Err(FsError::NotFound),
            Node::PartitionImage(p, d, n) => {
                let point = snap.point(p)?;
                let (part, allocated) = self.partition(snap, point, d, n)?;
                (
                    Kind::File,
                    part.len,
                    allocated.div_ceil(512),
                    0o444,
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
                file(point.config_len, parse_time(&point.created))
            }
            Node::DiskImage(p, d) => {
                let point = snap.point(p)?;
                let (size, allocated) = self.image_size(point, d)?;
                (
                    Kind::File,
                    size,
                    allocated.div_ceil(512),
                    0o444,
                    1,
                    parse_time(&point.created),
                )
            }
        };
        Ok(Attr {
            ino: self.ino(node),
            kind,
            size,
            blocks,
            perm,
            nlink,
            uid: self.options.owner_uid,
            gid: self.options.owner_gid,
            atime: time,
            mtime: time,
            ctime: time,
            rdev: 0,
        })
    }

    /// A guest file's attributes as the mount shows them: the guest's own, owned by the mount's
    /// owner where the filesystem has no owners.
    fn guest_attr(&self, node: Node, a: GuestAttr) -> Attr {
        Attr {
            ino: self.ino(node),
            kind: kind(a.kind),
            size: a.size,
            blocks: a.blocks,
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid.unwrap_or(self.options.owner_uid),
            gid: a.gid.unwrap_or(self.options.owner_gid),
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            rdev: a.rdev,
        }
    }

    /// A collection's directory changes when a point is added: its time is its newest point's.
    fn collection_time(&self, snap: &Snapshot, c: &CollectionRecord) -> SystemTime {
        let created = parse_time(&c.created);
        snap.latest(c.id)
            .map_or(created, |p| parse_time(&p.created).max(created))
    }

    fn ttl(node: Node) -> Duration {
        if node.is_immutable() {
            IMMUTABLE_TTL
        } else {
            CHANGING_TTL
        }
    }

    fn entry(&self, snap: &Snapshot, node: Node) -> Result<Entry, FsError> {
        Ok(Entry {
            attr: self.attr(snap, node)?,
            ttl: Self::ttl(node),
        })
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Entry, FsError> {
        let node = self.node(ino)?;
        let snap = self.snapshot()?;
        self.entry(&snap, node)
    }

    // ----- names -----

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
                self.guest_fs(snap, p, d, n)?;
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
                self.partition(snap, snap.point(p)?, d, n)?;
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

    /// Resolves `name` inside directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, FsError> {
        let parent = self.node(parent)?;
        let snap = self.snapshot()?;
        if let Node::Guest(p, d, n, ino) = parent {
            let g = self.guest_fs(&snap, p, d, n)?;
            let dir = Self::guest_ino(&g, ino)?;
            let a =
                g.fs.lookup(dir, name.as_bytes())
                    .map_err(|e| guest_error(&g, e))?;
            let node = Self::guest_node(&g, (p, d, n), a.ino)?;
            return Ok(Entry {
                attr: self.guest_attr(node, a),
                ttl: IMMUTABLE_TTL,
            });
        }
        // No rpfs name is anything but UTF-8, so such a name simply does not exist.
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let node = self.child(&snap, parent, name)?;
        self.entry(&snap, node)
    }

    /// The entries of directory `ino`, with `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.node(ino)?;
        let snap = self.snapshot()?;
        let entry = |node: Node, kind: Kind, name: &str| DirEntry {
            ino: self.ino(node),
            kind,
            name: name.into(),
        };
        let (parent, children): (Node, Vec<DirEntry>) = match node {
            Node::Root => (
                Node::Root,
                snap.cat
                    .collections
                    .iter()
                    .map(|c| entry(Node::Collection(c.id), Kind::Directory, &c.name))
                    .collect(),
            ),
            Node::Collection(c) => {
                snap.collection(c)?;
                let mut out = vec![entry(Node::CollectionJson(c), Kind::File, COLLECTION_JSON)];
                if snap.latest(c).is_some() {
                    out.push(entry(Node::Latest(c), Kind::Symlink, LATEST));
                }
                out.extend(
                    snap.cat
                        .points_in(c)
                        .map(|p| entry(Node::Point(p.id), Kind::Directory, &p.name)),
                );
                (Node::Root, out)
            }
            Node::Point(p) => {
                let point = snap.point(p)?;
                (
                    Node::Collection(point.collection_id),
                    vec![
                        entry(Node::PointJson(p), Kind::File, POINT_JSON),
                        entry(Node::VmConfig(p), Kind::File, VM_CONFIG),
                        entry(Node::Disks(p), Kind::Directory, DISKS),
                        entry(Node::Partitions(p), Kind::Directory, PARTITIONS),
                        entry(Node::Files(p), Kind::Directory, FILES),
                    ],
                )
            }
            Node::Files(p) => {
                let point = snap.point(p)?;
                let mut out = Vec::with_capacity(point.disks.len());
                for d in &point.disks {
                    let node = self.files_disk(&snap, point, d.disk_id)?;
                    out.push(entry(node, Kind::Directory, &d.name));
                }
                (Node::Point(p), out)
            }
            Node::FilesDisk(p, d) => {
                let point = snap.point(p)?;
                let mut out = Vec::new();
                for (part, _) in self.partition_table(&snap, point, d)?.iter() {
                    if self.guest(&snap, point, d, part.number)?.is_some() {
                        let node = Node::Guest(p, d, part.number, 0);
                        out.push(entry(node, Kind::Directory, &format!("p{}", part.number)));
                    }
                }
                (Node::Files(p), out)
            }
            Node::Guest(p, d, n, ino) => {
                let g = self.guest_fs(&snap, p, d, n)?;
                let key = (p, d, n);
                let listing =
                    g.fs.list(Self::guest_ino(&g, ino)?)
                        .map_err(|e| guest_error(&g, e))?;
                let parent = match (ino, n) {
                    (0, 0) => Node::Files(p),
                    (0, _) => Node::FilesDisk(p, d),
                    _ => {
                        let up = g.fs.parent(ino).map_err(|e| guest_error(&g, e))?;
                        Self::guest_node(&g, key, up)?
                    }
                };
                let mut out = Vec::with_capacity(listing.entries.len());
                for (name, a) in &listing.entries {
                    out.push(DirEntry {
                        ino: self.ino(Self::guest_node(&g, key, a.ino)?),
                        kind: kind(a.kind),
                        name: OsString::from(OsStr::from_bytes(name)),
                    });
                }
                (parent, out)
            }
            Node::Partitions(p) => (
                Node::Point(p),
                snap.point(p)?
                    .disks
                    .iter()
                    .map(|d| entry(Node::PartitionDisk(p, d.disk_id), Kind::Directory, &d.name))
                    .collect(),
            ),
            Node::PartitionDisk(p, d) => (
                Node::Partitions(p),
                self.partition_table(&snap, snap.point(p)?, d)?
                    .iter()
                    .map(|(part, _)| {
                        entry(
                            Node::PartitionImage(p, d, part.number),
                            Kind::File,
                            &format!("p{}{IMAGE_SUFFIX}", part.number),
                        )
                    })
                    .collect(),
            ),
            Node::Disks(p) => {
                let point = snap.point(p)?;
                (
                    Node::Point(p),
                    point
                        .disks
                        .iter()
                        .map(|d| {
                            entry(
                                Node::DiskImage(p, d.disk_id),
                                Kind::File,
                                &format!("{}{IMAGE_SUFFIX}", d.name),
                            )
                        })
                        .collect(),
                )
            }
            Node::CollectionJson(_)
            | Node::Latest(_)
            | Node::PointJson(_)
            | Node::VmConfig(_)
            | Node::DiskImage(..)
            | Node::PartitionImage(..) => return Err(FsError::NotDir),
        };
        let mut out = vec![
            entry(node, Kind::Directory, "."),
            entry(parent, Kind::Directory, ".."),
        ];
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
                let g = self.guest_fs(&snap, p, d, n)?;
                g.fs.read_link(ino).map_err(|e| guest_error(&g, e))
            }
            _ => Err(FsError::Invalid("not a symbolic link".into())),
        }
    }

    // ----- content -----

    /// Generated JSON of `node`, made once per snapshot.
    fn json(
        &self,
        snap: &Snapshot,
        node: Node,
        make: impl FnOnce() -> Result<serde_json::Value, FsError>,
    ) -> Result<Arc<Vec<u8>>, FsError> {
        if let Some(j) = snap.json.lock().get(&node) {
            return Ok(j.clone());
        }
        let bytes = Arc::new(resource::to_bytes(&make()?));
        snap.json.lock().insert(node, bytes.clone());
        Ok(bytes)
    }

    fn collection_json(
        &self,
        snap: &Snapshot,
        c: &CollectionRecord,
    ) -> Result<Arc<Vec<u8>>, FsError> {
        self.json(snap, Node::CollectionJson(c.id), || {
            Ok(resource::collection(
                self.engine.header().store_id,
                &snap.cat,
                c,
            ))
        })
    }

    fn point_json(&self, snap: &Snapshot, p: &PointRecord) -> Result<Arc<Vec<u8>>, FsError> {
        self.json(snap, Node::PointJson(p.id), || {
            let coll = snap.collection(p.collection_id)?;
            Ok(resource::point(
                self.engine.header().store_id,
                coll,
                snap.cat.vm_by_id(p.vm_id),
                p,
            ))
        })
    }

    /// Loads the block map of disk `disk` of `point`.
    fn open_image(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        disk: Uuid,
    ) -> Result<DiskImage, FsError> {
        let coll = snap.collection(point.collection_id)?;
        let name = &point
            .disks
            .iter()
            .find(|d| d.disk_id == disk)
            .ok_or(FsError::NotFound)?
            .name;
        Ok(self.engine.open_disk(&coll.name, point, name)?)
    }

    /// The shared, open image of disk `disk` of `point`, with all its packs open.
    fn image(
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

    fn image_size(&self, point: &PointRecord, disk: Uuid) -> Result<(u64, u64), FsError> {
        if let Some(&s) = self.image_sizes.lock().get(&(point.id, disk)) {
            return Ok(s);
        }
        // Counting needs the block map only: no pack is opened for a `stat`.
        let snap = self.snapshot()?;
        let img = self.open_image(&snap, point, disk)?;
        let s = (img.size(), img.allocated_bytes());
        self.image_sizes.lock().insert((point.id, disk), s);
        Ok(s)
    }

    /// The partitions of disk `disk` of `point`, each with its data bytes; read once.
    fn partition_table(
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
    fn partition(
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

    /// The node of `files/<disk>`: the disk's filesystem when it has no partition table, else
    /// the directory of its partitions' filesystems.
    fn files_disk(&self, snap: &Snapshot, point: &PointRecord, d: Uuid) -> Result<Node, FsError> {
        if self.partition_table(snap, point, d)?.is_empty()
            && self.guest(snap, point, d, 0)?.is_some()
        {
            Ok(Node::Guest(point.id, d, 0, 0))
        } else {
            Ok(Node::FilesDisk(point.id, d))
        }
    }

    /// The filesystem in partition `n` (0: the whole disk) of disk `d` of `point`, if rpfs
    /// reads it; probed once.
    fn guest(
        &self,
        snap: &Snapshot,
        point: &PointRecord,
        d: Uuid,
        n: u32,
    ) -> Result<Option<GuestFs>, FsError> {
        let key = (point.id, d, n);
        if let Some(g) = self.guests.lock().get(&key) {
            return Ok(g.clone());
        }
        let image = self.image(snap, point, d)?;
        let window = if n == 0 {
            Window::whole(image)
        } else {
            Window::partition(image, &self.partition(snap, point, d, n)?.0)
        };
        let found = FsType::probe(&window).map(|fs| {
            let coll = snap
                .collection(point.collection_id)
                .map_or("?", |c| &c.name);
            let disk = point
                .disks
                .iter()
                .find(|x| x.disk_id == d)
                .map_or("?", |x| &x.name);
            let place = match n {
                0 => format!("disk {disk}"),
                n => format!("partition {n} of disk {disk}"),
            };
            GuestFs {
                fs: Arc::new(Guest::new(fs, Arc::new(window))),
                label: format!("{} in {place} of {coll}/{}", fs.name(), point.name).into(),
            }
        });
        // Whoever probed first wins, so one parser serves each filesystem.
        Ok(self.guests.lock().entry(key).or_insert(found).clone())
    }

    /// The filesystem `files/` shows for `(p, d, n)`; there is none where rpfs reads none.
    fn guest_fs(&self, snap: &Snapshot, p: Uuid, d: Uuid, n: u32) -> Result<GuestFs, FsError> {
        self.guest(snap, snap.point(p)?, d, n)?
            .ok_or(FsError::NotFound)
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

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle);
        fh
    }

    /// Opens file `ino` for reading; any write access is refused.
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly("open for writing"));
        }
        let node = self.node(ino)?;
        let snap = self.snapshot()?;
        let (handle, keep_cache, direct_io) = match node {
            Node::DiskImage(p, d) => {
                let image = self.image(&snap, snap.point(p)?, d)?;
                (Handle::Image(Window::whole(image)), true, false)
            }
            Node::PartitionImage(p, d, n) => {
                let point = snap.point(p)?;
                let (part, _) = self.partition(&snap, point, d, n)?;
                let view = Window::partition(self.image(&snap, point, d)?, &part);
                (Handle::Image(view), true, false)
            }
            Node::VmConfig(p) => {
                let config = self.engine.point_config(snap.point(p)?)?;
                (Handle::Bytes(Arc::new(config)), true, false)
            }
            Node::PointJson(p) => (
                Handle::Bytes(self.point_json(&snap, snap.point(p)?)?),
                false,
                true,
            ),
            Node::CollectionJson(c) => (
                Handle::Bytes(self.collection_json(&snap, snap.collection(c)?)?),
                false,
                true,
            ),
            Node::Guest(p, d, n, ino) => {
                let g = self.guest_fs(&snap, p, d, n)?;
                let a = g.fs.attr(Self::guest_ino(&g, ino)?);
                match a.map_err(|e| guest_error(&g, e))?.kind {
                    GuestKind::File => (Handle::Guest(g, ino), true, false),
                    GuestKind::Directory => return Err(FsError::IsDir),
                    GuestKind::Symlink => {
                        return Err(FsError::Invalid("a symbolic link cannot be opened".into()));
                    }
                    // The mount is `nodev`, so the kernel refuses these before asking.
                    GuestKind::CharDevice
                    | GuestKind::BlockDevice
                    | GuestKind::Fifo
                    | GuestKind::Socket => {
                        return Err(FsError::AccessDenied(
                            "device files, fifos and sockets of a restore point cannot be opened"
                                .into(),
                        ));
                    }
                }
            }
            Node::Root
            | Node::Collection(_)
            | Node::Point(_)
            | Node::Disks(_)
            | Node::Partitions(_)
            | Node::PartitionDisk(..)
            | Node::Files(_)
            | Node::FilesDisk(..) => {
                return Err(FsError::IsDir);
            }
            Node::Latest(_) => {
                return Err(FsError::Invalid("a symbolic link cannot be opened".into()));
            }
        };
        Ok(Opened {
            fh: self.new_handle(handle),
            keep_cache,
            direct_io,
        })
    }

    /// Opens directory `ino`: its listing is taken now and served from this handle, so
    /// offsets stay valid however the directory changes meanwhile.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let listing = self.readdir(ino)?;
        Ok(self.new_handle(Handle::Dir(Arc::new(listing))))
    }

    /// The listing of an open directory, from position `offset` on.
    pub fn readdir_at(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>, FsError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Dir(listing)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                // Each entry carries the offset of the entry after it.
                Ok(listing
                    .iter()
                    .enumerate()
                    .skip(start)
                    .map(|(i, e)| (i as u64 + 1, e.clone()))
                    .collect())
            }
            Some(_) => Err(FsError::NotDir),
            None => Err(FsError::BadHandle(fh)),
        }
    }

    fn handle(&self, fh: u64) -> Result<Handle, FsError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Image(i)) => Ok(Handle::Image(i.clone())),
            Some(Handle::Bytes(b)) => Ok(Handle::Bytes(b.clone())),
            Some(Handle::Guest(g, ino)) => Ok(Handle::Guest(g.clone(), *ino)),
            Some(Handle::Dir(_)) => Err(FsError::IsDir),
            None => Err(FsError::BadHandle(fh)),
        }
    }

    /// Reads up to `size` bytes at `offset`: exactly `size` unless the file ends first.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        match self.handle(fh)? {
            Handle::Image(view) => {
                let len = (size as u64).min(view.len.saturating_sub(offset)) as usize;
                let mut buf = vec![0u8; len];
                let n = view.read_at(offset, &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }
            Handle::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b[start..end].to_vec())
            }
            Handle::Guest(g, ino) => g.fs.read(ino, offset, size).map_err(|e| guest_error(&g, e)),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().remove(&fh);
        // Dropped outside the lock: the last handle of an image frees its map and packs.
        drop(handle);
    }

    /// SEEK_DATA / SEEK_HOLE over the image's real holes (generated files have none).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, FsError> {
        if whence != SEEK_DATA && whence != SEEK_HOLE {
            return Err(FsError::Invalid(format!("lseek whence {whence}")));
        }
        let offset =
            u64::try_from(offset).map_err(|_| FsError::Invalid("negative offset".into()))?;
        let handle = self.handle(fh)?;
        let size = match &handle {
            Handle::Image(view) => view.len,
            Handle::Bytes(b) => b.len() as u64,
            Handle::Guest(g, ino) => g.fs.attr(*ino).map_err(|e| guest_error(g, e))?.size,
            Handle::Dir(_) => return Err(FsError::IsDir),
        };
        if offset >= size {
            return Err(FsError::NoData(offset));
        }
        let at = match (&handle, whence == SEEK_DATA) {
            (Handle::Image(view), true) => view.next_data(offset).ok_or(FsError::NoData(offset))?,
            (Handle::Image(view), false) => view.next_hole(offset),
            // Generated files and guest files are all data.
            (_, true) => offset,
            (_, false) => size,
        };
        i64::try_from(at).map_err(|_| FsError::Invalid("offset too large".into()))
    }

    /// Capacity of the store's medium, for `df`.
    pub fn statfs(&self) -> Result<FsStat, FsError> {
        let space = self
            .engine
            .storage()
            .space()
            .map_err(|e| FsError::Engine(crate::engine::Error::io("statfs of the store")(e)))?;
        let b = u64::from(BLOCK);
        Ok(FsStat {
            blocks: space.total_bytes / b,
            bfree: space.free_bytes / b,
            bavail: space.free_bytes / b,
            files: self.inodes.lock().len() as u64,
            bsize: BLOCK,
            namelen: 255,
        })
    }

    // ----- changes -----

    fn check_caller(&self, uid: u32, what: &str) -> Result<(), FsError> {
        if self.options.allow_other && uid != 0 && uid != self.options.owner_uid {
            return Err(FsError::AccessDenied(format!(
                "{what}: only root and the user who mounted (uid {}) may create or delete restore \
                 points",
                self.options.owner_uid
            )));
        }
        Ok(())
    }

    /// `mkdir PARENT/NAME`: creates restore point NAME of the collection PARENT, with the
    /// collection's defaults; returns once it is committed.
    pub fn mkdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<Entry, FsError> {
        let parent = self.node(parent)?;
        let Node::Collection(cid) = parent else {
            return Err(FsError::NotPermitted(
                "mkdir creates restore points, and only directly inside a collection directory \
                 (MOUNT/<collection>/<point>)"
                    .into(),
            ));
        };
        self.check_caller(uid, "mkdir")?;
        let name = utf8(name)?;
        let coll = self.snapshot()?.collection(cid)?.name.clone();
        let req = CreateRequest {
            collection: coll.clone(),
            name: name.to_string(),
            exclude: Vec::new(),
            consistency: None,
        };
        let result = self.engine.create_point(&req, &Silent);
        self.record(&coll, "create", name, result.as_ref().err());
        // Refreshed either way: the collection now shows the outcome. The operation's own error
        // comes first.
        let snap = self.refresh();
        let out = result?;
        let snap = snap?;
        for w in &out.warnings {
            tracing::warn!("mkdir {coll}/{name}: {w}");
        }
        self.entry(&snap, Node::Point(out.point.id))
    }

    /// `rmdir PARENT/NAME`: deletes restore point NAME, when deletion is allowed.
    pub fn rmdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<(), FsError> {
        let parent = self.node(parent)?;
        if !self.options.allow_delete {
            return Err(FsError::NotPermitted(
                "rmdir deletes restore points only when mounted with --allow-delete".into(),
            ));
        }
        let Node::Collection(cid) = parent else {
            return Err(FsError::NotPermitted(
                "rmdir deletes restore points (MOUNT/<collection>/<point>) and nothing else".into(),
            ));
        };
        self.check_caller(uid, "rmdir")?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let snap = self.snapshot()?;
        let coll = snap.collection(cid)?.name.clone();
        if matches!(name, COLLECTION_JSON | LATEST) {
            return Err(FsError::NotDir);
        }
        let result = self.engine.delete_point(&coll, name);
        self.record(&coll, "delete", name, result.as_ref().err());
        let refreshed = self.refresh();
        let out = result?;
        refreshed?;
        for w in &out.warnings {
            tracing::warn!("rmdir {coll}/{name}: {w}");
        }
        Ok(())
    }

    /// Keeps the outcome in `collection.json`, so a user can read why `mkdir` failed.
    fn record(
        &self,
        collection: &str,
        operation: &str,
        point: &str,
        error: Option<&crate::engine::Error>,
    ) {
        let op = LastOperation {
            operation: operation.into(),
            point: point.into(),
            finished: now_rfc3339(),
            status: if error.is_some() {
                "Failed"
            } else {
                "Succeeded"
            }
            .into(),
            error: error.map(ToString::to_string),
        };
        if let Err(e) = self.engine.record_operation(collection, op) {
            tracing::warn!("recording the {operation} of {collection}/{point}: {e}");
        }
    }
}

fn kind(k: GuestKind) -> Kind {
    match k {
        GuestKind::Directory => Kind::Directory,
        GuestKind::File => Kind::File,
        GuestKind::Symlink => Kind::Symlink,
        GuestKind::CharDevice => Kind::CharDevice,
        GuestKind::BlockDevice => Kind::BlockDevice,
        GuestKind::Fifo => Kind::Fifo,
        GuestKind::Socket => Kind::Socket,
    }
}

/// A guest error as the mount reports it; damage names the filesystem it is in.
fn guest_error(g: &GuestFs, e: GuestError) -> FsError {
    match e {
        GuestError::NotFound => FsError::NotFound,
        GuestError::NotDir => FsError::NotDir,
        GuestError::NotFile => FsError::Invalid("not a regular file".into()),
        GuestError::Damaged(why) => FsError::Guest(format!("{}: {why}", g.label)),
    }
}
