//! The integration tests: one test binary (`cargo test --test it`), one module per area, and the
//! helpers they share in `common`. A test's full name starts with its module path, so a filter
//! runs one area: `cargo test --test it -- vfs::` (or `mount::daemon::`, `crash::`).
//!
//! By tier of the testing pyramid (STYLE.md; the unit tests live in `src/`):
//! - reference-model properties and the fuzz targets replayed: `model`, `dedup_model`,
//!   `fuzz_replay`;
//! - the filesystem core without a kernel, errno by errno: `vfs`;
//! - the command line and the engine behind it: `cli`, `hooks`, `limits`, `incremental`,
//!   `roundtrip`, `schedule`, `repair`, `stats`, `compression`;
//! - real mounts: `mount`, `files`, `partitions`;
//! - crashes, faults and damage: `crashsim`, `dedup_crash`, `crash`, `faults`, `damage`,
//!   `damage_paged`, `hostile`, `recovery`;
//! - a hostile local user against root's rpfs: `security`.
//!
//! Tests that need FUSE or root skip with a note, unless `RPFS_REQUIRE_FUSE=1` (as in CI) makes
//! them fail instead. `scripts/soak.sh` runs `crashsim`, `crash` and `faults` with higher counts.
//! proptest keeps the failing cases it found in `tests/proptest-regressions/<module>.txt` (its
//! default beside a crate root, here this `main.rs`) and replays them first.

mod common;

mod cli;
mod compression;
mod crash;
mod crashsim;
mod damage;
mod damage_paged;
mod dedup_crash;
mod dedup_model;
mod faults;
mod files;
mod fuzz_replay;
mod hooks;
mod hostile;
mod incremental;
mod limits;
mod migrate;
mod model;
mod mount;
mod partitions;
mod recovery;
mod repair;
mod roundtrip;
mod schedule;
mod security;
mod stats;
mod vfs;
