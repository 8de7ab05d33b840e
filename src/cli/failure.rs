//! How a command fails: the documented exit codes, and the one mapping from engine errors to
//! them.
//!
//! Invariants: every engine error kind maps to exactly one exit code (an exhaustive match, no
//! wildcard), and the codes are the ones the README documents.

use rpfs::engine::{Error, ErrorKind};

/// Exit codes, documented in the README.
pub mod exit {
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const EXISTS: i32 = 4;
    pub const LIMIT: i32 = 5;
    pub const BUSY: i32 = 6;
    pub const UNSUPPORTED: i32 = 7;
    pub const NOT_EMPTY: i32 = 8;
    pub const SCRIPT: i32 = 9;
    pub const DAMAGED: i32 = 10;
    pub const NO_SPACE: i32 = 11;
    pub const THROTTLED: i32 = 12;
}

/// An error on its way out, with its exit code.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e.kind() {
            ErrorKind::NotFound => exit::NOT_FOUND,
            ErrorKind::Exists => exit::EXISTS,
            ErrorKind::InvalidName | ErrorKind::NameTooLong | ErrorKind::InvalidArgument => {
                exit::USAGE
            }
            ErrorKind::Limit => exit::LIMIT,
            ErrorKind::Busy => exit::BUSY,
            ErrorKind::Throttled => exit::THROTTLED,
            ErrorKind::Unsupported => exit::UNSUPPORTED,
            ErrorKind::NotEmpty => exit::NOT_EMPTY,
            ErrorKind::NoSpace => exit::NO_SPACE,
            ErrorKind::Script => exit::SCRIPT,
            ErrorKind::Corrupt => exit::DAMAGED,
            ErrorKind::Io => exit::FAILURE,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub fn failure(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}
