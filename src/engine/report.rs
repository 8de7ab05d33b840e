//! What `check` reports, shared by both formats' checks (`check`, `paged::check`).

use std::collections::BTreeSet;

/// What `check` found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub vms: usize,
    pub collections: usize,
    pub points: usize,
    pub disk_points: usize,
    pub packs: usize,
    pub blocks_verified: u64,
    pub bytes_verified: u64,
    /// One line per problem; empty when the store is sound.
    pub problems: Vec<String>,
    /// Keys of files no committed point references: temporaries, maps and packs left behind,
    /// configurations of no point, files the store does not know.
    pub unreachable: Vec<String>,
    /// Points with a problem of their own ("c/p1"); a repair cannot make them whole.
    pub damaged_points: BTreeSet<String>,
    /// Files a repair removed.
    pub removed: Vec<String>,
    /// What a user should know that is not damage (the store's medium is low on space).
    pub warnings: Vec<String>,
    /// Findings that are neither damage nor a risk (format 2: what a sweep will free, stale
    /// index entries, a sweep owed).
    pub notes: Vec<String>,
}

/// Formats sorted block numbers as ranges: "3, 17-19".
pub(crate) fn ranges(blocks: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i;
        while j + 1 < blocks.len() && blocks[j + 1] == blocks[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            blocks[i].to_string()
        } else {
            format!("{}-{}", blocks[i], blocks[j])
        });
        i = j + 1;
    }
    out.join(", ")
}
