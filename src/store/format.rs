//! The store as a whole: its format name and version (in `rpfs.store`), and the block sizes a
//! store may use. Each file format keeps its own version beside its layout (`pack.rs`,
//! `blockmap.rs`, `envelope.rs`).
//!
//! Versions: 1 keeps whole blocks per disk chain (`pack.rs` v1/v2, `blockmap.rs`); 2 maps 4 KiB
//! pages onto frames in store-wide packs shared by every VM (`page.rs`, `frames.rs`,
//! `pagemap.rs`, `index.rs`), with `block_size` as the frame size.
//!
//! Invariants: a store's format version and block size never change after `init`; a build opens
//! only the versions in [`READABLE`], and refuses any other by its version rather than misread
//! it.

/// The format name in every store header.
pub const FORMAT: &str = "rpfs";
/// The whole-block, per-disk-chain format: every store made before format 2 existed, and any
/// made with `rpfs init --format 1`. Still read and written by this build.
pub const VERSION: u32 = 1;
/// The page-mapped, store-wide deduplicating format.
pub const PAGED: u32 = 2;
/// Store format version a new store gets unless asked otherwise (`rpfs init` without
/// `--format`, [`crate::engine::Engine::init`]).
pub const DEFAULT: u32 = PAGED;
/// Every store format version this build opens.
pub const READABLE: [u32; 2] = [VERSION, PAGED];
/// Block size of a new store unless asked otherwise.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;
/// Smallest and largest block sizes a store may use.
pub const BLOCK_SIZE_RANGE: (u32, u32) = (4 << 10, 4 << 20);
/// Smallest and largest frame sizes of a format-2 store (a frame's pages fit a `u16` mask).
pub const FRAME_SIZE_RANGE: (u32, u32) = (4 << 10, 64 << 10);

/// `bytes` as a block size: a power of two within [`BLOCK_SIZE_RANGE`], or why not.
pub fn check_block_size(bytes: u64) -> Result<u32, String> {
    check_size_in(bytes, BLOCK_SIZE_RANGE)
}

/// `bytes` as the block size of a store of format `version`, or why not (for format 2, where
/// format 1 would take it, saying so: format 2 is the default, and larger blocks need asking).
pub fn check_block_size_for(bytes: u64, version: u32) -> Result<u32, String> {
    if version == PAGED {
        check_size_in(bytes, FRAME_SIZE_RANGE).map_err(|why| match check_block_size(bytes) {
            Ok(_) => format!(
                "{why} in a format-2 store (its frame size); format 1 (--format 1) takes blocks \
                 up to {}",
                binary(BLOCK_SIZE_RANGE.1)
            ),
            Err(_) => why,
        })
    } else {
        check_block_size(bytes)
    }
}

fn check_size_in(bytes: u64, (lo, hi): (u32, u32)) -> Result<u32, String> {
    match u32::try_from(bytes) {
        Ok(b) if b.is_power_of_two() && (lo..=hi).contains(&b) => Ok(b),
        _ => Err(format!(
            "block size {bytes} is not a power of two between {} and {}",
            binary(lo),
            binary(hi)
        )),
    }
}

/// "4 KiB", "4 MiB": sizes in the messages above.
fn binary(bytes: u32) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
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
        assert_eq!(check_block_size_for(64 << 10, PAGED), Ok(64 << 10));
        assert_eq!(
            check_block_size_for(128 << 10, PAGED),
            Err(
                "block size 131072 is not a power of two between 4 KiB and 64 KiB in a \
                 format-2 store (its frame size); format 1 (--format 1) takes blocks up to 4 MiB"
                    .into()
            )
        );
        assert_eq!(
            check_block_size_for(3000, PAGED),
            Err("block size 3000 is not a power of two between 4 KiB and 64 KiB".into())
        );
        assert_eq!(check_block_size_for(128 << 10, 1), Ok(128 << 10));
    }
}
