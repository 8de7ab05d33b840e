//! Finding and opening the store a command works on.
//!
//! Invariants: a command never creates a store by accident (only `rpfs init` does); a missing
//! store is "not found" with the command that makes one; the CLI opens stores without a block
//! cache (each block is read once per command), the mount with one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rpfs::engine::{Catalog, Engine, OpenOptions};
use rpfs::store::LocalStorage;

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

pub fn open_store(dir: &Path) -> Result<Engine, Failure> {
    // Every CLI command but the mount reads each block at most once (cat, restore, check,
    // change detection), so a block cache would only cost memory and page faults.
    open_store_with(dir, OpenOptions { cache_bytes: 0 })
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
    Ok(Engine::open(Arc::new(LocalStorage::new(dir)), options)?)
}
