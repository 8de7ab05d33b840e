//! The store as a local directory: [`LocalStorage`] implements [`Storage`] on a directory tree,
//! making every change through a [`FileOps`] (the real system calls unless a test says
//! otherwise).
//!
//! Invariants:
//! - The durability protocol is here and only here: an object is written to a temporary beside
//!   its key, fsynced, renamed over the key, and its directory fsynced; a removal fsyncs the
//!   directory; a new directory is fsynced into its parent. The write path has one shape; what a
//!   test wants different it puts in its own [`FileOps`].
//! - Nothing outside the root is touched: keys are checked, every path component is checked to
//!   be a directory or (last) a regular file, never a symbolic link, and opens use O_NOFOLLOW.
//! - Large objects are written directly (O_DIRECT) from a background thread where the filesystem
//!   takes it, in aligned staging buffers; the tail and everything elsewhere goes buffered.
//! - Private from the first instant: directories are created 0700, files (temporaries, lock
//!   files) 0600, by the call that creates them (`super::private`). Lock files are opened with
//!   O_NOFOLLOW like everything else.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fileops::{FileOps, Syscalls};
use super::private::{self, FILE_MODE, Tightened};
use super::storage::{
    AlignedBuf, LockGuard, Object, ObjectWriter, Space, Storage, check_key, put_filler,
};

/// The store as a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    ops: Arc<dyn FileOps>,
}

impl LocalStorage {
    /// Uses `root` as the store directory; it must exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_ops(root, Arc::new(Syscalls))
    }

    /// Like [`LocalStorage::new`], making every change through `ops`.
    pub fn with_ops(root: impl Into<PathBuf>, ops: Arc<dyn FileOps>) -> Self {
        LocalStorage {
            root: root.into(),
            ops,
        }
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
        match self.ops.create_dir(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        self.sync_parent(parent)
    }

    /// fsyncs the directory holding `path`, so a change to its entry is durable.
    fn sync_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(dir) => self.ops.sync_dir(dir),
            None => Ok(()),
        }
    }

    fn lock_file(&self, name: &str) -> io::Result<File> {
        let path = self.path(&format!("locks/{name}.lock"))?;
        let writable = self.ensure_parent(&path).and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
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
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }
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
    fn start(
        ops: Arc<dyn FileOps>,
        path: PathBuf,
        file: Arc<File>,
        direct: File,
    ) -> io::Result<StageWriter> {
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
                        match ops.write_at(d, &path, buf.as_slice(), offset) {
                            Ok(()) => done = true,
                            // The filesystem refused this direct write after all: go buffered.
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => direct = None,
                            Err(e) => return Err(e),
                        }
                    }
                    if !done {
                        ops.write_at(&file, &path, buf.as_slice(), offset)?;
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

/// Writes to a temporary beside the key, then fsync, rename over the key, fsync the directory.
///
/// Bytes are staged in aligned buffers. On filesystems that take O_DIRECT, each full buffer is
/// written directly by a background thread while the next one fills: no copy through the page
/// cache, and the data is on disk by the time commit fsyncs. Elsewhere, and for the unaligned
/// tail at commit, writes go through the page cache.
struct LocalWriter {
    /// Descriptor for buffered writes, the tail and fsync; `None` once committed.
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
        let ops = &self.storage.ops;
        if staged == STAGE && self.background.is_none() && !self.tried_direct {
            // A large object: write it directly from a background thread, if the filesystem
            // takes O_DIRECT (tmpfs does not).
            self.tried_direct = true;
            let direct = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&self.temp);
            if let (Ok(direct), Some(file)) = (direct, &self.file) {
                self.background = Some(StageWriter::start(
                    ops.clone(),
                    self.temp.clone(),
                    file.clone(),
                    direct,
                )?);
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
        ops.write_at(file, &self.temp, &stage.as_slice()[..staged], offset)?;
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
        let ops = &self.storage.ops;
        ops.sync_file(&file, &self.temp)?;
        let len = self.offset;
        drop(file);
        ops.rename(&self.temp, &self.dest)?;
        self.storage.sync_parent(&self.dest)?;
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
            let _ = self.storage.ops.remove_file(&self.temp);
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
        let (file, temp) = self.ops.create_temp(&dest)?;
        Ok(Box::new(LocalWriter {
            file: Some(Arc::new(file)),
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
        self.ops.remove_file(&path)?;
        self.sync_parent(&path)
    }

    fn remove_tree(&self, dir: &str) -> io::Result<()> {
        let path = self.path(dir)?;
        match self.ops.remove_tree(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        self.sync_parent(&path)
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(key)?)?.len())
    }

    fn try_lock(&self, name: &str) -> io::Result<Option<LockGuard>> {
        let file = self.lock_file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard::new(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn lock(&self, name: &str) -> io::Result<LockGuard> {
        let file = self.lock_file(name)?;
        file.lock()?;
        Ok(LockGuard::new(file))
    }

    fn try_lock_shared(&self, name: &str) -> io::Result<Option<LockGuard>> {
        let file = self.lock_file(name)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(LockGuard::new(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn space(&self) -> io::Result<Space> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        let frag = st.fragment_size();
        Ok(Space {
            total_bytes: st.blocks().saturating_mul(frag),
            free_bytes: st.blocks_available().saturating_mul(frag),
        })
    }

    fn make_private(&self) -> io::Result<Tightened> {
        private::make_private(&self.root)
    }

    /// Allocates the space with `fallocate` (no data written), then the usual fsync, rename,
    /// fsync-directory; where the filesystem cannot preallocate, writes filler instead.
    fn put_reserved(&self, key: &str, len: u64) -> io::Result<()> {
        let bytes = i64::try_from(len).map_err(|_| io::Error::other("reserve too large"))?;
        let dest = self.path(key)?;
        self.ensure_parent(&dest)?;
        let (file, temp) = self.ops.create_temp(&dest)?;
        let published = (|| {
            nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, bytes)?;
            self.ops.sync_file(&file, &temp)?;
            self.ops.rename(&temp, &dest)?;
            self.sync_parent(&dest)
        })();
        if published.is_err() {
            let _ = self.ops.remove_file(&temp);
        }
        match published {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => put_filler(self, key, len),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
