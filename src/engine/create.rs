//! Creating a VM restore point.
//!
//! Order: every check (name, limits, disk types, sources) under the VM's lock, before anything
//! is written; then `pending.json`; then the configuration capture, pre-script (freeze), capture
//! of every included disk, post-script (thaw); then each disk's pack and map; then the captured
//! configuration; then the point record, which commits the point.
//!
//! Capture: where a source sits on a filesystem with reflinks (XFS, btrfs), each disk is cloned
//! while frozen and the VM is thawed at once, so the freeze lasts as long as the clones take;
//! otherwise the disks are ingested while frozen. The post-script runs exactly once whenever the
//! pre-script was attempted, including when capture fails.
//!
//! A clone holds a whole disk: it is an unnamed file of mode 0600 from its first instant,
//! cloned from the descriptor the source was opened and checked through (see
//! `reflink_clone`). Sources and the configuration file are opened as they were when the VM
//! was added (`source.rs`): through no symbolic link they did not have then.
//!
//! Consistency recorded: `ApplicationConsistent` (or `FileSystemConsistent` when that was asked
//! for) when both scripts succeeded; otherwise the mode requested. A failing pre-script fails the
//! creation, committing nothing, unless crash consistency was requested.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use uuid::Uuid;

use super::Engine;
use super::catalog;
use super::clock::now_rfc3339;
use super::error::{Error, Result};
use super::hooks::{self, Outcome, script_env};
use super::ingest::{self, Previous};
use super::names;
use super::paged;
use super::pending;
use super::policy;
use super::progress::Progress;
use super::source::{self, Expect, Source, SourceKind};
use crate::store::records::{
    CollectionRecord, ConfigSource, ConsistencyMode, DiskPointRecord, DiskSpec, ExcludedDisk,
    PendingKind, PendingOp, PointRecord, VmRecord,
};
use crate::store::{envelope, format, kind, layout, read_record, write_record};

/// The consistency a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Application,
    FileSystem,
    Crash,
}

impl Consistency {
    /// The request matching a recorded mode.
    pub fn from_mode(mode: ConsistencyMode) -> Consistency {
        match mode {
            ConsistencyMode::ApplicationConsistent => Consistency::Application,
            ConsistencyMode::FileSystemConsistent => Consistency::FileSystem,
            ConsistencyMode::CrashConsistent => Consistency::Crash,
        }
    }

    /// The mode this request asks for.
    pub fn mode(self) -> ConsistencyMode {
        match self {
            Consistency::Application => ConsistencyMode::ApplicationConsistent,
            Consistency::FileSystem => ConsistencyMode::FileSystemConsistent,
            Consistency::Crash => ConsistencyMode::CrashConsistent,
        }
    }
}

/// A request to create a restore point.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub collection: String,
    pub name: String,
    /// Names of disks to leave out; empty: the collection's default exclusions.
    pub exclude: Vec<String>,
    /// `None`: the collection's default, else application consistency when the VM has a
    /// pre-script, else crash consistency.
    pub consistency: Option<Consistency>,
}

/// What a creation did.
#[derive(Debug, Clone)]
pub struct CreateOutcome {
    pub point: PointRecord,
    pub collection: String,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub elapsed: Duration,
    /// How long the VM was frozen (pre-script start to post-script end), when scripts ran.
    pub frozen: Option<Duration>,
    /// Disks captured from reflink clones.
    pub cloned_disks: Vec<String>,
    /// Things the user should know that did not fail the creation.
    pub warnings: Vec<String>,
}

/// Everything decided before the creation writes anything.
struct Plan {
    vm: VmRecord,
    collection_id: Uuid,
    collection: String,
    name: String,
    point_id: Uuid,
    seq: u64,
    included: Vec<DiskSpec>,
    excluded: Vec<ExcludedDisk>,
    requested: Consistency,
    /// Previous disk restore point per included disk (same order), for change detection.
    previous: Vec<Option<Uuid>>,
}

fn clone_path(source: &Path, point: Uuid) -> Option<PathBuf> {
    let name = source.file_name()?.to_string_lossy();
    Some(source.with_file_name(format!(".{name}.rpfs-clone-{}", point.simple())))
}

impl Plan {
    fn env(&self, phase: &str) -> Vec<(&'static str, String)> {
        script_env(
            &self.vm,
            &self.collection,
            Some(self.collection_id),
            &self.name,
            self.point_id,
            phase,
        )
    }
}

impl Engine {
    /// Creates a restore point; see the module documentation for the order of events.
    pub fn create_point(
        &self,
        req: &CreateRequest,
        progress: &dyn Progress,
    ) -> Result<CreateOutcome> {
        let started = Instant::now();
        names::validate("restore point", &req.name)?;
        let cat = self.catalog()?;
        let coll = cat.collection(&req.collection)?;
        let vm = cat
            .vm_by_id(coll.vm_id)
            .ok_or_else(|| Error::NotFound {
                what: "VM of collection",
                name: req.collection.clone(),
                hint: String::new(),
            })?
            .clone();
        policy::refuse_uniform_scale_set(&vm)?;
        let _lock = self.vm_lock(&vm)?;
        let plan = self.plan(req, vm.id, coll.id)?;

        let mut op = PendingOp {
            op: PendingKind::Create,
            point_id: plan.point_id,
            clones: plan
                .included
                .iter()
                .filter_map(|d| clone_path(&d.path, plan.point_id))
                .collect(),
            started: now_rfc3339(),
            frozen: false,
            collection: plan.collection.clone(),
            point: plan.name.clone(),
            gc_owed: false,
        };
        let earlier = pending::begin(&self.shared, vm.id, &mut op)?;
        let creating = self.shared.creation_lock();
        let result = creating.and_then(|creating| {
            let r = self.capture_and_commit(&plan, &mut op, progress, started);
            // Before ending the operation: a sweep (of a failed attempt's packs) needs it.
            drop(creating);
            r
        });
        // Clones are unnamed, or unlinked at once: a name is only left here when that unlink
        // failed. `remove_file` unlinks the name itself and never follows a link.
        for c in &op.clones {
            let _ = std::fs::remove_file(c);
        }
        // A failed attempt may have left packs and maps: collect them. If that fails the marker
        // stays, and the next operation on the VM or the next open finishes the job.
        match result {
            Ok(mut out) => {
                out.warnings.splice(0..0, earlier.warnings);
                if let Ok(done) = pending::end(&self.shared, vm.id, &mut op, false) {
                    out.warnings.extend(done.warnings);
                }
                if self.shared.header.version == format::PAGED {
                    paged::after_creation(&self.shared);
                }
                Ok(out)
            }
            Err(e) => {
                let _ = pending::end(&self.shared, vm.id, &mut op, true);
                Err(e)
            }
        }
    }

    /// All checks, on records re-read under the VM's lock; nothing is written.
    fn plan(&self, req: &CreateRequest, vm_id: Uuid, collection_id: Uuid) -> Result<Plan> {
        let storage = &*self.shared.storage;
        // These are the facts the decision rests on: a `vm remove` or `collection delete` may
        // have run between the catalog read and the lock.
        let vm = &catalog::load_vm(storage, vm_id)?.ok_or_else(|| Error::NotFound {
            what: "VM of collection",
            name: req.collection.clone(),
            hint: "; it was removed meanwhile".into(),
        })?;
        let collection: CollectionRecord = match read_record(
            storage,
            &layout::collection(vm_id, collection_id),
            kind::COLLECTION,
        ) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotFound {
                    what: "collection",
                    name: req.collection.clone(),
                    hint: "; it was deleted meanwhile".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        // What the request leaves unsaid, the collection's defaults say.
        let exclude = if req.exclude.is_empty() {
            &collection.defaults.exclude_disks
        } else {
            &req.exclude
        };
        let consistency = req
            .consistency
            .or(collection.defaults.consistency.map(Consistency::from_mode));
        let points = catalog::load_points(storage, vm.id)?;
        if points
            .iter()
            .any(|p| p.collection_id == collection_id && p.name == req.name)
        {
            return Err(Error::Exists {
                what: "restore point",
                name: format!("{}/{}", req.collection, req.name),
            });
        }
        policy::refuse_over_limit(vm, points.len())?;
        if let Some(min) = vm.min_interval_secs {
            policy::refuse_too_soon(vm, &points, Duration::from_secs(min), self.now())?;
        }
        for name in exclude {
            if !vm.disks.iter().any(|d| &d.name == name) {
                return Err(Error::NotFound {
                    what: "disk to exclude",
                    name: name.clone(),
                    hint: format!("; VM '{}' has disks {}", vm.name, disk_names(vm)),
                });
            }
        }
        let (included, excluded): (Vec<_>, Vec<_>) = vm
            .disks
            .iter()
            .cloned()
            .partition(|d| !exclude.contains(&d.name));
        if included.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "every disk of VM '{}' is excluded; a restore point needs at least one disk",
                vm.name
            )));
        }
        policy::refuse_unsupported_disks(vm, &included)?;
        let requested = match consistency {
            Some(c) => c,
            None if vm.pre_script.is_some() => Consistency::Application,
            None => Consistency::Crash,
        };
        if requested != Consistency::Crash && vm.pre_script.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{} consistency needs a pre-script to freeze VM '{}', and it has none; \
                 add one with `rpfs vm add --pre-script` or ask for --consistency crash",
                requested.mode().as_str(),
                vm.name
            )));
        }
        let infos = included
            .iter()
            .map(|d| source::inspect(&d.name, &d.path, Expect::from_record(d.added_as), &vm.name))
            .collect::<Result<Vec<_>>>()?;
        let previous: Vec<Option<Uuid>> = included
            .iter()
            .map(|d| {
                points
                    .iter()
                    .rev()
                    .find_map(|p| p.disks.iter().find(|x| x.disk_id == d.id).map(|x| x.drp_id))
            })
            .collect();
        let free = self
            .shared
            .storage
            .space()
            .map_err(Error::io("reading the free space of the store"))?
            .free_bytes;
        let has_previous: Vec<bool> = previous.iter().map(Option::is_some).collect();
        policy::refuse_without_space(free, &req.name, &included, &infos, &has_previous)?;
        Ok(Plan {
            vm: vm.clone(),
            collection_id,
            collection: req.collection.clone(),
            name: req.name.clone(),
            point_id: Uuid::new_v4(),
            seq: points.last().map_or(1, |p| p.seq + 1),
            excluded: excluded
                .iter()
                .map(|d| ExcludedDisk {
                    disk_id: d.id,
                    name: d.name.clone(),
                })
                .collect(),
            included,
            requested,
            previous,
        })
    }

    fn capture_config(&self, plan: &Plan) -> Result<Vec<u8>> {
        match &plan.vm.config {
            ConfigSource::None => Ok(Vec::new()),
            ConfigSource::File(path) => {
                let expect = Expect::from_record(plan.vm.config_added_as);
                let mut opened = source::open_config(path, expect, &plan.vm.name)?;
                let mut config = Vec::new();
                opened
                    .file
                    .read_to_end(&mut config)
                    .map_err(Error::io(format!(
                        "reading the configuration file {} of VM '{}'",
                        path.display(),
                        plan.vm.name
                    )))?;
                Ok(config)
            }
            ConfigSource::Command(cmd) => {
                let timeout = Duration::from_secs(plan.vm.script_timeout_secs);
                match hooks::run(cmd, &plan.env("config"), timeout) {
                    Outcome::Success(out) => Ok(out),
                    Outcome::Failed(why) => Err(Error::Script(format!(
                        "configuration command of VM '{}' {why}; nothing was committed",
                        plan.vm.name
                    ))),
                }
            }
        }
    }

    fn capture_and_commit(
        &self,
        plan: &Plan,
        op: &mut PendingOp,
        progress: &dyn Progress,
        started: Instant,
    ) -> Result<CreateOutcome> {
        let config = self.capture_config(plan)?;
        let timeout = Duration::from_secs(plan.vm.script_timeout_secs);
        flush_sources(plan);
        let mut warnings = Vec::new();
        if plan.vm.pre_script.is_some() && plan.vm.post_script.is_some() {
            // From here until the post-script ran, a crash must not leave the VM frozen.
            pending::set_frozen(&self.shared, plan.vm.id, op, true)?;
        }
        let freeze_start = Instant::now();

        let pre_ok = match &plan.vm.pre_script {
            None => None,
            Some(cmd) => match hooks::run(cmd, &plan.env("pre"), timeout) {
                Outcome::Success(_) => Some(true),
                Outcome::Failed(why) if plan.requested == Consistency::Crash => {
                    warnings.push(format!(
                        "pre-script {why}; continuing crash-consistent as requested"
                    ));
                    Some(false)
                }
                Outcome::Failed(why) => {
                    // Thaw whatever the pre-script may have frozen before giving up.
                    let _ = self.run_post(plan, op, timeout);
                    return Err(Error::Script(format!(
                        "pre-script of VM '{}' {why}; nothing was committed",
                        plan.vm.name
                    )));
                }
            },
        };

        // Capture: clone what can be cloned, then thaw at once if everything was cloned.
        let mut post: Option<Result<(), String>> = None;
        let mut frozen = None;
        let captured = self.capture_sources(plan);
        let all_cloned = captured
            .as_ref()
            .is_ok_and(|c| c.iter().all(|(_, cloned)| *cloned));
        if all_cloned || captured.is_err() {
            post = Some(self.run_post(plan, op, timeout));
            frozen = Some(freeze_start.elapsed());
        }
        let ingested = captured.and_then(|sources| {
            let total = sources.iter().map(|(s, _)| s.info.size).sum();
            progress.begin(&format!("{}/{}", plan.collection, plan.vm.name), total);
            let r = self.ingest_all(plan, &sources, progress);
            progress.end();
            r.map(|i| (i, sources))
        });
        if post.is_none() {
            post = Some(self.run_post(plan, op, timeout));
            frozen = Some(freeze_start.elapsed());
        }
        let (ingested, sources) = ingested?;
        let post_ok = match post {
            Some(Err(why)) => {
                warnings.push(format!(
                    "post-script {why}; VM '{}' may still be frozen",
                    plan.vm.name
                ));
                false
            }
            _ => true,
        };
        if plan.vm.pre_script.is_none() && plan.vm.post_script.is_none() {
            frozen = None;
        }

        let consistency_mode = match pre_ok {
            Some(true) if post_ok => match plan.requested {
                Consistency::FileSystem => ConsistencyMode::FileSystemConsistent,
                _ => ConsistencyMode::ApplicationConsistent,
            },
            _ => plan.requested.mode(),
        };

        let storage = &*self.shared.storage;
        let config_key = layout::point_config(plan.vm.id, plan.point_id);
        storage
            .put(&config_key, &envelope::seal(kind::CONFIG, &config))
            .map_err(Error::io(format!("publishing {config_key}")))?;
        let disks: Vec<DiskPointRecord> = plan
            .included
            .iter()
            .zip(&ingested)
            .map(|(d, (drp, i))| DiskPointRecord {
                drp_id: *drp,
                disk_id: d.id,
                name: d.name.clone(),
                lun: d.lun,
                size: i.size,
                source: d.path.clone(),
                new_blocks: i.new_blocks,
                stored_bytes: i.stored_bytes,
                has_pack: i.has_pack,
                found_pages: i.found_pages,
            })
            .collect();
        let point = PointRecord {
            id: plan.point_id,
            name: plan.name.clone(),
            collection_id: plan.collection_id,
            vm_id: plan.vm.id,
            seq: plan.seq,
            created: humantime::format_rfc3339_millis(self.now()).to_string(),
            vm_name: plan.vm.name.clone(),
            consistency_mode,
            disks,
            excluded: plan.excluded.clone(),
            config_len: config.len() as u64,
            block_size: self.shared.header.block_size,
        };
        let point_key = layout::point(plan.vm.id, plan.point_id);
        write_record(storage, &point_key, kind::POINT, &point)
            .map_err(Error::io(format!("publishing {point_key}")))?;

        Ok(CreateOutcome {
            collection: plan.collection.clone(),
            bytes_read: ingested.iter().map(|(_, i)| i.bytes_read).sum(),
            bytes_stored: ingested.iter().map(|(_, i)| i.stored_bytes).sum(),
            elapsed: started.elapsed(),
            frozen,
            cloned_disks: sources
                .iter()
                .zip(&plan.included)
                .filter(|((_, cloned), _)| *cloned)
                .map(|(_, d)| d.name.clone())
                .collect(),
            warnings,
            point,
        })
    }

    /// Runs the post-script (if any), then clears the marker's freeze record.
    fn run_post(&self, plan: &Plan, op: &mut PendingOp, timeout: Duration) -> Result<(), String> {
        let outcome = match &plan.vm.post_script {
            None => Ok(()),
            Some(cmd) => match hooks::run(cmd, &plan.env("post"), timeout) {
                Outcome::Success(_) => Ok(()),
                Outcome::Failed(why) => Err(why),
            },
        };
        if op.frozen {
            // Failing to record the thaw only makes recovery run the post-script once more.
            let _ = pending::set_frozen(&self.shared, plan.vm.id, op, false);
        }
        outcome
    }

    /// Opens every included source, through a reflink clone where the filesystem allows one.
    /// Returns each source with whether it is a clone.
    fn capture_sources(&self, plan: &Plan) -> Result<Vec<(Source, bool)>> {
        let mut out = Vec::new();
        for d in &plan.included {
            let expect = Expect::from_record(d.added_as);
            let source = Source::open(&d.name, &d.path, expect, &plan.vm.name)?;
            let clone = match source.info.kind {
                SourceKind::File => reflink_clone(&source, plan.point_id),
                SourceKind::BlockDevice => None,
            };
            match clone {
                Some(c) => out.push((source.with_clone(c), true)),
                None => out.push((source, false)),
            }
        }
        Ok(out)
    }

    /// Ingests every included disk, all at once: one disk's reads overlap another's hashing
    /// and compression (they share the machine's cores).
    fn ingest_all(
        &self,
        plan: &Plan,
        sources: &[(Source, bool)],
        progress: &dyn Progress,
    ) -> Result<Vec<(Uuid, ingest::Ingested)>> {
        if self.shared.header.version == format::PAGED {
            return self.ingest_paged(plan, sources, progress);
        }
        let one = |d: &DiskSpec, prev: &Option<Uuid>, src: &Source| {
            let previous = match prev {
                Some(drp) => Some(Previous::load(
                    &self.shared,
                    plan.vm.id,
                    d.id,
                    &d.name,
                    *drp,
                )?),
                None => None,
            };
            let drp = Uuid::new_v4();
            let readers = ingest::READERS.div_ceil(sources.len());
            let job = ingest::DiskJob {
                vm: plan.vm.id,
                disk: d.id,
                drp,
                source: src,
                prev: previous.as_ref(),
                readers,
            };
            let i = ingest::ingest(&self.shared, &job, progress)?;
            Ok((drp, i))
        };
        each_disk(plan, sources, one)
    }
}

/// Runs `one` for every included disk (with its previous point and source) at once: one disk's
/// reads overlap another's hashing and compression.
fn each_disk<T: Send>(
    plan: &Plan,
    sources: &[(Source, bool)],
    one: impl Fn(&DiskSpec, &Option<Uuid>, &Source) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let one = &one;
    std::thread::scope(|scope| {
        let jobs: Vec<_> = plan
            .included
            .iter()
            .zip(&plan.previous)
            .zip(sources)
            .map(|((d, prev), (src, _))| scope.spawn(move || one(d, prev, src)))
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join().unwrap_or_else(|_| {
                    Err(Error::Io {
                        context: "ingesting a disk".into(),
                        source: std::io::Error::other("the ingest thread panicked"),
                    })
                })
            })
            .collect()
    })
}

impl Engine {
    /// Format 2's [`Engine::ingest_all`]: the same, through the dedup index.
    fn ingest_paged(
        &self,
        plan: &Plan,
        sources: &[(Source, bool)],
        progress: &dyn Progress,
    ) -> Result<Vec<(Uuid, ingest::Ingested)>> {
        let index = paged::index::IndexSet::open(&*self.shared.storage);
        let one = |d: &DiskSpec, prev: &Option<Uuid>, src: &Source| {
            let previous = match prev {
                Some(drp) => Some(paged::ingest::previous(
                    &self.shared,
                    plan.vm.id,
                    d.id,
                    *drp,
                )?),
                None => None,
            };
            let drp = Uuid::new_v4();
            let job = paged::ingest::DiskJob {
                vm: plan.vm.id,
                disk: d.id,
                drp,
                source: src,
                prev: previous.as_ref(),
                index: &index,
                readers: ingest::READERS.div_ceil(sources.len()),
            };
            let i = paged::ingest::ingest(&self.shared, &job, progress)?;
            Ok((drp, i.ingested))
        };
        each_disk(plan, sources, one)
    }
}

/// Writes back what the host has cached dirty for each source, so that cloning it while the VM
/// is frozen does not wait for that writeback (a reflink clone flushes its source first).
/// Best effort: a source that cannot be flushed is captured all the same.
fn flush_sources(plan: &Plan) {
    for d in &plan.included {
        let expect = Expect::from_record(d.added_as);
        if let Ok(o) = source::open_path(&d.path, expect, &plan.vm.name, "") {
            let _ = o.file.sync_data();
        }
    }
}

/// A reflink clone of `source`, made from the descriptor it was opened (and checked) through,
/// or `None` where its filesystem cannot clone it. The clone is private from its first instant
/// and never has a name anyone can open: an unnamed O_TMPFILE file of mode 0600 in the source's
/// directory (a clone must be on the source's filesystem), gone with its descriptor. Where
/// O_TMPFILE is not supported, a new file of mode 0600 is created exclusively, without following
/// a link, under the name the operation marker lists, and unlinked before anything is cloned
/// into it.
fn reflink_clone(source: &Source, point: Uuid) -> Option<File> {
    let dir_path = source.path.parent()?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir_path)
        .ok()?;
    let private = Mode::from_bits_truncate(0o600);
    let unnamed = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_EXCL | OFlag::O_CLOEXEC;
    let clone = match openat(&dir, ".", unnamed, private) {
        Ok(fd) => File::from(fd),
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
            let name = clone_path(&source.path, point)?;
            let name = name.file_name()?;
            let named = OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_RDWR
                | OFlag::O_CLOEXEC;
            let fd = openat(&dir, name, named, private).ok()?;
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).ok()?;
            File::from(fd)
        }
        Err(_) => return None,
    };
    reflink_copy::reflink_file(source.file()?, &clone).ok()?;
    Some(clone)
}

fn disk_names(vm: &VmRecord) -> String {
    vm.disks
        .iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
