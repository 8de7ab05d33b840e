//! Damage found in a store file: which file, what kind of damage, and the detail a user reads.
//!
//! Policy: every check of a file read back from a store fails with a [`Corrupt`] whose
//! [`CorruptKind`] says what was wrong, so callers and tests act on the kind, never on the
//! wording; the message names the file and says what was found. New checks add kinds here
//! (the enum is non-exhaustive for that reason).

/// What is wrong with a damaged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The file's length disagrees with its fixed parts or with a length it records.
    Length,
    /// Not the magic its format starts (or, for a trailer, ends) with.
    Magic,
    /// A version of its format this build does not read.
    Version,
    /// A record of another kind than the one expected.
    WrongKind,
    /// A block size other than the store's.
    BlockSize,
    /// An id other than the one its name gives.
    WrongId,
    /// The checksum of a fixed header does not match.
    HeaderChecksum,
    /// The checksum of a body (a map's entries, an envelope's content) does not match.
    BodyChecksum,
    /// The checksum of a pack's table does not match.
    TableChecksum,
    /// The checksum of a pack's trailer does not match.
    TrailerChecksum,
    /// An envelope's header line that does not parse or is not in the form rpfs writes.
    Header,
    /// A count, offset or size outside what the file or the format allows.
    Bounds,
    /// A compressed body that does not decompress to the size its header implies.
    Compression,
    /// An entry of a table or map that is invalid (out of range, out of order, no codec).
    Entry,
    /// A file larger than its format allows.
    TooLarge,
    /// A record body that is not valid JSON for its kind.
    Json,
    /// A record holding a name that is not a safe file name.
    UnsafeName,
}

/// A file whose content fails validation. Names the file; the detail says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {detail}")]
pub struct Corrupt {
    pub file: String,
    pub kind: CorruptKind,
    pub detail: String,
}

impl Corrupt {
    pub fn new(file: &str, kind: CorruptKind, detail: impl Into<String>) -> Self {
        Corrupt {
            file: file.to_string(),
            kind,
            detail: detail.into(),
        }
    }
}
