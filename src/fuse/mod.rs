//! FUSE: the fuser adapter around the [`Vfs`](crate::vfs::Vfs) core ([`RpfsFs`]), and mounting
//! and unmounting it. Every handler has the same shape: open a tracing span, call the core,
//! reply or log-and-return the errno from the one table in `vfs/errno.rs`.
//!
//! Invariants: see `adapter` (one reply per request, writes refused before the core sees
//! them) and `mount` (ready when mounted, clean unmount also of a dead daemon).

mod adapter;
mod mount;

pub use adapter::RpfsFs;
pub use mount::{MountOptions, Mounted, find_mount, mount, unmount};
