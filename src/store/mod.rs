//! The on-disk format and nothing else: layout, headers, packs, block maps, metadata records,
//! atomic publish, and the [`storage::Storage`] trait all I/O goes through.
//!
//! Invariants: every file holding data carries a magic, a version and a checksum; files are
//! published by write-temp, fsync, rename, fsync-directory and never modified in place; every
//! length read from a file is checked before it is trusted; a local store is private to its
//! owner (`private`).

pub mod block;
pub mod blockmap;
pub mod corrupt;
pub mod envelope;
pub mod fileops;
pub mod format;
pub mod frames;
pub mod index;
pub mod layout;
mod le;
pub mod local;
pub mod pack;
pub mod page;
pub mod pagemap;
pub mod private;
pub mod records;
pub mod refs;
pub mod storage;

pub use corrupt::{Corrupt, CorruptKind};
pub use local::LocalStorage;

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

use storage::Storage;

/// Failure to read a metadata record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{key}: {source}")]
    Io { key: String, source: io::Error },
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl RecordError {
    /// True when the record does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RecordError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Reads and validates a JSON record of `kind` from `key`.
///
/// Stored content is untrusted: the size is checked before the file is read, the envelope
/// before the body is parsed (serde_json bounds nesting), and every name the record holds
/// before it is returned.
pub fn read_record<T: DeserializeOwned + records::Record>(
    storage: &dyn Storage,
    key: &str,
    kind: &str,
) -> Result<T, RecordError> {
    let io = |source| RecordError::Io {
        key: key.to_string(),
        source,
    };
    // The length is fixed when the object is opened: a file growing meanwhile is not read on.
    let object = storage.open(key).map_err(io)?;
    let size = object.len();
    if size > envelope::MAX_FILE as u64 {
        return Err(RecordError::Corrupt(Corrupt::new(
            key,
            CorruptKind::TooLarge,
            format!(
                "is {size} bytes, more than a record can be ({} bytes)",
                envelope::MAX_FILE
            ),
        )));
    }
    let mut bytes = vec![0u8; size as usize];
    object.read_exact_at(&mut bytes, 0).map_err(io)?;
    let body = envelope::open(key, kind, &bytes)?;
    let record: T = serde_json::from_slice(body).map_err(|e| {
        let detail = format!("invalid {kind} record: {e}");
        RecordError::Corrupt(Corrupt::new(key, CorruptKind::Json, detail))
    })?;
    if let Some(bad) = record.names().into_iter().find(|n| !records::safe_name(n)) {
        return Err(RecordError::Corrupt(Corrupt::new(
            key,
            CorruptKind::UnsafeName,
            format!("holds the name {bad:?}, which is not a safe file name"),
        )));
    }
    Ok(record)
}

/// Serialises `record` into a sealed envelope of `kind`.
pub fn seal_record<T: Serialize>(kind: &str, record: &T) -> Vec<u8> {
    // Serialising plain structs of strings, numbers and UUIDs into memory cannot fail.
    let body = serde_json::to_vec_pretty(record).unwrap_or_default();
    envelope::seal(kind, &body)
}

/// Publishes `record` under `key` atomically and durably.
pub fn write_record<T: Serialize>(
    storage: &dyn Storage,
    key: &str,
    kind: &str,
    record: &T,
) -> io::Result<()> {
    storage.put(key, &seal_record(kind, record))
}

/// Record kinds, as written in envelopes.
pub mod kind {
    pub const STORE: &str = "store";
    pub const VM: &str = "vm";
    pub const COLLECTION: &str = "collection";
    pub const POINT: &str = "point";
    pub const CONFIG: &str = "config";
    pub const PENDING: &str = "pending";
}
