//! What is inside a disk image, read from the image alone: its partition table
//! ([`partitions`]), byte ranges of it ([`Window`]), and the guest's filesystems ([`guest`]).
//!
//! Invariants: this layer knows nothing of the store. It reads through [`Image`], which the
//! engine's disk restore points implement, and everything it reads is the guest's, so
//! untrusted: every count and range taken from it is bounded before it is used.

pub mod guest;
mod image;
pub mod partitions;
mod window;

pub use image::Image;
pub use window::Window;
