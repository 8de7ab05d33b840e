//! Progress reporting from long operations, without tying the engine to a terminal library.

/// Receives progress of a long operation; the CLI draws it, everything else ignores it.
pub trait Progress: Sync {
    /// A phase starts, expected to cover `total_bytes`.
    fn begin(&self, _what: &str, _total_bytes: u64) {}
    /// `bytes` more were processed.
    fn advance(&self, _bytes: u64) {}
    /// The phase ended.
    fn end(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}
