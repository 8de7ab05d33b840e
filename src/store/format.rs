//! The store as a whole: its format name and version (in `rpfs.store`), and the block sizes a
//! store may use. Each file format keeps its own version beside its layout (`pack.rs`,
//! `blockmap.rs`, `envelope.rs`).
//!
//! Invariants: a store's block size never changes after `init`; a build opens only the store
//! format version it writes, and refuses any other by its version rather than misread it.

/// The format name in every store header.
pub const FORMAT: &str = "rpfs";
/// Store format version written (and the only one read) by this build.
pub const VERSION: u32 = 1;
/// Block size of a new store unless asked otherwise.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;
/// Smallest and largest block sizes a store may use.
pub const BLOCK_SIZE_RANGE: (u32, u32) = (4 << 10, 4 << 20);

/// `bytes` as a block size: a power of two within [`BLOCK_SIZE_RANGE`], or why not.
pub fn check_block_size(bytes: u64) -> Result<u32, String> {
    let (lo, hi) = BLOCK_SIZE_RANGE;
    match u32::try_from(bytes) {
        Ok(b) if b.is_power_of_two() && (lo..=hi).contains(&b) => Ok(b),
        _ => Err(format!(
            "block size {bytes} is not a power of two between {} KiB and {} MiB",
            lo >> 10,
            hi >> 20
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_powers_of_two_in_range() {
        for ok in [4096, 65536, 4 << 20] {
            assert_eq!(check_block_size(ok), Ok(ok as u32));
        }
        for bad in [0, 2048, 4097, 8 << 20, 3 << 12, u64::from(u32::MAX) + 1] {
            assert!(check_block_size(bad).is_err(), "{bad}");
        }
    }
}
