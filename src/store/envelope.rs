//! The envelope around every metadata file (JSON records, captured VM configurations).
//!
//! Format: one ASCII header line, then the body:
//!
//! ```text
//! RPFS <kind> v<version> <body-length> <crc32c-of-body, 8 hex digits>\n<body>
//! ```
//!
//! The header line stays human-readable (`tail -n +2 FILE` prints the JSON) while giving every file
//! a magic, a version and a checksum. Invariants: the body length is checked against the file
//! length before anything else is trusted; bodies are capped at [`MAX_BODY`]; a file of the wrong
//! kind is rejected, so a point record can never be read as a VM record.

#![warn(clippy::arithmetic_side_effects)]

use super::{Corrupt, CorruptKind};

/// Format version of envelopes written by this build.
pub const VERSION: u32 = 1;
/// Upper bound on a metadata body; VM configurations (e.g. `virsh dumpxml`) are kilobytes.
pub const MAX_BODY: usize = 16 << 20;
const MAX_HEADER: usize = 96;
/// Largest record file: header line plus the largest body.
pub const MAX_FILE: usize = MAX_HEADER + MAX_BODY;
const MAGIC: &str = "RPFS";

/// Wraps `body` in an envelope of `kind`.
pub fn seal(kind: &str, body: &[u8]) -> Vec<u8> {
    let header = format!(
        "{MAGIC} {kind} v{VERSION} {} {:08x}\n",
        body.len(),
        crc32c::crc32c(body)
    );
    let mut out = Vec::with_capacity(header.len().saturating_add(body.len()));
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks the envelope of `bytes` (read from `file`) and returns its body.
pub fn open<'a>(file: &str, kind: &str, bytes: &'a [u8]) -> Result<&'a [u8], Corrupt> {
    let corrupt = |kind: CorruptKind, detail: String| Corrupt::new(file, kind, detail);
    use CorruptKind::*;
    let end = bytes
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt(Header, "no envelope header line".into()))?;
    let (header, rest) = bytes.split_at(end);
    let header = std::str::from_utf8(header)
        .map_err(|_| corrupt(Header, "envelope header is not ASCII".into()))?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, found_kind, version, len, crc] = fields[..] else {
        return Err(corrupt(
            Header,
            format!("malformed envelope header {header:?}"),
        ));
    };
    if magic != MAGIC {
        return Err(corrupt(Magic, format!("bad magic {magic:?}")));
    }
    if found_kind != kind {
        return Err(corrupt(
            WrongKind,
            format!("holds a {found_kind:?} record, expected {kind:?}"),
        ));
    }
    if version != format!("v{VERSION}") {
        return Err(corrupt(
            Version,
            format!("unsupported metadata version {version:?} (this build reads v{VERSION})"),
        ));
    }
    let len: usize = len
        .parse()
        .map_err(|_| corrupt(Header, format!("bad body length {len:?}")))?;
    let crc = u32::from_str_radix(crc, 16)
        .map_err(|_| corrupt(Header, format!("bad checksum {crc:?}")))?;
    // `rest` starts with the newline found above.
    let body = &rest[1..];
    if len > MAX_BODY {
        return Err(corrupt(
            TooLarge,
            format!("body of {len} bytes exceeds the cap"),
        ));
    }
    if body.len() != len {
        return Err(corrupt(
            Length,
            format!("body is {} bytes, header says {len}", body.len()),
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Err(corrupt(BodyChecksum, "checksum mismatch".into()));
    }
    // The header line has no checksum of its own: only the exact form `seal` writes is
    // accepted, so a flipped bit that still parses (a hex digit's case, say) is caught.
    if header != format!("{MAGIC} {kind} v{VERSION} {len} {crc:08x}") {
        return Err(corrupt(
            Header,
            format!("envelope header {header:?} is not in canonical form"),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sealed = seal("vm", b"{\"a\":1}");
        assert!(sealed.starts_with(b"RPFS vm v1 7 "));
        assert_eq!(open("f", "vm", &sealed).expect("valid"), b"{\"a\":1}");
    }

    #[test]
    fn a_header_that_parses_but_is_not_canonical_is_refused() {
        let sealed = String::from_utf8(seal("point", b"hello world")).expect("ascii");
        let (header, body) = sealed.split_once('\n').expect("header");
        let (front, crc) = header.rsplit_once(' ').expect("crc");
        for variant in [
            format!("{front} {}\n{body}", crc.to_uppercase()),
            format!("{front} 0{crc}\n{body}"),
            format!("{}\n{body}", header.replacen(" 11 ", " 011 ", 1)),
        ] {
            assert_ne!(variant, sealed);
            let e = open("f", "point", variant.as_bytes()).expect_err(&variant);
            assert_eq!(e.kind, CorruptKind::Header, "{variant:?}: {e}");
            assert!(e.to_string().contains("canonical"), "{variant:?}: {e}");
        }
    }

    /// One damage per part of the envelope (header fields, body), each with its kind; the
    /// header line is bytes 0 to the first newline, the body what follows.
    #[test]
    fn each_corruption_has_its_kind() {
        let sealed = seal("point", b"hello world");
        let header_len = sealed.iter().position(|&b| b == b'\n').expect("newline");
        let flip = |at: usize| {
            let mut b = sealed.clone();
            b[at] ^= 1;
            b
        };
        let text = |from: &str, to: &str| {
            String::from_utf8_lossy(&sealed)
                .replacen(from, to, 1)
                .into_bytes()
        };
        let cases: Vec<(Vec<u8>, CorruptKind, &str)> = vec![
            (
                sealed[..5].to_vec(),
                CorruptKind::Header,
                "no envelope header",
            ),
            (text("RPFS", "XXXX"), CorruptKind::Magic, "bad magic"),
            (
                seal("vm", b"hello world"),
                CorruptKind::WrongKind,
                "expected \"point\"",
            ),
            (
                text(" v1 ", " v9 "),
                CorruptKind::Version,
                "unsupported metadata version",
            ),
            (text(" 11 ", " x1 "), CorruptKind::Header, "bad body length"),
            (
                text(" point ", " point  "),
                CorruptKind::Header,
                "malformed",
            ),
            (
                sealed[..sealed.len() - 1].to_vec(),
                CorruptKind::Length,
                "header says 11",
            ),
            (
                flip(header_len + 1),
                CorruptKind::BodyChecksum,
                "checksum mismatch",
            ),
            (
                flip(sealed.len() - 1),
                CorruptKind::BodyChecksum,
                "checksum mismatch",
            ),
            (
                text(" 11 ", &format!(" {} ", MAX_BODY + 1)),
                CorruptKind::TooLarge,
                "exceeds the cap",
            ),
        ];
        for (bytes, kind, want) in cases {
            let err = open("f", "point", &bytes).expect_err(want);
            assert_eq!(err.kind, kind, "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want:?}");
        }
    }
}
