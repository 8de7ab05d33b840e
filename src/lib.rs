//! rpfs: point-in-time, incremental restore points of virtual machines.
//!
//! Layers, from the inside out (dependencies point inwards only):
//! - [`store`]: the on-disk format and the storage interface all I/O goes through;
//! - [`engine`]: creating, deleting, reading, restoring and checking restore points;
//! - [`vfs`]: the tree the mount shows, as plain Rust (no FUSE types);
//! - [`fuse`]: the fuser adapter and mounting;
//! - `cli` (in the binary): argument parsing, the mount daemon, progress bars and output.

pub mod engine;
pub mod fuse;
#[doc(hidden)]
pub mod fuzzing;
pub mod store;
pub mod vfs;
