//! Simulated power cuts, for tests: [`Traced`] records on a [`Trace`] the file system calls that
//! a [`LocalStorage`] makes, and [`crash_state`] builds, from a copy of the store taken when
//! tracing began and a prefix of the trace, one state the disk could be in had the power failed
//! at that moment. [`Sabotaged`] breaks the durability protocol on purpose, to prove the
//! simulation catches a store that does not keep it.
//!
//! The model of what a power cut keeps (deliberately weaker than ext4 or XFS promise, so code
//! that survives it survives them):
//! - bytes written to a file survive only once the file was fsynced; until then each write may
//!   be lost, kept, kept in part (torn at a 4 KiB boundary), or leave the file longer but
//!   zero-filled where it wrote, independently of the others;
//! - a directory entry created, renamed or removed (files and directories alike) survives only
//!   once its directory was fsynced; until then each such change may be lost or kept,
//!   independently of the others, a rename as a whole; removing a tree removes each entry in it
//!   as its own change;
//! - what was durable when tracing began stays.
//!
//! Invariants: the trace records a call after it succeeded, in the order the calls returned (a
//! background writer's writes all return before the fsync that waits for them). A trace that
//! names a file the model does not know is an error, not something to skip.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::LocalStorage;
use crate::store::fileops::{FileOps, Syscalls};

/// One traced call; paths are keys relative to the store root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new, empty file.
    Create(String),
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// fsync of a file: its data is durable (its directory entry is not).
    Fsync(String),
    /// fsync of a directory ("" is the root): its entries are durable.
    FsyncDir(String),
    Rename {
        from: String,
        to: String,
    },
    Unlink(String),
    Mkdir(String),
    /// A directory and everything below it removed.
    RemoveTree(String),
}

/// Ways to break the durability protocol on purpose, to prove the simulation catches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sabotage {
    /// The correct protocol.
    #[default]
    None,
    /// Renames a new object into place without fsyncing its data first.
    NoFileFsync,
    /// Never fsyncs directories after creating, renaming or removing entries.
    NoDirFsync,
    /// Writes objects in place under their final name: the entry exists before the data.
    InPlace,
}

/// The calls made so far.
#[derive(Debug, Default)]
pub struct Trace {
    events: Mutex<Vec<Event>>,
}

impl Trace {
    pub fn new() -> Trace {
        Trace::default()
    }

    fn record(&self, event: Event) {
        self.events.lock().push(event);
    }

    /// Takes the events recorded so far, leaving the trace empty.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock())
    }
}

/// The real calls, each recorded on a [`Trace`] once it succeeded; paths become keys relative
/// to the store root.
#[derive(Debug)]
pub struct Traced {
    root: PathBuf,
    trace: Arc<Trace>,
}

impl Traced {
    pub fn new(root: impl Into<PathBuf>, trace: Arc<Trace>) -> Traced {
        Traced {
            root: root.into(),
            trace,
        }
    }

    fn key(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// Opens `dest` itself for writing, truncated, as if it were a new file (the in-place
    /// sabotage: a cut then leaves the object's own name half written).
    fn create_in_place(&self, dest: &Path) -> io::Result<(File, PathBuf)> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::store::private::FILE_MODE)
            .open(dest)?;
        self.trace.record(Event::Create(self.key(dest)));
        Ok((file, dest.to_path_buf()))
    }

    /// Runs `call` and records `event` if it succeeded.
    fn noted<T>(&self, call: io::Result<T>, event: impl FnOnce() -> Event) -> io::Result<T> {
        if call.is_ok() {
            self.trace.record(event());
        }
        call
    }
}

impl FileOps for Traced {
    fn create_temp(&self, dest: &Path) -> io::Result<(File, PathBuf)> {
        let (file, temp) = Syscalls.create_temp(dest)?;
        self.trace.record(Event::Create(self.key(&temp)));
        Ok((file, temp))
    }
    fn write_at(&self, file: &File, path: &Path, data: &[u8], offset: u64) -> io::Result<()> {
        let r = Syscalls.write_at(file, path, data, offset);
        self.noted(r, || Event::Write {
            path: self.key(path),
            offset,
            data: data.to_vec(),
        })
    }
    fn sync_file(&self, file: &File, path: &Path) -> io::Result<()> {
        let r = Syscalls.sync_file(file, path);
        self.noted(r, || Event::Fsync(self.key(path)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let r = Syscalls.rename(from, to);
        self.noted(r, || Event::Rename {
            from: self.key(from),
            to: self.key(to),
        })
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let r = Syscalls.sync_dir(dir);
        self.noted(r, || Event::FsyncDir(self.key(dir)))
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let r = Syscalls.create_dir(path);
        self.noted(r, || Event::Mkdir(self.key(path)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let r = Syscalls.remove_file(path);
        self.noted(r, || Event::Unlink(self.key(path)))
    }
    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        let r = Syscalls.remove_tree(path);
        self.noted(r, || Event::RemoveTree(self.key(path)))
    }
}

/// Traced calls with the durability protocol broken as [`Sabotage`] says.
#[derive(Debug)]
pub struct Sabotaged {
    inner: Traced,
    sabotage: Sabotage,
}

impl Sabotaged {
    pub fn new(inner: Traced, sabotage: Sabotage) -> Sabotaged {
        Sabotaged { inner, sabotage }
    }
}

impl FileOps for Sabotaged {
    fn create_temp(&self, dest: &Path) -> io::Result<(File, PathBuf)> {
        if self.sabotage != Sabotage::InPlace {
            return self.inner.create_temp(dest);
        }
        self.inner.create_in_place(dest)
    }
    fn write_at(&self, file: &File, path: &Path, data: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(file, path, data, offset)
    }
    fn sync_file(&self, file: &File, path: &Path) -> io::Result<()> {
        match self.sabotage {
            Sabotage::NoFileFsync => Ok(()),
            _ => self.inner.sync_file(file, path),
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match from == to {
            // Written in place: there is nothing to rename.
            true => Ok(()),
            false => self.inner.rename(from, to),
        }
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.sabotage {
            Sabotage::NoDirFsync => Ok(()),
            _ => self.inner.sync_dir(dir),
        }
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_tree(path)
    }
}

/// A local store at `root` whose calls are recorded on `trace`, broken as `sabotage` says.
pub fn traced_storage(root: &Path, trace: Arc<Trace>, sabotage: Sabotage) -> LocalStorage {
    let traced = Traced::new(root, trace);
    let ops: Arc<dyn FileOps> = match sabotage {
        Sabotage::None => Arc::new(traced),
        s => Arc::new(Sabotaged::new(traced, s)),
    };
    LocalStorage::with_ops(root, ops)
}

#[derive(Debug, Clone)]
enum Entry {
    File(usize),
    Dir,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

/// Changes to one directory's entries that are applied together (a rename is two).
type DirChange = Vec<(String, Option<Entry>)>;

#[derive(Debug, Default)]
struct Dir {
    durable: BTreeMap<String, Entry>,
    pending: Vec<DirChange>,
}

/// The file system as the trace left it, durable and not.
#[derive(Debug, Default)]
struct Model {
    inodes: Vec<Inode>,
    /// Directories by path ("" is the root).
    dirs: BTreeMap<String, Dir>,
    /// What a process would see now: file path → inode.
    files: BTreeMap<String, usize>,
}

fn split(path: &str) -> (String, String) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir.to_string(), name.to_string()),
        None => (String::new(), path.to_string()),
    }
}

fn write_at(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[offset as usize..end].copy_from_slice(data);
}

impl Model {
    /// Everything under `root`, all durable.
    fn load(root: &Path) -> io::Result<Model> {
        let mut m = Model::default();
        m.dirs.insert(String::new(), Dir::default());
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(root.join(&dir))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let path = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                let entry = if e.file_type()?.is_dir() {
                    m.dirs.insert(path.clone(), Dir::default());
                    stack.push(path);
                    Entry::Dir
                } else {
                    m.inodes.push(Inode {
                        durable: fs::read(e.path())?,
                        pending: Vec::new(),
                    });
                    m.files.insert(path, m.inodes.len() - 1);
                    Entry::File(m.inodes.len() - 1)
                };
                if let Some(d) = m.dirs.get_mut(&dir) {
                    d.durable.insert(name, entry);
                }
            }
        }
        Ok(m)
    }

    fn change(&mut self, dir: &str, change: DirChange) {
        self.dirs
            .entry(dir.to_string())
            .or_default()
            .pending
            .push(change);
    }

    fn inode(&self, path: &str) -> io::Result<usize> {
        self.files.get(path).copied().ok_or_else(|| {
            io::Error::other(format!("the trace uses {path}, which it never created"))
        })
    }

    fn apply(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::Create(path) => {
                self.inodes.push(Inode::default());
                let ino = self.inodes.len() - 1;
                self.files.insert(path.clone(), ino);
                let (dir, name) = split(path);
                self.change(&dir, vec![(name, Some(Entry::File(ino)))]);
            }
            Event::Write { path, offset, data } => {
                let ino = self.inode(path)?;
                self.inodes[ino].pending.push((*offset, data.clone()));
            }
            Event::Fsync(path) => {
                let ino = self.inode(path)?;
                let inode = &mut self.inodes[ino];
                for (offset, data) in std::mem::take(&mut inode.pending) {
                    write_at(&mut inode.durable, offset, &data);
                }
            }
            Event::FsyncDir(dir) => {
                if let Some(d) = self.dirs.get_mut(dir) {
                    for change in std::mem::take(&mut d.pending) {
                        apply_change(&mut d.durable, change);
                    }
                }
            }
            Event::Rename { from, to } => {
                let ino = self.inode(from)?;
                self.files.remove(from);
                self.files.insert(to.clone(), ino);
                let ((dir, from_name), (to_dir, to_name)) = (split(from), split(to));
                if dir == to_dir {
                    self.change(
                        &dir,
                        vec![(from_name, None), (to_name, Some(Entry::File(ino)))],
                    );
                } else {
                    self.change(&dir, vec![(from_name, None)]);
                    self.change(&to_dir, vec![(to_name, Some(Entry::File(ino)))]);
                }
            }
            Event::Unlink(path) => {
                self.inode(path)?;
                self.files.remove(path);
                let (dir, name) = split(path);
                self.change(&dir, vec![(name, None)]);
            }
            Event::Mkdir(path) => {
                // Calls are recorded after they return, so with threads a directory's own
                // entries can be traced before its creation: never reset what it holds.
                self.dirs.entry(path.clone()).or_default();
                let (dir, name) = split(path);
                self.change(&dir, vec![(name, Some(Entry::Dir))]);
            }
            Event::RemoveTree(path) => {
                // Each file, then each directory deepest first, then the tree itself: a cut
                // may leave any part of it.
                let prefix = format!("{path}/");
                let files: Vec<String> = self
                    .files
                    .keys()
                    .filter(|p| p.starts_with(&prefix))
                    .cloned()
                    .collect();
                for f in files {
                    self.files.remove(&f);
                    let (dir, name) = split(&f);
                    self.change(&dir, vec![(name, None)]);
                }
                let mut dirs: Vec<String> = self
                    .dirs
                    .keys()
                    .filter(|d| d.starts_with(&prefix))
                    .cloned()
                    .collect();
                dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
                dirs.push(path.clone());
                for d in dirs {
                    let (parent, name) = split(&d);
                    self.change(&parent, vec![(name, None)]);
                }
            }
        }
        Ok(())
    }

    /// Writes one possible post-crash state of the model under `out`.
    fn materialize(&self, pick: &mut Pick<'_>, dir: &str, out: &Path) -> io::Result<()> {
        fs::create_dir_all(out)?;
        let Some(d) = self.dirs.get(dir) else {
            return Ok(());
        };
        let mut entries = d.durable.clone();
        for change in &d.pending {
            if pick(2) == 0 {
                apply_change(&mut entries, change.clone());
            }
        }
        for (name, entry) in entries {
            let path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            match entry {
                Entry::Dir => self.materialize(pick, &path, &out.join(&name))?,
                Entry::File(ino) => {
                    let inode = &self.inodes[ino];
                    let mut data = inode.durable.clone();
                    for (offset, bytes) in &inode.pending {
                        match pick(5) {
                            0 | 1 => {}
                            2 => write_at(&mut data, *offset, bytes),
                            3 => {
                                let keep = pick(bytes.len() / 4096 + 1) * 4096;
                                write_at(&mut data, *offset, &bytes[..keep.min(bytes.len())]);
                            }
                            // The size grew, the data did not arrive.
                            _ => {
                                let end = *offset as usize + bytes.len();
                                if data.len() < end {
                                    data.resize(end, 0);
                                }
                            }
                        }
                    }
                    fs::write(out.join(&name), data)?;
                }
            }
        }
        Ok(())
    }
}

fn apply_change(entries: &mut BTreeMap<String, Entry>, change: DirChange) {
    for (name, entry) in change {
        match entry {
            Some(e) => {
                entries.insert(name, e);
            }
            None => {
                entries.remove(&name);
            }
        }
    }
}

/// Writes to `out` (which must not exist) one state the store could be in after a power cut
/// once the first `upto` of `events` had happened, starting from the durable copy `initial`.
pub fn crash_state(
    initial: &Path,
    events: &[Event],
    upto: usize,
    pick: &mut Pick<'_>,
    out: &Path,
) -> io::Result<()> {
    let mut model = Model::load(initial)?;
    for e in &events[..upto.min(events.len())] {
        model.apply(e)?;
    }
    model.materialize(pick, "", out)
}

/// The source of the simulation's choices: `pick(n)` returns a number below `n` (a seeded RNG,
/// so a failing state can be made again).
pub type Pick<'a> = dyn FnMut(usize) -> usize + 'a;

/// Copies the tree at `from` to `to` (which must not exist), files and directories only.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let dest: PathBuf = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn states(events: &[Event], file: &str) -> std::collections::BTreeSet<Option<Vec<u8>>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let init = dir.path().join("init");
        fs::create_dir(&init).expect("mkdir");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut pick = |n: usize| rng.random_range(0..n);
        (0..64)
            .map(|i| {
                let out = dir.path().join(format!("s{i}"));
                crash_state(&init, events, events.len(), &mut pick, &out).expect("state");
                fs::read(out.join(file)).ok()
            })
            .collect()
    }

    #[test]
    fn entries_traced_before_their_directory_keep() {
        // Thread B fsynced its entry in `d` before thread A's creation of `d` was recorded.
        let events = [
            Event::Mkdir("d/sub".into()),
            Event::FsyncDir("d".into()),
            Event::Mkdir("d".into()),
            Event::FsyncDir(String::new()),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let init = dir.path().join("init");
        fs::create_dir(&init).expect("mkdir");
        let mut pick = |_: usize| 0;
        let out = dir.path().join("out");
        crash_state(&init, &events, events.len(), &mut pick, &out).expect("state");
        assert!(out.join("d/sub").is_dir());
    }

    fn write(path: &str, data: &[u8]) -> Event {
        Event::Write {
            path: path.into(),
            offset: 0,
            data: data.to_vec(),
        }
    }

    #[test]
    fn only_fsynced_data_and_entries_survive_for_sure() {
        let safe = [
            Event::Create("a.tmp".into()),
            write("a.tmp", b"x"),
            Event::Fsync("a.tmp".into()),
            Event::Rename {
                from: "a.tmp".into(),
                to: "a".into(),
            },
            Event::FsyncDir(String::new()),
        ];
        assert_eq!(states(&safe, "a"), [Some(b"x".to_vec())].into());
        // Without the directory fsync the rename may be lost; without the file fsync the
        // data may be (the file may even have grown, zero-filled).
        let no_dir = &safe[..4];
        assert_eq!(states(no_dir, "a"), [None, Some(b"x".to_vec())].into());
        let no_file = [&safe[..2], &safe[3..]].concat();
        assert_eq!(
            states(&no_file, "a"),
            [Some(vec![]), Some(vec![0]), Some(b"x".to_vec())].into()
        );
    }
}
