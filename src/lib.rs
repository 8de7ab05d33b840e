//! rpfs: point-in-time, incremental restore points of virtual machines.
//!
//! Layers, from the inside out (dependencies point inwards only):
//! - [`store`]: the on-disk format and the storage interface all I/O goes through;
//! - [`engine`]: creating, deleting, reading, restoring and checking restore points;
//! - [`inspect`]: what is inside a disk image (partitions, guest filesystems), read through the
//!   image's read interface alone;
//! - [`resource`]: the Azure-shaped JSON resources of collections and points (presentation);
//! - [`vfs`]: the tree the mount shows, as plain Rust (no FUSE types);
//! - [`fuse`]: the fuser adapter and mounting;
//! - `cli` (in the binary): argument parsing, the mount daemon, progress bars and output.
//!
//! Test harnesses (simulated power cuts, fault injection, fuzz entry points) live in
//! `testing`, compiled only with the `testing` feature: the tests and the fuzz crate enable it,
//! a release build holds none of it.

// Product code states why it cannot fail where it insists it cannot (see STYLE).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod engine;
pub mod fuse;
pub mod inspect;
pub mod resource;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vfs;
