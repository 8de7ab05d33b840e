//! Names of VMs, disks, collections and restore points.
//!
//! Rule: 1–80 characters from `[A-Za-z0-9._-]`, starting with a letter or digit, not ending in
//! [`JSON_SUFFIX`] and not [`LATEST`]: the names the mount shows beside a collection's points
//! ([`COLLECTION_JSON`], [`LATEST`]) are reserved here, in this one list, and the mount takes
//! them from it. Names are labels only: no storage key is ever built from one.

use super::error::{Error, Result};

/// Longest accepted name.
pub const MAX_LEN: usize = 80;
/// The collection's resource document, beside its points in the mount.
pub const COLLECTION_JSON: &str = "collection.json";
/// The link to a collection's newest point, beside its points in the mount.
pub const LATEST: &str = "latest";
/// No name may end in it: the mount's documents do (`collection.json`, `restore-point.json`).
pub const JSON_SUFFIX: &str = ".json";

const _: () = assert!(COLLECTION_JSON.len() > JSON_SUFFIX.len());

/// Checks `name` as the name of a `what` (used in the error message).
pub fn validate(what: &'static str, name: &str) -> Result<()> {
    let refuse = |reason: &str, too_long: bool| {
        Err(Error::InvalidName {
            what,
            name: name.to_string(),
            reason: reason.to_string(),
            too_long,
        })
    };
    if name.is_empty() {
        return refuse("names must not be empty", false);
    }
    if name.len() > MAX_LEN {
        return refuse(
            &format!(
                "names are at most {MAX_LEN} characters, this one has {}",
                name.len()
            ),
            true,
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return refuse(
            &format!("{c:?} is not allowed; use letters, digits, '.', '_' and '-'"),
            false,
        );
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return refuse("names must start with a letter or digit", false);
    }
    if name.ends_with(JSON_SUFFIX) {
        return refuse("names must not end in .json", false);
    }
    if name == LATEST {
        return refuse("'latest' is reserved for the newest restore point", false);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::error::ErrorKind;

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "a",
            "rp1",
            "Daily-2026.11.26_0700",
            "9lives",
            &"x".repeat(80),
            "latest2",
        ] {
            validate("point", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn refuses_invalid_names_with_reason() {
        let cases = [
            ("", "must not be empty"),
            (".hidden", "must start with a letter or digit"),
            ("-x", "must start with a letter or digit"),
            ("a b", "' ' is not allowed"),
            ("a/b", "'/' is not allowed"),
            ("über", "'ü' is not allowed"),
            ("x.json", "must not end in .json"),
            ("latest", "reserved"),
            (COLLECTION_JSON, "must not end in .json"),
        ];
        for (name, want) in cases {
            let err = validate("point", name).expect_err(name);
            assert_eq!(err.kind(), ErrorKind::InvalidName);
            assert!(err.to_string().contains(want), "{name:?}: {err}");
        }
        let err = validate("point", &"y".repeat(81)).expect_err("long");
        assert_eq!(err.kind(), ErrorKind::NameTooLong);
    }
}
