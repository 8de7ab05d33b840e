//! Resealing a page map, for tests and fuzzing (compiled only for them): [`reseal`] makes every
//! checksum of a map right again, so damage reaches the checks behind the checksums.
//!
//! Invariants: it reads and writes only inside the slice (offsets taken from the trailer are
//! bounded before use), changes nothing but checksum fields, and never panics, whatever the
//! bytes.

use super::entry::{DIR_ENTRY_LEN, HEADER_LEN, TRAILER_LEN};
use crate::store::le;

/// Makes every checksum of a map right again (directory entries', the regions', the trailer's
/// and the header's) wherever the trailer's offsets allow, so damage reaches the checks behind
/// the checksums: for tests and fuzzing.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "offsets below the trailer's start, in a slice at least a trailer long"
)]
pub fn reseal(b: &mut [u8]) {
    let n = b.len();
    if n < HEADER_LEN + TRAILER_LEN {
        return;
    }
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let t = n.saturating_sub(TRAILER_LEN);
    let at = |o: usize| usize::try_from(le::u64_at(b, t.saturating_add(o))).unwrap_or(usize::MAX);
    let (summary_at, summary_len, list_at, dir_at) = (at(8), at(16), at(24), at(32));
    if let Some(s) = summary_at
        .checked_add(summary_len)
        .filter(|&e| e <= t)
        .and_then(|e| b.get(summary_at..e))
    {
        let crc = crc32c::crc32c(s);
        b[t + 56..t + 60].copy_from_slice(&crc.to_le_bytes());
    }
    if list_at <= dir_at && dir_at <= t {
        let crc = crc32c::crc32c(&b[list_at..dir_at]);
        b[t + 60..t + 64].copy_from_slice(&crc.to_le_bytes());
        for e in (dir_at..t).step_by(DIR_ENTRY_LEN) {
            if e.saturating_add(DIR_ENTRY_LEN) > t {
                break;
            }
            let off = usize::try_from(le::u64_at(b, e)).unwrap_or(usize::MAX);
            let len = le::u32_at(b, e.saturating_add(8)) as usize;
            if let Some(s) = off
                .checked_add(len)
                .filter(|&x| x <= t)
                .and_then(|x| b.get(off..x))
            {
                let crc = crc32c::crc32c(s);
                b[e + 12..e + 16].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&b[dir_at..t]);
        b[t + 64..t + 68].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[t..t + 68]);
    b[t + 68..t + 72].copy_from_slice(&crc.to_le_bytes());
}
