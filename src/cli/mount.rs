//! `rpfs mount` and `rpfs umount`: the mount daemon's life.
//!
//! Without `--foreground`, `rpfs mount` starts a copy of itself as the daemon (a fresh process,
//! so no thread is ever forked), in its own session, logging to a file, and returns once the
//! daemon says the mount is ready or reports why it failed. The daemon (or a foreground mount)
//! serves until the mount is unmounted from outside or it gets SIGINT, SIGTERM or SIGHUP, which
//! unmount it cleanly.
//!
//! Invariants: the daemon's log (hook output and errors go there) is private from its first
//! instant: created 0600 (0640 with `--image-group`'s group) in a directory created 0700 (0750),
//! opened without following a symbolic link, refused unless it is a regular file of ours with
//! one link, and tightened (with a warning) when an existing one is looser. `--image-group` is
//! resolved before anything is started or mounted.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rpfs::engine::OpenOptions;
use rpfs::fuse::{self, MountOptions};
use rpfs::vfs::{Vfs, VfsOptions};

use super::args::MountArgs;
use super::failure::{Failure, exit, failure};

/// Set in the environment of the daemon a background mount starts.
const DAEMON_ENV: &str = "RPFS_DAEMON";
/// The line the daemon prints on standard output once the mount is ready.
const READY: &str = "ready";
/// Threads serving kernel requests: enough that a long `mkdir` and many readers never wait.
const THREADS: usize = 8;
/// Kernel readahead for the mount, in KiB.
const READAHEAD_KB: u32 = 1024;
/// How stale a listing may be: a point made elsewhere shows within this time.
const CATALOG_MAX_AGE: Duration = Duration::from_millis(500);

fn default_log_file() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/log/rpfs/mount.log");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("rpfs/mount.log")
}

/// Resolves `--image-group` (a group name, else a number) to a gid. A group the system does
/// not know is refused, so a typo never mounts with images shared with nobody or everybody.
fn resolve_group(spec: &str) -> Result<u32, Failure> {
    use nix::unistd::{Gid, Group};
    let looked_up = |r: nix::Result<Option<Group>>| {
        r.map_err(|e| failure(exit::FAILURE, format!("looking up group '{spec}': {e}")))
    };
    if let Some(g) = looked_up(Group::from_name(spec))? {
        return Ok(g.gid.as_raw());
    }
    if let Ok(n) = spec.parse::<u32>()
        && let Some(g) = looked_up(Group::from_gid(Gid::from_raw(n)))?
    {
        return Ok(g.gid.as_raw());
    }
    Err(failure(
        exit::USAGE,
        format!(
            "--image-group {spec}: no such group (give a group name or number the system knows)"
        ),
    ))
}

/// Creates the missing directories of `dir`, each 0700, or 0750 owned by group `group`.
fn create_log_dir(dir: &Path, group: Option<u32>) -> Result<(), Failure> {
    let fail = |d: &Path, e: &dyn std::fmt::Display| {
        failure(exit::FAILURE, format!("log directory {}: {e}", d.display()))
    };
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(p).is_ok() {
            break;
        }
        missing.push(p);
        d = p.parent();
    }
    for p in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(p) {
            Ok(()) => {}
            // Made meanwhile by someone else: used as it is, like one that was there.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(p, &e)),
        }
        if let Some(gid) = group {
            nix::unistd::chown(p, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| fail(p, &e))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o750))
                .map_err(|e| fail(p, &e))?;
        }
    }
    if !std::fs::metadata(dir).map_err(|e| fail(dir, &e))?.is_dir() {
        return Err(fail(dir, &"not a directory"));
    }
    Ok(())
}

/// Opens the daemon's log for appending (see the module's invariants): 0600, or 0640 owned by
/// group `group`.
fn open_log(log: &Path, group: Option<u32>) -> Result<File, Failure> {
    let fail = |e: &dyn std::fmt::Display| {
        failure(exit::FAILURE, format!("log file {}: {e}", log.display()))
    };
    // A bare file name's parent is "": the working directory, which exists.
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_log_dir(dir, group)?;
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        // Private from its first instant; the group (if any) is given below, once it is ours.
        .mode(0o600)
        // O_NONBLOCK: a FIFO planted at the name fails at once instead of hanging the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(log)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => fail(&"a symbolic link; refused (give --log-file a real path)"),
            Some(libc::ENXIO) => fail(&"a FIFO, not a regular file; refused"),
            _ => fail(&e),
        })?;
    let md = file.metadata().map_err(|e| fail(&e))?;
    if !md.file_type().is_file() {
        return Err(fail(&"not a regular file; refused"));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(fail(&format!(
            "owned by uid {}, not by this user (uid {me}); refused",
            md.uid()
        )));
    }
    if md.nlink() != 1 {
        return Err(fail(&format!(
            "has {} hard links; refused (another name could expose it)",
            md.nlink()
        )));
    }
    let want = if group.is_some() { 0o640 } else { 0o600 };
    let was = md.mode() & 0o7777;
    let regroup = group.is_some_and(|g| g != md.gid());
    if was != want || regroup {
        // Remove what is too much first (the old group's bits too, when the group changes),
        // so no one reads the log in between who may not read it before or after.
        let first = if regroup {
            was & want & 0o600
        } else {
            was & want
        };
        file.set_permissions(std::fs::Permissions::from_mode(first))
            .map_err(|e| fail(&e))?;
        if let Some(gid) = group.filter(|_| regroup) {
            nix::unistd::fchown(&file, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| fail(&e))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(want))
            .map_err(|e| fail(&e))?;
        if was & !want != 0 {
            eprintln!(
                "warning: log file {} was {was:04o}, readable beyond its owner{}; now {want:04o}",
                log.display(),
                if group.is_some() { " and group" } else { "" }
            );
        }
    }
    Ok(file)
}

fn check_mountpoint(mp: &Path) -> Result<PathBuf, Failure> {
    let mp = std::path::absolute(mp)
        .map_err(|e| failure(exit::FAILURE, format!("mount point {}: {e}", mp.display())))?;
    if fuse::find_mount(&mp).ok().flatten().is_some() {
        return Err(failure(
            exit::EXISTS,
            format!(
                "{} is already an rpfs mount; unmount it first (`rpfs umount`)",
                mp.display()
            ),
        ));
    }
    match std::fs::metadata(&mp) {
        Ok(m) if m.is_dir() => Ok(mp),
        Ok(_) => Err(failure(
            exit::USAGE,
            format!("mount point {} is not a directory", mp.display()),
        )),
        Err(e) => Err(failure(
            exit::NOT_FOUND,
            format!(
                "mount point {}: {e}; create the directory first",
                mp.display()
            ),
        )),
    }
}

/// glibc gives each thread that allocates an arena of its own, which keeps what it frees: with
/// the daemon's many threads that multiplies its memory well past the ceilings its caches keep
/// (README, security model). glibc reads `MALLOC_ARENA_MAX` only at start, and this crate has no
/// `unsafe` for `mallopt`, so a mount without it set runs itself again with two arenas (which
/// cost no measurable speed here). If that exec fails, the mount goes on as it is.
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MALLOC_ARENA_MAX";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let e = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "2")
        .exec();
    tracing::debug!("running the mount with {VAR}=2 failed, going on without: {e}");
}

/// `rpfs mount`.
pub fn mount(store: &Path, args: MountArgs) -> Result<(), Failure> {
    limit_malloc_arenas();
    let store = std::path::absolute(store)
        .map_err(|e| failure(exit::FAILURE, format!("store {}: {e}", store.display())))?;
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    let image_gid = args.image_group.as_deref().map(resolve_group).transpose()?;
    let daemon = std::env::var_os(DAEMON_ENV).is_some();
    if !args.foreground && !daemon {
        return start_daemon(&store, &mountpoint, &args, image_gid);
    }
    if daemon {
        // Leave the caller's session (closing its terminal must not hang us up) and its
        // working directory (which would stay busy).
        let _ = nix::unistd::setsid();
        let _ = std::env::set_current_dir("/");
    }
    let mut ready = false;
    let result = serve(&store, &mountpoint, &args, image_gid, daemon, &mut ready);
    if daemon
        && !ready
        && let Err(f) = &result
    {
        // The parent reads our standard output until it says ready or why not; after ready
        // nobody reads it, and the log has the error.
        let _ = writeln!(
            std::io::stdout(),
            "error {} {}",
            f.code,
            f.message.replace('\n', " ")
        );
    }
    result
}

/// Held while checking a mount point and mounting on it, so two mounts cannot stack there.
fn lock_mountpoint(mp: &Path) -> Result<std::fs::File, Failure> {
    let dir = std::fs::File::open(mp)
        .map_err(|e| failure(exit::FAILURE, format!("mount point {}: {e}", mp.display())))?;
    dir.lock().map_err(|e| {
        failure(
            exit::FAILURE,
            format!("locking mount point {}: {e}", mp.display()),
        )
    })?;
    Ok(dir)
}

fn serve(
    store: &Path,
    mountpoint: &Path,
    args: &MountArgs,
    image_gid: Option<u32>,
    daemon: bool,
    ready: &mut bool,
) -> Result<(), Failure> {
    let engine = super::store::open_store_with(
        store,
        OpenOptions {
            cache_bytes: usize::try_from(args.cache_size).unwrap_or(usize::MAX),
            ..OpenOptions::default()
        },
    )?;
    let scheduler_engine = engine.clone();
    let vfs = Vfs::new(
        engine,
        VfsOptions {
            allow_delete: args.allow_delete,
            allow_other: args.allow_other,
            owner_uid: nix::unistd::getuid().as_raw(),
            owner_gid: nix::unistd::getgid().as_raw(),
            image_gid,
            catalog_max_age: CATALOG_MAX_AGE,
        },
    )
    .map_err(|e| failure(exit::FAILURE, format!("reading the store: {e}")))?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| failure(exit::FAILURE, format!("installing signal handlers: {e}")))?;
    let mount_lock = lock_mountpoint(mountpoint)?;
    check_mountpoint(mountpoint)?;
    let mounted = fuse::mount(
        Arc::new(vfs),
        &MountOptions {
            mountpoint: mountpoint.to_path_buf(),
            allow_other: args.allow_other,
            threads: THREADS,
            readahead_kb: READAHEAD_KB,
        },
    )
    .map_err(|e| {
        failure(
            exit::FAILURE,
            format!("mounting at {}: {e}", mountpoint.display()),
        )
    })?;
    drop(mount_lock);
    let scheduler = (!args.no_schedule).then(|| Scheduler::start(scheduler_engine));
    std::thread::spawn(move || {
        for sig in signals.forever() {
            tracing::info!("signal {sig}: unmounting");
            let _ = stop_tx.try_send(());
        }
    });
    tracing::info!("mounted {} at {}", store.display(), mountpoint.display());
    if daemon {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{READY}").and_then(|()| out.flush());
        // Nobody reads standard output any more: point it at /dev/null so a stray write can
        // never fail.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2_stdout(&null);
        }
        *ready = true;
    } else {
        eprintln!(
            "rpfs: mounted {} at {}; Ctrl-C or `rpfs umount {}` unmounts",
            store.display(),
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let served = mounted.wait(&stop_rx);
    // A scheduled creation in flight finishes before the daemon exits.
    drop(scheduler);
    served.map_err(|e| {
        failure(
            exit::FAILURE,
            format!("serving {}: {e}", mountpoint.display()),
        )
    })?;
    tracing::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// How often the mount daemon looks for due schedules.
const SCHEDULE_TICK: Duration = Duration::from_secs(1);

/// Runs the store's due schedules while the mount lives (every [`SCHEDULE_TICK`]); stops,
/// after any run in flight, when dropped.
struct Scheduler {
    stop: crossbeam_channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scheduler {
    fn start(engine: rpfs::engine::Engine) -> Scheduler {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("rpfs-schedule".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(SCHEDULE_TICK)
                {
                    if let Err(e) = engine.run_due() {
                        tracing::warn!("running due schedules: {e}");
                    }
                }
            })
            .map_err(|e| tracing::error!("starting the scheduler: {e}"))
            .ok();
        Scheduler { stop, thread }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_daemon(
    store: &Path,
    mountpoint: &Path,
    args: &MountArgs,
    image_gid: Option<u32>,
) -> Result<(), Failure> {
    let log = args.log_file.clone().unwrap_or_else(default_log_file);
    let log_file = open_log(&log, image_gid)?;
    let exe = std::env::current_exe()
        .map_err(|e| failure(exit::FAILURE, format!("finding the rpfs executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(store)
        .arg("mount")
        .arg(mountpoint)
        .arg("--foreground")
        .arg("--cache-size")
        .arg(args.cache_size.to_string());
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if args.allow_delete {
        cmd.arg("--allow-delete");
    }
    // As the user gave it: the daemon resolves it as this process did.
    if let Some(group) = &args.image_group {
        cmd.arg("--image-group").arg(group);
    }
    if args.no_schedule {
        cmd.arg("--no-schedule");
    }
    if std::env::var_os("RPFS_LOG").is_none() {
        cmd.env("RPFS_LOG", "info");
    }
    let mut child = cmd
        .env(DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| failure(exit::FAILURE, format!("starting the mount daemon: {e}")))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let line = line.trim();
    if line == READY {
        super::output::write_line(format_args!(
            "mounted {} at {} (daemon pid {}, log {})",
            store.display(),
            mountpoint.display(),
            child.id(),
            log.display()
        ));
        return Ok(());
    }
    let _ = child.wait();
    match line.strip_prefix("error ").and_then(|r| r.split_once(' ')) {
        Some((code, message)) => Err(failure(code.parse().unwrap_or(exit::FAILURE), message)),
        None => Err(failure(
            exit::FAILURE,
            format!(
                "the mount daemon stopped before the mount was ready; see {}",
                log.display()
            ),
        )),
    }
}

/// `rpfs umount`.
pub fn umount(mountpoint: &Path) -> Result<(), Failure> {
    match fuse::unmount(mountpoint) {
        Ok(()) => {
            super::output::write_line(format_args!("unmounted {}", mountpoint.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(failure(exit::NOT_FOUND, e.to_string()))
        }
        Err(e) if e.to_string().contains("is busy") => Err(failure(exit::BUSY, e.to_string())),
        Err(e) => Err(failure(
            exit::FAILURE,
            format!("unmounting {}: {e}", mountpoint.display()),
        )),
    }
}
