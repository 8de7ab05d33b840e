//! Engine errors.
//!
//! Policy: every refusal has its own variant so callers can act on it (the CLI maps
//! [`ErrorKind`] to exit codes, the mount to errnos); every message names the object that failed
//! and the reason, and says what to do next when there is something to do. A refusal is decided
//! before anything is written, so it changes nothing.

use std::io;
use std::path::PathBuf;

use crate::store::block::DecodeError;
use crate::store::pack::PackError;
use crate::store::{Corrupt, RecordError};

/// Engine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a source disk cannot be captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceProblem {
    /// The source exists but is not a raw image or block device.
    Unsupported,
    /// The path does not exist.
    Missing,
    /// The source cannot be opened or read.
    Unreadable,
    /// The path is no longer what it was when its VM was added (now a symbolic link, or another
    /// kind of file): refused, as another user may have swapped it.
    Changed,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `hint`, when not empty, follows the message (e.g. "; VM 'vm1' has disks os, data").
    #[error("{what} '{name}' not found{hint}")]
    NotFound {
        what: &'static str,
        name: String,
        hint: String,
    },

    #[error("{what} '{name}' already exists")]
    Exists { what: &'static str, name: String },

    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
        too_long: bool,
    },

    #[error("{0}")]
    InvalidArgument(String),

    #[error(
        "VM '{vm}' already has {count} restore points across its collections, the limit is \
         {limit}: delete some restore points and retry"
    )]
    LimitReached {
        vm: String,
        count: usize,
        limit: usize,
    },

    #[error(
        "VM '{vm}' is busy: another restore point creation or deletion is running for it; \
         retry when it has finished"
    )]
    Busy { vm: String },

    #[error(
        "the store lock (locks/store.lock) is held by another process: gave up after waiting \
         {:.0} s; another rpfs command is changing the store's catalog or is stuck, retry when \
         it has finished",
        waited.as_secs_f64()
    )]
    StoreBusy { waited: std::time::Duration },

    #[error(
        "VM '{vm}' takes at most one restore point every {min_interval}: its newest is {age} \
         old; retry in {wait}"
    )]
    Throttled {
        vm: String,
        min_interval: String,
        age: String,
        wait: String,
    },

    #[error("{0}")]
    Unsupported(String),

    #[error("{0}")]
    NotEmpty(String),

    /// Refused before any work: the store's medium lacks room.
    #[error("{0}")]
    NoSpace(String),

    #[error("disk '{disk}' ({path}): {reason}")]
    Source {
        disk: String,
        path: PathBuf,
        reason: String,
        problem: SourceProblem,
    },

    /// A VM's configuration file that cannot be captured (`problem` as for a source disk).
    #[error("configuration file {path} of VM '{vm}': {reason}")]
    ConfigFile {
        vm: String,
        path: PathBuf,
        reason: String,
        problem: SourceProblem,
    },

    #[error("{0}")]
    Script(String),

    /// Damage met while reading a point: what was being read, and what is damaged.
    #[error("{context}: {damage}")]
    Damaged { context: String, damage: Damage },

    #[error("store damaged: {0}")]
    Corrupt(#[from] Corrupt),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// What is damaged, when reading a point meets damage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The point's block map fails validation.
    #[error("block map {0}")]
    Map(Corrupt),
    /// Another file of the store fails validation (a pack's table, a previous point's map).
    #[error("{0}")]
    File(Corrupt),
    /// A stored block does not decode to its content.
    #[error("{pack}: {cause}")]
    Block { pack: String, cause: DecodeError },
    /// A pack lacks a block its map says it holds.
    #[error("{pack} does not hold this block")]
    MissingBlock { pack: String },
}

/// The category of an error, for exit codes and errnos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Exists,
    InvalidName,
    NameTooLong,
    InvalidArgument,
    Limit,
    Busy,
    Throttled,
    Unsupported,
    NotEmpty,
    NoSpace,
    Script,
    Corrupt,
    Io,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Exists { .. } => ErrorKind::Exists,
            Error::InvalidName { too_long: true, .. } => ErrorKind::NameTooLong,
            Error::InvalidName { .. } => ErrorKind::InvalidName,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::LimitReached { .. } => ErrorKind::Limit,
            Error::Busy { .. } | Error::StoreBusy { .. } => ErrorKind::Busy,
            Error::Throttled { .. } => ErrorKind::Throttled,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::NotEmpty(_) => ErrorKind::NotEmpty,
            Error::NoSpace(_) => ErrorKind::NoSpace,
            Error::Source { problem, .. } | Error::ConfigFile { problem, .. } => match problem {
                SourceProblem::Unsupported | SourceProblem::Changed => ErrorKind::Unsupported,
                SourceProblem::Missing | SourceProblem::Unreadable => ErrorKind::Io,
            },
            Error::Script(_) => ErrorKind::Script,
            Error::Damaged { .. } | Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// A pack's or a page map's parts failing to load: I/O (the error names the file and the part),
/// or damage.
impl From<PackError> for Error {
    fn from(e: PackError) -> Self {
        match e {
            PackError::Io(source) => Error::Io {
                context: "reading the store".into(),
                source,
            },
            PackError::Corrupt(c) => Error::Corrupt(c),
        }
    }
}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Io { key, source } => Error::Io {
                context: format!("reading {key}"),
                source,
            },
            RecordError::Corrupt(c) => Error::Corrupt(c),
        }
    }
}
