//! Helpers shared by the integration tests, one module per concern. Tests import each helper
//! from the module that holds it (`use crate::common::store::TestStore`), so where it lives is
//! in the `use` line.

pub mod attacker;
pub mod cli;
pub mod guards;
pub mod images;
pub mod mount;
pub mod store;
pub mod sys;
