//! rpfs: point-in-time, incremental restore points of virtual machines.
//!
//! Layers, from the inside out (dependencies point inwards only):
//! - [`store`]: the on-disk format and the storage interface all I/O goes through;
//! - [`engine`]: creating, deleting, reading, restoring and checking restore points;
//! - `cli` (in the binary): argument parsing, progress bars and output.

pub mod engine;
pub mod store;
