//! The one errno table: every error the mount can return, mapped exhaustively (no wildcard
//! arm), with the log level each deserves. The README carries the same table for users.

use crate::engine::{Error as EngineError, ErrorKind};

/// Why a filesystem request failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("inode {0} is unknown or no longer exists")]
    Stale(u64),
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    /// A write-type operation on the read-only tree.
    #[error("restore points are read-only ({0} refused)")]
    ReadOnly(&'static str),
    /// mkdir/rmdir where they are not allowed; says what would be allowed.
    #[error("{0}")]
    NotPermitted(String),
    /// A user other than root or the mounting user tried to change the tree.
    #[error("{0}")]
    AccessDenied(String),
    /// A name that is not valid UTF-8 (no rpfs name is).
    #[error("the name is not valid UTF-8")]
    BadName,
    /// SEEK_DATA past the last data.
    #[error("no data at or after offset {0}")]
    NoData(u64),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A guest filesystem that cannot be read (damaged or unsupported): says which and why.
    #[error("{0}")]
    Guest(String),
}

/// How loudly a failed request is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl FsError {
    /// The errno the kernel gets.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            // A node that vanished (its point was deleted) or was never given out.
            FsError::Stale(_) => libc::ENOENT,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::ReadOnly(_) => libc::EROFS,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::AccessDenied(_) => libc::EACCES,
            FsError::BadName => libc::EINVAL,
            FsError::NoData(_) => libc::ENXIO,
            FsError::Invalid(_) => libc::EINVAL,
            // Damage is never papered over: what cannot be read is an I/O error.
            FsError::Guest(_) => libc::EIO,
            FsError::Engine(e) => match e.kind() {
                ErrorKind::NotFound => libc::ENOENT,
                ErrorKind::Exists => libc::EEXIST,
                ErrorKind::InvalidName => libc::EINVAL,
                ErrorKind::NameTooLong => libc::ENAMETOOLONG,
                ErrorKind::InvalidArgument => libc::EINVAL,
                // The 500-point limit is a quota on the VM.
                ErrorKind::Limit => libc::EDQUOT,
                ErrorKind::Busy => libc::EBUSY,
                // The VM's minimum interval between creations has not passed yet.
                ErrorKind::Throttled => libc::EAGAIN,
                ErrorKind::Unsupported => libc::EOPNOTSUPP,
                ErrorKind::NotEmpty => libc::ENOTEMPTY,
                ErrorKind::NoSpace => libc::ENOSPC,
                // A failed pre-script or configuration command: the creation could not be done.
                ErrorKind::Script => libc::EIO,
                // Damage is never papered over with zeros.
                ErrorKind::Corrupt => libc::EIO,
                // Unreadable sources land here too.
                ErrorKind::Io => libc::EIO,
            },
        }
    }

    /// The level a failure is logged at: a missing name is routine, damage is not.
    pub fn level(&self) -> Level {
        match self {
            FsError::NotFound | FsError::NotDir | FsError::IsDir | FsError::NoData(_) => {
                Level::Debug
            }
            FsError::Stale(_) | FsError::BadHandle(_) | FsError::BadName | FsError::Invalid(_) => {
                Level::Debug
            }
            FsError::ReadOnly(_) | FsError::NotPermitted(_) | FsError::AccessDenied(_) => {
                Level::Info
            }
            FsError::Guest(_) => Level::Error,
            FsError::Engine(e) => match e.kind() {
                ErrorKind::NotFound => Level::Debug,
                ErrorKind::Exists
                | ErrorKind::InvalidName
                | ErrorKind::NameTooLong
                | ErrorKind::InvalidArgument
                | ErrorKind::Limit
                | ErrorKind::Busy
                | ErrorKind::Throttled
                | ErrorKind::Unsupported
                | ErrorKind::NotEmpty
                | ErrorKind::NoSpace => Level::Warn,
                ErrorKind::Script | ErrorKind::Io => Level::Warn,
                ErrorKind::Corrupt => Level::Error,
            },
        }
    }
}
