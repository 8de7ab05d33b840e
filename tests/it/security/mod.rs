//! A local user must not read, block or redirect what root's rpfs does. Each test plays the
//! attacker of one finding of the security review (issue 15): an unprivileged account (`nobody`,
//! through `setpriv`) on the same host as root's rpfs, which runs with umask 022 over
//! directories that are as open as real ones (0755 above the store, images and targets; see
//! `common::attacker`). One module per area:
//! - `store`: the store's own files (modes, `cat`, locks, deletion on a full store);
//! - `sources`: capture (the reflink clone's window, symlinks swapped in for sources and
//!   configuration files);
//! - `restore`: restore output (modes, symlinked targets, files planted during a restore,
//!   leftovers of a killed one, two disks to one file);
//! - `mount`: the mount under `--allow-other` (raw views, guest owners, logs);
//! - `guest`: what a user can make the daemon cache, and damaged guest inodes;
//! - `records`: records `check` must refuse, and what hooks leave in logs and JSON.

mod guest;
mod mount;
mod records;
mod restore;
mod sources;
mod store;
