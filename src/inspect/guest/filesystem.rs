//! One guest filesystem as the mount uses it: [`Guest`] answers attributes, listings, links and
//! reads by inode number, caching what it learnt (a committed point never changes), and asks its
//! parser (on the parser's own thread, [`super::worker`]) for what it does not know yet.
//!
//! Invariants:
//! - Inode numbers are the filesystem's own where it has them (ext4: hard links share one), else
//!   assigned per path on first sight (FAT, whose volumes are small); either way one number
//!   names one file for as long as its [`GuestNames`] live, which outlive the [`Guest`]: the
//!   mount drops an idle `Guest` (parser, listings, open image) and makes a new one on demand
//!   from the same names, so the numbers the kernel holds stay valid.
//! - A file is *known* (its path kept, so the parser can be asked about it) from the
//!   [`Guest::lookup`] that found it until [`GuestNames::forget`] has returned every lookup: what
//!   is known grows with the files the kernel holds, not with every entry listed. Lookups are
//!   counted under the same lock that keeps the paths, so a forget racing a lookup never drops
//!   a file the caller is about to hold. The root is always known. Numbers assigned to files
//!   nobody holds may be dropped ([`GuestNames::trim`]) once no `Guest` of the filesystem is
//!   left; a later listing numbers those files afresh.
//! - Listings are cached in a [`ListingCache`] that every `Guest` of a mount shares, bounded by
//!   its bytes in all ([`CACHED_LISTING_BYTES`]), least recently used first out; the newest
//!   stays however large (it is about to be used). A `Guest`'s listings leave with it.
//! - A directory entry whose inode cannot be read is listed (with the number and kind its
//!   directory records) and fails alone, as damage, when it is looked up; its neighbours and
//!   its directory are unaffected.
//! - File data is read on the caller's thread, from where the parser says it lies.

#![warn(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use super::backend::{
    FsType, GuestAttr, GuestError, GuestKind, MAX_PATH, Piece, Source, Unreadable,
};
use super::worker::Worker;
use super::{ext4, fat, ntfs};

/// Bytes of directory listings a [`ListingCache`] keeps, in all its filesystems (a 20,000-entry
/// directory of 30-byte names takes about 3.5 MiB).
pub const CACHED_LISTING_BYTES: usize = 32 << 20;
/// Inode number of the root directory where the filesystem assigns none (FAT).
const SYNTHETIC_ROOT: u64 = 1;
/// How much of a file's placement is asked of the parser at once, so a sequential read asks
/// once per stretch rather than once per request. Large, because readers on several threads
/// at a stretch's edge each ask again.
const STRETCH: u64 = 512 << 20;
/// Most pieces a stretch keeps (a fragmented file's stretch is cut short): 1.5 MiB each.
const MAX_PIECES: usize = 1 << 16;
/// Stretches kept per filesystem.
const STRETCHES: usize = 16;

/// A directory's entries, by position and by name. Kept compact (a few allocations, not one
/// per entry), so that what a listing holds is freed in whole blocks when it leaves the cache.
pub struct Listing {
    /// Every name, back to back.
    names: Vec<u8>,
    /// Where each entry's name ends in `names`, in the directory's order.
    ends: Vec<u32>,
    /// Each entry's attributes; an unreadable entry has the number and kind its directory
    /// records and nothing else.
    attrs: Vec<GuestAttr>,
    /// Positions of the entries sorted by name.
    by_name: Vec<u32>,
    /// The unreadable entries, by position (ascending), with why.
    unreadable: Vec<(u32, Box<str>)>,
}

impl Listing {
    /// How many entries the listing holds.
    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// The name of entry `i`.
    fn name(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        &self.names[start..self.ends[i] as usize]
    }

    /// The entries, in the directory's order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &GuestAttr)> {
        (0..self.len()).map(|i| (self.name(i), &self.attrs[i]))
    }

    fn position(&self, name: &[u8]) -> Option<usize> {
        let at = self
            .by_name
            .binary_search_by(|&i| self.name(i as usize).cmp(name))
            .ok()?;
        Some(self.by_name[at] as usize)
    }

    /// Entry `name`'s attributes (only its number and kind if it is unreadable).
    pub fn get(&self, name: &[u8]) -> Option<&GuestAttr> {
        self.position(name).map(|i| &self.attrs[i])
    }

    /// Why entry `name` cannot be read, if it cannot.
    pub fn unreadable(&self, name: &[u8]) -> Option<&str> {
        let i = u32::try_from(self.position(name)?).ok()?;
        let at = self.unreadable.binary_search_by_key(&i, |u| u.0).ok()?;
        Some(&self.unreadable[at].1)
    }

    /// Roughly the memory the listing takes.
    fn bytes(&self) -> usize {
        let why: usize = self.unreadable.iter().map(|(_, w)| w.len()).sum();
        let per_entry = size_of::<GuestAttr>().saturating_add(size_of::<[u32; 2]>());
        self.names
            .capacity()
            .saturating_add(self.attrs.capacity().saturating_mul(per_entry))
            .saturating_add(
                self.unreadable
                    .capacity()
                    .saturating_mul(size_of::<(u32, Box<str>)>()),
            )
            .saturating_add(why)
    }
}

/// A file a caller looked up: where it is, what it is, and the lookups not yet forgotten.
struct Known {
    path: Arc<[u8]>,
    parent: u64,
    attr: GuestAttr,
    lookups: u64,
}

/// The files of one guest filesystem that callers hold, and the numbers given to paths where
/// the filesystem has none: what must outlive a [`Guest`] so that a new one answers for the
/// same numbers.
pub struct GuestNames {
    known: HashMap<u64, Known>,
    /// Numbers given to paths, where the filesystem has none.
    assigned: HashMap<Arc<[u8]>, u64>,
    /// The next number to give a path.
    next: u64,
    /// The root's number, once loaded: never forgotten.
    root: Option<u64>,
}

impl Default for GuestNames {
    fn default() -> Self {
        GuestNames {
            known: HashMap::new(),
            assigned: HashMap::new(),
            next: SYNTHETIC_ROOT + 1,
            root: None,
        }
    }
}

impl GuestNames {
    /// Returns `n` lookups of file `ino`; once none is left its path goes, until a lookup finds
    /// it again. The root stays known. True when the file is no longer known.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if self.root == Some(ino) {
            return false;
        }
        let Some(known) = self.known.get_mut(&ino) else {
            return false;
        };
        known.lookups = known.lookups.saturating_sub(n);
        if known.lookups > 0 {
            return false;
        }
        self.known.remove(&ino);
        true
    }

    /// How many files are known now (the root included, once loaded).
    pub fn known_files(&self) -> usize {
        self.known.len()
    }

    /// Drops the numbers given to paths no caller holds: only once no [`Guest`] of the
    /// filesystem is left (a live one may still list files by them).
    pub fn trim(&mut self) {
        let known = &self.known;
        self.assigned.retain(|_, ino| known.contains_key(ino));
    }
}

/// Where `len` bytes of a file from `start` lie: pieces relative to `start`, in order, covering
/// it all.
struct Stretch {
    start: u64,
    len: u64,
    pieces: Vec<Piece>,
}

/// Listings of every [`Guest`] sharing it, by (guest, directory), least recently used first out,
/// bounded by their bytes in all.
pub struct ListingCache {
    inner: Mutex<Listings>,
}

struct Listings {
    lru: LruCache<(u64, u64), Arc<Listing>>,
    bytes: usize,
    limit: usize,
}

impl ListingCache {
    /// A cache keeping at most `limit` bytes of listings (and always the newest one).
    pub fn new(limit: usize) -> Arc<ListingCache> {
        Arc::new(ListingCache {
            inner: Mutex::new(Listings {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit,
            }),
        })
    }

    fn get(&self, key: (u64, u64)) -> Option<Arc<Listing>> {
        self.inner.lock().lru.get(&key).cloned()
    }

    fn put(&self, key: (u64, u64), listing: Arc<Listing>) {
        let mut l = self.inner.lock();
        l.bytes = l.bytes.saturating_add(listing.bytes());
        if let Some(old) = l.lru.put(key, listing) {
            l.bytes = l.bytes.saturating_sub(old.bytes());
        }
        // The newest stays, however large: it is about to be used.
        while l.bytes > l.limit && l.lru.len() > 1 {
            match l.lru.pop_lru() {
                Some((_, evicted)) => l.bytes = l.bytes.saturating_sub(evicted.bytes()),
                None => break,
            }
        }
    }

    /// Drops the listings of guest `guest` (it is going).
    fn drop_guest(&self, guest: u64) {
        let mut l = self.inner.lock();
        let keys: Vec<(u64, u64)> = l
            .lru
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.0 == guest)
            .collect();
        for k in keys {
            if let Some(evicted) = l.lru.pop(&k) {
                l.bytes = l.bytes.saturating_sub(evicted.bytes());
            }
        }
    }

    /// Bytes of listings kept now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

/// Numbers telling the `Guest`s of a process apart in a shared [`ListingCache`].
static GUEST_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One guest filesystem, shared by the mount's threads.
pub struct Guest {
    fs: FsType,
    source: Arc<dyn Source>,
    worker: Worker,
    /// This guest's key in `listings`.
    serial: u64,
    root: Mutex<Option<GuestAttr>>,
    names: Arc<Mutex<GuestNames>>,
    listings: Arc<ListingCache>,
    stretches: Mutex<LruCache<u64, Arc<Stretch>>>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.listings.drop_guest(self.serial);
    }
}

/// `dir`'s path joined with `name`, bounded by [`MAX_PATH`].
fn child_path(dir: &[u8], name: &[u8]) -> Result<Arc<[u8]>, GuestError> {
    let mut child = Vec::with_capacity(dir.len().saturating_add(name.len()).saturating_add(1));
    child.extend_from_slice(dir);
    if child.last() != Some(&b'/') {
        child.push(b'/');
    }
    child.extend_from_slice(name);
    if child.len() > MAX_PATH {
        return Err(GuestError::Damaged(format!(
            "a path longer than {MAX_PATH} bytes (a directory cycle?)"
        )));
    }
    Ok(Arc::from(child))
}

impl Guest {
    /// The `fs` filesystem in `source`, with names and a listing cache of its own; loaded on
    /// first use.
    pub fn new(fs: FsType, source: Arc<dyn Source>) -> Guest {
        Self::with_shared(
            fs,
            source,
            Arc::default(),
            ListingCache::new(CACHED_LISTING_BYTES),
        )
    }

    /// The `fs` filesystem in `source`, answering for the files `names` holds (a previous
    /// `Guest` of the same filesystem may have left them), caching its listings in `listings`.
    pub fn with_shared(
        fs: FsType,
        source: Arc<dyn Source>,
        names: Arc<Mutex<GuestNames>>,
        listings: Arc<ListingCache>,
    ) -> Guest {
        let worker = Worker::new(source.clone(), move |parsed| match fs {
            FsType::Ext4 => ext4::open(parsed),
            FsType::Fat => fat::open(parsed),
            FsType::Ntfs => ntfs::open(parsed),
        });
        Guest {
            fs,
            source,
            worker,
            serial: GUEST_SERIAL.fetch_add(1, Ordering::Relaxed),
            root: Mutex::new(None),
            names,
            listings,
            stretches: Mutex::new(LruCache::new(
                NonZeroUsize::new(STRETCHES).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub fn fs_type(&self) -> FsType {
        self.fs
    }

    /// Attributes of the root directory (loading the filesystem if need be).
    pub fn root(&self) -> Result<GuestAttr, GuestError> {
        if let Some(a) = *self.root.lock() {
            return Ok(a);
        }
        let mut attr = self.worker.call(|b| b.root())?;
        if attr.ino == 0 {
            attr.ino = SYNTHETIC_ROOT;
        }
        let mut names = self.names.lock();
        names.root = Some(attr.ino);
        names.known.insert(
            attr.ino,
            Known {
                path: Arc::from(&b"/"[..]),
                parent: 0,
                attr,
                lookups: 0,
            },
        );
        drop(names);
        *self.root.lock() = Some(attr);
        Ok(attr)
    }

    fn known<R>(&self, ino: u64, f: impl FnOnce(&Known) -> R) -> Result<R, GuestError> {
        // The root becomes known when the filesystem loads.
        self.root()?;
        self.names
            .lock()
            .known
            .get(&ino)
            .map(f)
            .ok_or(GuestError::NotFound)
    }

    /// Attributes of file `ino`.
    pub fn attr(&self, ino: u64) -> Result<GuestAttr, GuestError> {
        self.known(ino, |k| k.attr)
    }

    /// The directory holding `ino` (0 for the root).
    pub fn parent(&self, ino: u64) -> Result<u64, GuestError> {
        self.known(ino, |k| k.parent)
    }

    /// The entries of directory `ino`.
    pub fn list(&self, ino: u64) -> Result<Arc<Listing>, GuestError> {
        if let Some(l) = self.listings.get((self.serial, ino)) {
            return Ok(l);
        }
        let (path, kind) = self.known(ino, |k| (k.path.clone(), k.attr.kind))?;
        if kind != GuestKind::Directory {
            return Err(GuestError::NotDir);
        }
        let dir = path.clone();
        let items = self.worker.call(move |b| b.list(&dir, ino))?;
        // A directory names each file once; damage may repeat a name: the first one stands, so
        // listings, lookups and attributes agree.
        // FAT finds names regardless of case, so there names differing only in case are alike.
        let fat = self.fs == FsType::Fat;
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        let names_len = items.iter().map(|(n, _)| n.len()).sum();
        let mut names = Vec::with_capacity(names_len);
        let mut ends = Vec::with_capacity(items.len());
        let mut attrs = Vec::with_capacity(items.len());
        let mut unreadable = Vec::new();
        for (name, item) in items {
            let first = seen.insert(if fat {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            });
            if !first {
                continue;
            }
            let mut attr = match item {
                Ok(attr) => attr,
                Err(Unreadable {
                    ino: bad,
                    kind,
                    why,
                }) => {
                    tracing::warn!(
                        "guest directory {}: entry {} (inode {bad}) cannot be read; it alone fails: {why}",
                        String::from_utf8_lossy(&path),
                        String::from_utf8_lossy(&name),
                    );
                    // At most MAX_DIR_ENTRIES (2^20) entries: the position fits in u32.
                    unreadable.push((attrs.len() as u32, why.into_boxed_str()));
                    GuestAttr {
                        ino: bad,
                        kind,
                        ..GuestAttr::synthetic_dir(std::time::UNIX_EPOCH)
                    }
                }
            };
            if attr.ino == 0 {
                // Numbered by path, once: the number stays the file's while its names live.
                let child = child_path(&path, &name)?;
                let mut known = self.names.lock();
                let next = known.next;
                attr.ino = *known.assigned.entry(child).or_insert(next);
                if attr.ino == next {
                    known.next = next.saturating_add(1);
                }
            } else if path.len().saturating_add(name.len()) >= MAX_PATH {
                child_path(&path, &name)?;
            }
            names.extend_from_slice(&name);
            // At most 2^20 names of at most MAX_PATH bytes each: under 2^32.
            ends.push(
                u32::try_from(names.len()).map_err(|_| {
                    GuestError::Damaged("a directory whose names exceed 4 GiB".into())
                })?,
            );
            attrs.push(attr);
        }
        drop(seen);
        // A listing holds at most MAX_DIR_ENTRIES (2^20) entries: positions fit in u32.
        let mut listing = Listing {
            names,
            ends,
            attrs,
            by_name: Vec::new(),
            unreadable,
        };
        let mut by_name: Vec<u32> = (0..listing.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| listing.name(a as usize).cmp(listing.name(b as usize)));
        listing.by_name = by_name;
        let listing = Arc::new(listing);
        self.listings.put((self.serial, ino), listing.clone());
        Ok(listing)
    }

    /// Entry `name` of directory `dir`, counted as one lookup of it: the file is known until
    /// [`Guest::forget`] returns that lookup.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<GuestAttr, GuestError> {
        let listing = self.list(dir)?;
        let attr = listing.get(name).copied().ok_or(GuestError::NotFound)?;
        if let Some(why) = listing.unreadable(name) {
            return Err(GuestError::Damaged(format!(
                "{} (inode {}): {why}",
                String::from_utf8_lossy(name),
                attr.ino
            )));
        }
        drop(listing);
        let path = self.known(dir, |k| k.path.clone())?;
        let child = child_path(&path, name)?;
        let mut names = self.names.lock();
        // A hard link keeps the path it was looked up at first: both name the same data.
        let known = names.known.entry(attr.ino).or_insert(Known {
            path: child,
            parent: dir,
            attr,
            lookups: 0,
        });
        known.lookups = known.lookups.saturating_add(1);
        Ok(attr)
    }

    /// Returns `n` lookups of file `ino` (see [`GuestNames::forget`]); its placement goes with
    /// its last lookup.
    pub fn forget(&self, ino: u64, n: u64) {
        if self.names.lock().forget(ino, n) {
            self.stretches.lock().pop(&ino);
        }
    }

    /// How many files are known now (the root included, once loaded).
    pub fn known_files(&self) -> usize {
        self.names.lock().known_files()
    }

    /// The target of symlink `ino`, as stored (never followed).
    pub fn read_link(&self, ino: u64) -> Result<Vec<u8>, GuestError> {
        let (path, kind) = self.known(ino, |k| (k.path.clone(), k.attr.kind))?;
        if kind != GuestKind::Symlink {
            return Err(GuestError::NotFile);
        }
        self.worker.call(move |b| b.read_link(&path))
    }

    /// Where the file's bytes `offset..offset + len` lie: a cached stretch holding them, or a
    /// new one asked of the parser; None where the parser must read the data itself.
    fn stretch(
        &self,
        path: &Arc<[u8]>,
        ino: u64,
        offset: u64,
        len: usize,
        size: u64,
    ) -> Result<Option<Arc<Stretch>>, GuestError> {
        // `offset + len` is within the file (the caller cut `len` to its size), and a cached
        // stretch lies within it too: nothing here can saturate.
        let end = offset.saturating_add(len as u64);
        if let Some(s) = self.stretches.lock().get(&ino)
            && s.start <= offset
            && end <= s.start.saturating_add(s.len)
        {
            return Ok(Some(s.clone()));
        }
        let want = (len as u64).max(STRETCH).min(size.saturating_sub(offset));
        let path = path.clone();
        let Some(mut pieces) = self.worker.call(move |b| {
            b.map(
                &path,
                ino,
                offset,
                usize::try_from(want).unwrap_or(usize::MAX),
            )
        })?
        else {
            return Ok(None);
        };
        let mut want = want;
        if pieces.len() > MAX_PIECES {
            // Keep what the request needs, and no more than the cap beyond it.
            let needed = pieces.partition_point(|p| p.at < len);
            pieces.truncate(needed.max(MAX_PIECES));
            want = pieces
                .last()
                .map_or(0, |p| p.at.saturating_add(p.len) as u64);
        }
        // The pieces must cover the stretch back to back, which bounds every `at + len` below
        // by the stretch's length.
        let mut covered = 0u64;
        for p in &pieces {
            let next = covered.checked_add(p.len as u64);
            let (true, Some(next)) = (p.at as u64 == covered, next) else {
                return Err(GuestError::Damaged(format!(
                    "the file's blocks leave a gap at {}",
                    offset.saturating_add(covered)
                )));
            };
            covered = next;
        }
        if covered != want {
            return Err(GuestError::Damaged(format!(
                "the file's blocks cover {covered} of the {want} bytes from {offset}"
            )));
        }
        let stretch = Arc::new(Stretch {
            start: offset,
            len: want,
            pieces,
        });
        self.stretches.lock().put(ino, stretch.clone());
        Ok(Some(stretch))
    }

    /// Reads `len` bytes at `offset` of a file from where `stretch` says they lie.
    fn read_pieces(
        &self,
        stretch: &Stretch,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, GuestError> {
        let mut buf = vec![0u8; len];
        // The stretch holds `offset..offset + len` (the caller chose it so) and its pieces
        // cover it back to back: these sums stay within its length.
        let rel = usize::try_from(offset.saturating_sub(stretch.start)).unwrap_or(usize::MAX);
        let stop = rel.saturating_add(len);
        let first = stretch
            .pieces
            .partition_point(|p| p.at.saturating_add(p.len) <= rel);
        for p in &stretch.pieces[first..] {
            if p.at >= stop {
                break;
            }
            let (s, e) = (p.at.max(rel), p.at.saturating_add(p.len).min(stop));
            if let Some(at) = p.source {
                let from = at
                    .checked_add(s.saturating_sub(p.at) as u64)
                    .ok_or_else(|| {
                        GuestError::Damaged("file data placed past the end of the disk".into())
                    })?;
                self.source
                    .read_exact_at(from, &mut buf[s.saturating_sub(rel)..e.saturating_sub(rel)])
                    .map_err(|e| GuestError::Damaged(format!("reading file data: {e}")))?;
            }
        }
        Ok(buf)
    }

    /// Reads up to `size` bytes of regular file `ino` at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, GuestError> {
        let (path, attr) = self.known(ino, |k| (k.path.clone(), k.attr))?;
        if attr.kind != GuestKind::File {
            return Err(GuestError::NotFile);
        }
        let len = u64::from(size).min(attr.size.saturating_sub(offset)) as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        if let Some(stretch) = self.stretch(&path, ino, offset, len, attr.size)? {
            // The data is read here, on the caller's thread, so reads of one filesystem run in
            // parallel; the parser only said where it lies.
            return self.read_pieces(&stretch, offset, len);
        }
        self.worker.call(move |b| {
            let mut buf = vec![0u8; len];
            let n = b.read(&path, ino, offset, &mut buf)?;
            if n < len {
                // The inode says the file is longer than its data: never pad with zeros.
                return Err(GuestError::Damaged(format!(
                    "the file ends at {} of {} bytes",
                    offset.saturating_add(n as u64),
                    attr.size
                )));
            }
            Ok(buf)
        })
    }
}

#[cfg(test)]
mod tests;
