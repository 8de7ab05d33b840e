//! The storage interface: every byte of the store is read and written through [`Storage`], so a
//! fault-injecting or remote implementation can stand in for the local directory.
//!
//! Invariants every implementation keeps:
//! - Keys are relative, `/`-separated paths checked by [`check_key`]: no empty, `.` or `..`
//!   components, no leading `/`. Nothing outside the store root is ever touched.
//! - [`Storage::put`] and [`ObjectWriter::commit`] publish atomically and durably: a reader sees
//!   the old object or the new one, never a mix, and once the call returns the new object survives
//!   a crash. Until then it does not exist under its key.
//! - An object dropped without `commit` leaves nothing under its key (a temporary file may remain
//!   after a crash; its name ends in [`TEMP_SUFFIX`] and recovery removes it).
//! - [`Storage::remove`] is durable on return.
//! - Published objects are never modified in place; they are only replaced whole or removed.
//! - Locks are advisory, exclusive, and released by the OS when the holder dies.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::crashsim::{Event, Sabotage, Trace};

/// Suffix of in-flight temporary objects; anything ending in it is garbage after a crash.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Alignment of buffers, offsets and lengths for direct (O_DIRECT) I/O.
pub const DIRECT_ALIGN: usize = 4096;

/// A buffer whose start is aligned for direct I/O, made safely by over-allocating.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        // For a byte pointer `align_offset` always succeeds, within the DIRECT_ALIGN spare bytes.
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, start, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A published object opened for random-access reads.
pub trait Object: Send + Sync + fmt::Debug {
    /// Length in bytes, fixed for the lifetime of the handle.
    fn len(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`; a short object is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// True when the object holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A streaming writer for one new object. Dropping it without [`ObjectWriter::commit`]
/// discards what was written.
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and publishes it under its key, replacing any previous object.
    /// Returns the object's length.
    fn commit(self: Box<Self>) -> io::Result<u64>;
    /// Hints that what was written so far will not be read back soon and should start on its
    /// way to stable storage, so the final commit has less to wait for. May do nothing.
    fn start_writeback(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An exclusive lock; released when dropped (or when the process dies).
pub struct LockGuard {
    file: File,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Unlock explicitly rather than by closing: a child forked by another thread holds a
        // copy of the descriptor until it execs, and closing ours would leave the lock held
        // until then. Unlocking releases it for every copy. Failure leaves the close to do it.
        let _ = self.file.unlock();
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

/// Capacity figures of the medium holding the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The small set of operations the store needs from whatever holds its bytes.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Reads a whole (small) object.
    fn read(&self, key: &str) -> io::Result<Vec<u8>>;
    /// Opens an object for random-access reads.
    fn open(&self, key: &str) -> io::Result<Arc<dyn Object>>;
    /// Publishes `data` under `key` atomically and durably.
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()>;
    /// Starts a new object under `key`; see [`ObjectWriter`].
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>>;
    /// Names directly under `dir` (objects and sub-directories), sorted; empty when `dir` is absent.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Removes one object durably. A missing object is `NotFound`.
    fn remove(&self, key: &str) -> io::Result<()>;
    /// Removes `dir` and everything below it. A missing directory is not an error.
    fn remove_tree(&self, dir: &str) -> io::Result<()>;
    /// Size of an object in bytes.
    fn size(&self, key: &str) -> io::Result<u64>;
    /// Takes the named exclusive lock if it is free, else returns `None` at once.
    fn try_lock(&self, name: &str) -> io::Result<Option<LockGuard>>;
    /// Takes the named exclusive lock, waiting for it.
    fn lock(&self, name: &str) -> io::Result<LockGuard>;
    /// Capacity of the medium.
    fn space(&self) -> io::Result<Space>;
}

/// Rejects keys that could escape the store root or alias another key.
pub fn check_key(key: &str) -> io::Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'));
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid storage key {key:?}"),
        ));
    }
    Ok(())
}

/// The store as a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// Tests: where the file system calls are recorded (see [`super::crashsim`]).
    trace: Option<Arc<Trace>>,
    /// Tests: a deliberately broken durability protocol.
    sabotage: Sabotage,
}

/// Records one call on the trace, when tracing.
fn note(trace: &Option<Arc<Trace>>, event: impl FnOnce() -> Event) {
    if let Some(t) = trace {
        t.record(event());
    }
}

impl LocalStorage {
    /// Uses `root` as the store directory; it must exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStorage {
            root: root.into(),
            trace: None,
            sabotage: Sabotage::None,
        }
    }

    /// Tests: records every file system call that changes the store on `trace`.
    pub fn traced(mut self, trace: Arc<Trace>) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Tests: breaks the durability protocol as `sabotage` says, to prove that the crash
    /// simulation catches it. Never for real stores.
    pub fn sabotaged(mut self, sabotage: Sabotage) -> Self {
        self.sabotage = sabotage;
        self
    }

    /// The key of a path under the root ("" for the root itself).
    fn key_of(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// fsyncs the directory `dir` under the root (unless sabotaged).
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.sabotage == Sabotage::NoDirFsync {
            return Ok(());
        }
        sync_dir(dir)?;
        note(&self.trace, || Event::FsyncDir(self.key_of(dir)));
        Ok(())
    }

    /// The directory this storage lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`, refusing one that goes through anything but directories to a regular
    /// file or directory: a symbolic link planted in the store must not lead reads, writes or
    /// removals outside it, and a FIFO or device must not block or feed a reader. (Opens also
    /// use O_NOFOLLOW, so a link swapped in after this check is refused too.)
    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        let mut path = self.root.clone();
        let mut exists = true;
        let parts: Vec<&str> = key.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            if !exists {
                continue;
            }
            let refuse = |what: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is {what}; the store holds only files and directories",
                        path.display()
                    ),
                )
            };
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refuse("a symbolic link, which the store never follows"));
                }
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.is_file() && i + 1 == parts.len() => {}
                Ok(m) if m.is_file() => return Err(refuse("a file where a directory belongs")),
                Ok(_) => return Err(refuse("not a regular file")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => exists = false,
                Err(e) => return Err(e),
            }
        }
        Ok(path)
    }

    /// Opens an existing file for reading, never through a link.
    fn open_file(&self, key: &str) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(key)?)
    }

    /// Creates the parent directories of `path` that are missing, fsyncing each new entry's
    /// parent so the directories themselves survive a crash.
    fn ensure_parent(&self, path: &Path) -> io::Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if parent.is_dir() {
            return Ok(());
        }
        self.ensure_parent(parent)?;
        match fs::create_dir(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        note(&self.trace, || Event::Mkdir(self.key_of(parent)));
        match parent.parent() {
            Some(grand) => self.sync_dir(grand),
            None => Ok(()),
        }
    }
}

/// Removes `key` durably; an object already gone is not an error (cleanup is idempotent).
pub fn remove_if_present(storage: &dyn Storage, key: &str) -> io::Result<()> {
    match storage.remove(key) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// fsyncs a directory so entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}{TEMP_SUFFIX}", uuid::Uuid::new_v4().simple()));
    path.with_file_name(name)
}

/// Local file opened for reads.
#[derive(Debug)]
struct LocalObject {
    file: File,
    len: u64,
}

impl Object for LocalObject {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// Bytes a writer stages before writing them out; with direct I/O, the unit of each write.
const STAGE: usize = 4 << 20;
/// Staging buffers per writer: one being filled while the other is written.
const STAGES: usize = 2;

/// Writes full staging buffers in the background, directly where the filesystem allows it.
struct StageWriter {
    full: crossbeam_channel::Sender<(AlignedBuf, u64)>,
    empty: crossbeam_channel::Receiver<AlignedBuf>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl StageWriter {
    fn start(file: Arc<File>, direct: File) -> io::Result<StageWriter> {
        let (full, full_rx) = crossbeam_channel::bounded::<(AlignedBuf, u64)>(STAGES);
        let (empty_tx, empty) = crossbeam_channel::bounded(STAGES);
        for _ in 0..STAGES {
            let _ = empty_tx.send(AlignedBuf::new(STAGE));
        }
        let thread = std::thread::Builder::new()
            .name("rpfs-writer".into())
            .spawn(move || -> io::Result<()> {
                let mut direct = Some(direct);
                for (buf, offset) in full_rx {
                    let mut done = false;
                    if let Some(d) = &direct {
                        match d.write_all_at(buf.as_slice(), offset) {
                            Ok(()) => done = true,
                            // The filesystem refused this direct write after all: go buffered.
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => direct = None,
                            Err(e) => return Err(e),
                        }
                    }
                    if !done {
                        file.write_all_at(buf.as_slice(), offset)?;
                    }
                    // The writer may be gone (dropped without commit): then so is the buffer.
                    let _ = empty_tx.send(buf);
                }
                Ok(())
            })?;
        Ok(StageWriter {
            full,
            empty,
            thread,
        })
    }

    /// Waits for every write handed over, and says how they went.
    fn finish(self) -> io::Result<()> {
        drop(self.full);
        self.thread
            .join()
            .map_err(|_| io::Error::other("the writer thread panicked"))?
    }
}

/// Writes to `<key>.<random>.tmp`, then fsync, rename over the key, fsync the directory.
///
/// Bytes are staged in aligned buffers. On filesystems that take O_DIRECT, each full buffer is
/// written directly by a background thread while the next one fills: no copy through the page
/// cache, and the data is on disk by the time commit fsyncs. Elsewhere, and for the unaligned
/// tail at commit, writes go through the page cache.
struct LocalWriter {
    /// Descriptor for buffered writes, the tail and fsync.
    file: Option<Arc<File>>,
    background: Option<StageWriter>,
    /// Whether a background direct writer was tried already.
    tried_direct: bool,
    stage: Option<AlignedBuf>,
    staged: usize,
    /// Bytes handed out for writing so far.
    offset: u64,
    temp: PathBuf,
    dest: PathBuf,
    /// Bytes already handed to writeback by `start_writeback`.
    written_back: u64,
    /// The storage, for tracing, sabotage and directory fsyncs.
    storage: LocalStorage,
}

impl LocalWriter {
    /// Hands the full staging buffer over (or writes it, without a background writer).
    fn write_stage(&mut self) -> io::Result<()> {
        let Some(stage) = self.stage.take() else {
            return Ok(());
        };
        let offset = self.offset;
        self.offset += self.staged as u64;
        let staged = std::mem::take(&mut self.staged);
        note(&self.storage.trace, || Event::Write {
            path: self.storage.key_of(&self.temp),
            offset,
            data: stage.as_slice()[..staged].to_vec(),
        });
        if staged == STAGE && self.background.is_none() && !self.tried_direct {
            // A large object: write it directly from a background thread, if the filesystem
            // takes O_DIRECT (tmpfs does not).
            self.tried_direct = true;
            let direct = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&self.temp);
            if let (Ok(direct), Some(file)) = (direct, &self.file) {
                self.background = Some(StageWriter::start(file.clone(), direct)?);
            }
        }
        if let Some(bg) = &self.background
            && staged == STAGE
        {
            if bg.full.send((stage, offset)).is_err() {
                // The background writer stopped on an error: finish() reports it.
                return self.background.take().map_or(Ok(()), StageWriter::finish);
            }
            return Ok(());
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("writer committed"))?;
        file.write_all_at(&stage.as_slice()[..staged], offset)?;
        self.stage = Some(stage);
        Ok(())
    }
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            return Err(io::Error::other("writer already committed"));
        }
        if self.stage.is_none() {
            let recycled = match &self.background {
                Some(bg) => bg.empty.recv().ok(),
                None => None,
            };
            self.stage = Some(recycled.unwrap_or_else(|| AlignedBuf::new(STAGE)));
        }
        let stage = self
            .stage
            .as_mut()
            .ok_or_else(|| io::Error::other("no staging buffer"))?;
        let n = buf.len().min(STAGE - self.staged);
        stage.as_mut_slice()[self.staged..self.staged + n].copy_from_slice(&buf[..n]);
        self.staged += n;
        if self.staged == STAGE {
            self.write_stage()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Staged bytes are written at the next full buffer or at commit; nothing is owed now.
        Ok(())
    }
}

impl ObjectWriter for LocalWriter {
    fn start_writeback(&mut self) -> io::Result<()> {
        if self.background.is_some() {
            // Direct writes are already on their way.
            return Ok(());
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        // POSIX_FADV_DONTNEED starts asynchronous writeback of the dirty range (and drops what
        // is clean): the data is on its way before commit's fsync has to wait for it.
        let _ = nix::fcntl::posix_fadvise(
            &**file,
            self.written_back as i64,
            (self.offset - self.written_back) as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        self.written_back = self.offset;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> io::Result<u64> {
        // Everything handed to the background writer first, then the tail, buffered: direct
        // writes need aligned lengths.
        if let Some(bg) = self.background.take() {
            bg.finish()?;
        }
        self.write_stage()?;
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("writer already committed"))?;
        let st = &self.storage;
        if st.sabotage != Sabotage::NoFileFsync {
            file.sync_all()?;
            note(&st.trace, || Event::Fsync(st.key_of(&self.temp)));
        }
        let len = self.offset;
        drop(file);
        if self.temp != self.dest {
            fs::rename(&self.temp, &self.dest)?;
            note(&st.trace, || Event::Rename {
                from: st.key_of(&self.temp),
                to: st.key_of(&self.dest),
            });
        }
        if let Some(dir) = self.dest.parent() {
            st.sync_dir(dir)?;
        }
        Ok(len)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let Some(bg) = self.background.take() {
            let _ = bg.finish();
        }
        if self.file.take().is_some() {
            // Not committed: the temporary is garbage. Failing to remove it is harmless, recovery
            // removes `*.tmp` files.
            if fs::remove_file(&self.temp).is_ok() {
                note(&self.storage.trace, || {
                    Event::Unlink(self.storage.key_of(&self.temp))
                });
            }
        }
    }
}

impl Storage for LocalStorage {
    fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut self.open_file(key)?, &mut out)?;
        Ok(out)
    }

    fn open(&self, key: &str) -> io::Result<Arc<dyn Object>> {
        let file = self.open_file(key)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(LocalObject { file, len }))
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let mut w = self.create(key)?;
        w.write_all(data)?;
        w.commit().map(|_| ())
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let dest = self.path(key)?;
        self.ensure_parent(&dest)?;
        let temp = if self.sabotage == Sabotage::InPlace {
            dest.clone()
        } else {
            temp_path(&dest)
        };
        let file = Arc::new(
            OpenOptions::new()
                .write(true)
                .create_new(temp != dest)
                .create(true)
                .truncate(true)
                .open(&temp)?,
        );
        note(&self.trace, || Event::Create(self.key_of(&temp)));
        Ok(Box::new(LocalWriter {
            file: Some(file),
            background: None,
            tried_direct: false,
            stage: None,
            staged: 0,
            offset: 0,
            temp,
            dest,
            written_back: 0,
            storage: self.clone(),
        }))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let path = if dir.is_empty() {
            self.root.clone()
        } else {
            self.path(dir)?
        };
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            // Names that are not UTF-8 cannot be ours; skip them rather than fail the listing.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove(&self, key: &str) -> io::Result<()> {
        let path = self.path(key)?;
        fs::remove_file(&path)?;
        note(&self.trace, || Event::Unlink(key.to_string()));
        match path.parent() {
            Some(dir) => self.sync_dir(dir),
            None => Ok(()),
        }
    }

    fn remove_tree(&self, dir: &str) -> io::Result<()> {
        let path = self.path(dir)?;
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        note(&self.trace, || Event::RemoveTree(dir.to_string()));
        match path.parent() {
            Some(parent) => self.sync_dir(parent),
            None => Ok(()),
        }
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(key)?)?.len())
    }

    fn try_lock(&self, name: &str) -> io::Result<Option<LockGuard>> {
        let file = self.lock_file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard { file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn lock(&self, name: &str) -> io::Result<LockGuard> {
        let file = self.lock_file(name)?;
        file.lock()?;
        Ok(LockGuard { file })
    }

    fn space(&self) -> io::Result<Space> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        let frag = st.fragment_size();
        Ok(Space {
            total_bytes: st.blocks().saturating_mul(frag),
            free_bytes: st.blocks_available().saturating_mul(frag),
        })
    }
}

impl LocalStorage {
    fn lock_file(&self, name: &str) -> io::Result<File> {
        let path = self.path(&format!("locks/{name}.lock"))?;
        let writable = self.ensure_parent(&path).and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        });
        match writable {
            Ok(f) => Ok(f),
            // A read-only store (or a reader without write permission) can still lock an
            // existing lock file: flock needs only a read descriptor.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EROFS | libc::EACCES | libc::EPERM)
                ) =>
            {
                File::open(&path).map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["rpfs.store", "vms/x/vm.json", "a.b/c-d_e"] {
            assert!(check_key(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn uncommitted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let mut w = s.create("a/b.bin").expect("create");
        w.write_all(b"partial").expect("write");
        drop(w);
        assert!(s.list("a").expect("list").is_empty());
        s.put("a/b.bin", b"whole").expect("put");
        assert_eq!(s.read("a/b.bin").expect("read"), b"whole");
        assert_eq!(s.list("a").expect("list"), vec!["b.bin".to_string()]);
    }

    #[test]
    fn lock_is_exclusive_within_and_across_handles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::new(dir.path());
        let g = s.try_lock("vm-1").expect("lock").expect("free");
        assert!(s.try_lock("vm-1").expect("lock").is_none());
        assert!(s.try_lock("vm-2").expect("lock").is_some());
        drop(g);
        assert!(s.try_lock("vm-1").expect("lock").is_some());
    }
}
