//! Test harnesses, compiled only with the `testing` feature (the integration tests and the fuzz
//! crate enable it; `cargo build --release` leaves it out): simulated power cuts over a traced
//! [`FileOps`](crate::store::fileops::FileOps) ([`crashsim`]), a fault-injecting
//! [`Storage`](crate::store::storage::Storage) decorator ([`fault`]), and the fuzz targets'
//! entry points ([`fuzzing`]).
//!
//! Invariant: nothing outside this module names anything inside it.

#![allow(
    clippy::expect_used,
    reason = "test harnesses stop loudly on a broken fixture"
)]

pub mod crashsim;
pub mod fault;
pub mod fuzzing;
