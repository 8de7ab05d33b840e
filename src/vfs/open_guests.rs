//! The guest filesystems the mount keeps open, bounded: what a user can make the daemon cache
//! by browsing `files/` of many points is capped whatever they list.
//!
//! Ceilings (the README carries them):
//! - At most [`MAX_OPEN_GUESTS`] guest filesystems are open at once (each a parser on its own
//!   thread, its open disk image, its cached placements); opening one more closes the least
//!   recently used.
//! - One unused for the idle time ([`GUEST_IDLE`], or `RPFS_GUEST_IDLE_SECS` seconds) is closed
//!   by a sweeper thread, so an idle mount holds no guest filesystem open.
//! - Directory listings of all open guest filesystems share one cache of
//!   [`CACHED_LISTING_BYTES`], least recently used first out (see `inspect::guest`).
//!
//! Invariants:
//! - What a probe found for a (point, disk, partition) is kept for the life of its point (a
//!   few bytes each: the catalog bounds it), with the filesystem's [`GuestNames`]: the files
//!   the kernel holds (FUSE lookups not yet forgotten) and their paths. Closing a filesystem
//!   never drops them, so every inode number the kernel holds stays valid: the next request
//!   reopens the filesystem on demand and resolves the number from the same names. A forget
//!   reaches the names whether the filesystem is open or not.
//! - A closed filesystem that an open file handle still holds is reused when it is asked for
//!   again, so one parser serves each filesystem (handles are bounded elsewhere).
//! - Guests are dropped outside the lock (dropping one ends its parser thread and may close its
//!   disk image).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use super::inodes::GuestKey;
use crate::inspect::guest::{
    CACHED_LISTING_BYTES, FsType, Guest, GuestNames, ListingCache, Source,
};

/// Most guest filesystems open at once.
pub const MAX_OPEN_GUESTS: usize = 4;
/// How long an unused guest filesystem stays open, unless `RPFS_GUEST_IDLE_SECS` says.
pub const GUEST_IDLE: Duration = Duration::from_secs(60);
/// The environment variable that sets the idle time, in seconds.
const IDLE_VAR: &str = "RPFS_GUEST_IDLE_SECS";

/// An open guest filesystem and what to call it in errors.
pub type OpenGuest = (Arc<Guest>, Arc<str>);

/// What a probe found in a (point, disk, partition) where rpfs reads a filesystem.
struct Probed {
    fs: FsType,
    label: Arc<str>,
    names: Arc<Mutex<GuestNames>>,
}

struct Table {
    /// Probe results (None: nothing rpfs reads there).
    probed: HashMap<GuestKey, Option<Probed>>,
    /// Open filesystems, with when each was last asked for; least recently used first out.
    open: LruCache<GuestKey, (Arc<Guest>, Instant)>,
    /// Closed filesystems that open handles may still hold.
    closed: HashMap<GuestKey, Weak<Guest>>,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            probed: HashMap::new(),
            open: LruCache::unbounded(),
            closed: HashMap::new(),
        }
    }
}

impl Table {
    /// The filesystem of `key` if it is open, or closed but still held (then open again).
    /// Returns the guests this closed, for the caller to drop outside the lock.
    fn touch(&mut self, key: &GuestKey) -> Option<(Arc<Guest>, Vec<Arc<Guest>>)> {
        if let Some((g, at)) = self.open.get_mut(key) {
            *at = Instant::now();
            return Some((g.clone(), Vec::new()));
        }
        let g = self.closed.remove(key)?.upgrade()?;
        Some((g.clone(), self.admit(*key, g)))
    }

    /// Opens `guest` as `key`'s, closing the least recently used beyond the ceiling; returns
    /// them.
    fn admit(&mut self, key: GuestKey, guest: Arc<Guest>) -> Vec<Arc<Guest>> {
        self.open.put(key, (guest, Instant::now()));
        let mut out = Vec::new();
        while self.open.len() > MAX_OPEN_GUESTS {
            match self.open.pop_lru() {
                Some((k, (g, _))) => {
                    self.closed.insert(k, Arc::downgrade(&g));
                    out.push(g);
                }
                None => break,
            }
        }
        out
    }
}

/// The guest filesystems of a mount: probe results, the open ones and the idle sweeper.
pub struct OpenGuests {
    table: Arc<Mutex<Table>>,
    listings: Arc<ListingCache>,
}

/// The idle time: `RPFS_GUEST_IDLE_SECS` if it is set to a number of seconds, else
/// [`GUEST_IDLE`].
fn idle_time() -> Duration {
    match std::env::var(IDLE_VAR) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) => Duration::from_secs(s.max(1)),
            Err(_) => {
                tracing::warn!(
                    "{IDLE_VAR}={v:?} is not a number of seconds; guest filesystems close after {} s idle",
                    GUEST_IDLE.as_secs()
                );
                GUEST_IDLE
            }
        },
        Err(_) => GUEST_IDLE,
    }
}

impl Default for OpenGuests {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenGuests {
    /// An empty set, whose sweeper closes what stays unused for the idle time.
    pub fn new() -> OpenGuests {
        let table: Arc<Mutex<Table>> = Arc::default();
        let idle = idle_time();
        let weak = Arc::downgrade(&table);
        let every = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        // Without a sweeper idle filesystems stay open until evicted: still bounded.
        if let Err(e) = thread::Builder::new()
            .name("rpfs-guest-sweep".into())
            .spawn(move || sweep(&weak, idle, every))
        {
            tracing::warn!("starting the guest filesystem sweeper: {e}; idle ones stay open");
        }
        OpenGuests {
            table,
            listings: ListingCache::new(CACHED_LISTING_BYTES),
        }
    }

    /// What the probe of `key` found: Some(None) when nothing rpfs reads is there, None when
    /// it was never probed.
    pub fn probed(&self, key: &GuestKey) -> Option<Option<FsType>> {
        let t = self.table.lock();
        t.probed.get(key).map(|p| p.as_ref().map(|p| p.fs))
    }

    /// Records what the probe of `key` found (the first result stands).
    pub fn set_probed(&self, key: GuestKey, found: Option<(FsType, Arc<str>)>) {
        self.table.lock().probed.entry(key).or_insert_with(|| {
            found.map(|(fs, label)| Probed {
                fs,
                label,
                names: Arc::default(),
            })
        });
    }

    /// The open filesystem of probed `key` and its label, opening it on `source` (made by
    /// `source()` only if it must be opened); None if nothing rpfs reads is there.
    pub fn get<S: Source, E>(
        &self,
        key: GuestKey,
        source: impl FnOnce() -> Result<S, E>,
    ) -> Result<Option<OpenGuest>, E> {
        let (fs, label, names) = {
            let mut t = self.table.lock();
            let Some(Some(p)) = t.probed.get(&key) else {
                return Ok(None);
            };
            let (fs, label, names) = (p.fs, p.label.clone(), p.names.clone());
            if let Some((g, closed)) = t.touch(&key) {
                drop(t);
                drop(closed);
                return Ok(Some((g, label)));
            }
            (fs, label, names)
        };
        // Opening the disk image happens outside the lock; two threads may both do it.
        let guest = Arc::new(Guest::with_shared(
            fs,
            Arc::new(source()?),
            names,
            self.listings.clone(),
        ));
        let mut t = self.table.lock();
        // Whoever opened first wins, so one parser serves each filesystem.
        let (g, closed) = match t.touch(&key) {
            Some(found) => found,
            None => {
                let closed = t.admit(key, guest.clone());
                (guest, closed)
            }
        };
        drop(t);
        drop(closed);
        Ok(Some((g, label)))
    }

    /// Returns `n` of the kernel's lookups of guest file `ino` of `key`, open or not.
    pub fn forget(&self, key: &GuestKey, ino: u64, n: u64) {
        let t = self.table.lock();
        let open = t.open.peek(key).map(|(g, _)| g.clone());
        let names = t
            .probed
            .get(key)
            .and_then(|p| p.as_ref().map(|p| p.names.clone()));
        drop(t);
        match (open, names) {
            (Some(g), _) => g.forget(ino, n),
            (None, Some(names)) => {
                names.lock().forget(ino, n);
            }
            (None, None) => {}
        }
    }

    /// Guest files the kernel holds, in all (each loaded filesystem's root included).
    pub fn known_files(&self) -> usize {
        let names: Vec<_> = self
            .table
            .lock()
            .probed
            .values()
            .flatten()
            .map(|p| p.names.clone())
            .collect();
        names.iter().map(|n| n.lock().known_files()).sum()
    }

    /// Forgets the filesystems of points `live` rejects (they left the catalog).
    pub fn retain_points(&self, live: impl Fn(uuid::Uuid) -> bool) {
        let mut guard = self.table.lock();
        let t = &mut *guard;
        t.probed.retain(|(p, _, _), _| live(*p));
        t.closed
            .retain(|(p, _, _), w| live(*p) && w.strong_count() > 0);
        let gone: Vec<GuestKey> = t
            .open
            .iter()
            .map(|(k, _)| *k)
            .filter(|(p, _, _)| !live(*p))
            .collect();
        let dropped: Vec<_> = gone.iter().filter_map(|k| t.open.pop(k)).collect();
        drop(guard);
        drop(dropped);
    }
}

/// The sweeper's body: every `every`, closes the filesystems unused for `idle`; ends with its
/// table.
fn sweep(table: &Weak<Mutex<Table>>, idle: Duration, every: Duration) {
    loop {
        thread::sleep(every);
        let Some(table) = table.upgrade() else {
            return;
        };
        close_idle(&table, idle);
    }
}

/// Closes the filesystems unused for `idle`; returns how many it closed.
fn close_idle(table: &Mutex<Table>, idle: Duration) -> usize {
    let mut guard = table.lock();
    let t = &mut *guard;
    let now = Instant::now();
    let mut closed = Vec::new();
    while t
        .open
        .peek_lru()
        .is_some_and(|(_, (_, at))| now.duration_since(*at) >= idle)
    {
        if let Some((k, (g, _))) = t.open.pop_lru() {
            t.closed.insert(k, Arc::downgrade(&g));
            closed.push((k, g));
        }
    }
    drop(guard);
    let keys: Vec<GuestKey> = closed.iter().map(|(k, _)| *k).collect();
    drop(closed);
    if keys.is_empty() {
        return 0;
    }
    // Numbers given to paths nobody holds go once no guest of the filesystem is left.
    let mut guard = table.lock();
    let t = &mut *guard;
    t.closed.retain(|_, w| w.strong_count() > 0);
    let names: Vec<_> = keys
        .iter()
        .filter(|k| !t.closed.contains_key(k) && !t.open.contains(k))
        .filter_map(|k| {
            t.probed
                .get(k)
                .and_then(|p| p.as_ref().map(|p| p.names.clone()))
        })
        .collect();
    drop(guard);
    for n in names {
        n.lock().trim();
    }
    keys.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn key(i: u128) -> GuestKey {
        (Uuid::from_u128(i), Uuid::nil(), 0)
    }

    /// Opens probed `key` on a (garbage) source: no parser loads until asked.
    fn open(g: &OpenGuests, k: GuestKey) -> Arc<Guest> {
        g.set_probed(k, Some((FsType::Ext4, "ext4 in disk os of c/p".into())));
        let (fs, label) = g
            .get(k, || Ok::<_, ()>(vec![0u8; 4096]))
            .expect("source")
            .expect("probed");
        assert_eq!(&*label, "ext4 in disk os of c/p");
        fs
    }

    #[test]
    fn at_most_the_ceiling_is_open_and_a_held_one_is_reused() {
        let g = OpenGuests::new();
        let held = open(&g, key(0));
        for i in 1..(3 * MAX_OPEN_GUESTS as u128) {
            open(&g, key(i));
            assert!(g.table.lock().open.len() <= MAX_OPEN_GUESTS);
        }
        assert!(
            !g.table.lock().open.contains(&key(0)),
            "least recently used"
        );
        // A handle still holds the first: asked for again, it is the same one.
        assert!(Arc::ptr_eq(&held, &open(&g, key(0))));
        // One closed and held by nothing is gone, and opened afresh on demand.
        let again = open(&g, key(1));
        assert_eq!(Arc::strong_count(&again), 2, "the table's and ours");
    }

    #[test]
    fn idle_ones_close_and_nothing_rpfs_reads_stays_none() {
        let g = OpenGuests::new();
        for i in 0..3 {
            open(&g, key(i));
        }
        assert_eq!(close_idle(&g.table, Duration::from_secs(3600)), 0);
        assert_eq!(close_idle(&g.table, Duration::ZERO), 3);
        assert_eq!(g.table.lock().open.len(), 0);
        assert!(g.table.lock().closed.is_empty(), "nothing held them");
        g.set_probed(key(9), None);
        assert_eq!(g.probed(&key(9)), Some(None));
        assert!(
            g.get(key(9), || Ok::<_, ()>(Vec::new()))
                .expect("no source needed")
                .is_none()
        );
        g.retain_points(|p| p == key(1).0);
        assert_eq!(g.probed(&key(0)), None);
        assert_eq!(g.probed(&key(1)), Some(Some(FsType::Ext4)));
    }
}
