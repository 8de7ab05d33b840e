//! Finding and opening the store a command works on.
//!
//! Invariants: a command never creates a store by accident (only `rpfs init` does); a missing
//! store is "not found" with the command that makes one; the CLI opens stores without a block
//! cache (each block is read once per command), the mount with one; a store is created private
//! (0700, its parents as the umask says), and a store made before that is tightened by the
//! next open, which says so once on standard error.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rpfs::engine::{Catalog, Engine, InitOptions, OpenOptions};
use rpfs::store::LocalStorage;
use rpfs::store::private::DIR_MODE;

use super::failure::{Failure, exit, failure};

/// The default store directory.
pub fn default_store() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/rpfs");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("rpfs")
}

/// A catalog snapshot; damaged records are named on standard error and left out.
pub fn load_catalog(engine: &Engine) -> Result<Catalog, Failure> {
    let cat = engine.catalog()?;
    for d in &cat.damaged {
        eprintln!("warning: skipping damaged record: {d}");
    }
    Ok(cat)
}

/// `rpfs init`: a new store in `dir` (created private if missing), refused if one is there.
pub fn init(dir: &Path, options: InitOptions) -> Result<Engine, Failure> {
    if dir.join("rpfs.store").exists() {
        return Err(failure(
            exit::EXISTS,
            format!("a store already exists at {}", dir.display()),
        ));
    }
    create_store_dir(dir)?;
    let storage = Arc::new(LocalStorage::new(dir));
    Ok(Engine::init_with(storage, options)?)
}

/// Creates the directory of a new store, private (0700) from its creation; its parents are
/// created as the umask says, like any directory. An existing directory is left for
/// `Engine::init` to check and narrow.
fn create_store_dir(dir: &Path) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        failure(
            exit::FAILURE,
            format!("creating store directory {}: {e}", dir.display()),
        )
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(fail(e)),
        _ => Ok(()),
    }
}

/// The environment variable that sets how long catalog changes wait for the store lock, in
/// seconds (default 30).
const LOCK_WAIT_ENV: &str = "RPFS_LOCK_WAIT";

/// The wait for the store lock: [`LOCK_WAIT_ENV`], else the engine's default.
fn lock_wait() -> Result<Duration, Failure> {
    match std::env::var(LOCK_WAIT_ENV) {
        Err(_) => Ok(OpenOptions::default().lock_wait),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                failure(
                    exit::USAGE,
                    format!("{LOCK_WAIT_ENV}={v:?}: expected seconds, from 0 to 86400"),
                )
            }),
    }
}

pub fn open_store(dir: &Path) -> Result<Engine, Failure> {
    // Every CLI command but the mount reads each block at most once (cat, restore, check,
    // change detection), so a block cache would only cost memory and page faults.
    open_store_with(
        dir,
        OpenOptions {
            cache_bytes: 0,
            ..OpenOptions::default()
        },
    )
}

pub fn open_store_with(dir: &Path, options: OpenOptions) -> Result<Engine, Failure> {
    if !dir.join("rpfs.store").exists() {
        return Err(failure(
            exit::NOT_FOUND,
            format!(
                "no rpfs store at {}; create one with `rpfs init --store {}`",
                dir.display(),
                dir.display()
            ),
        ));
    }
    let options = OpenOptions {
        lock_wait: lock_wait()?,
        ..options
    };
    let engine = Engine::open(Arc::new(LocalStorage::new(dir)), options)?;
    let t = engine.tightened();
    if let Some(why) = &t.unfinished {
        eprintln!(
            "rpfs: warning: store {} is readable by other users and could not be made private \
             ({why}); make it private: chmod -R go-rwx {}",
            dir.display(),
            dir.display()
        );
    } else if t.any() {
        eprintln!(
            "rpfs: store {} was readable by other users; made it private (0700/0600)",
            dir.display()
        );
    }
    Ok(engine)
}
