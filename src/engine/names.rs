//! Names of VMs, disks, collections and restore points.
//!
//! Rule: 1–80 characters from `[A-Za-z0-9._-]`, starting with a letter or digit, not ending in
//! `.json` (the mount shows `collection.json` and `restore-point.json` beside points) and not
//! `latest` (the mount's symlink to the newest point). Names are labels only: no storage key is
//! ever built from one.

use super::error::{Error, Result};

/// Longest accepted name.
pub const MAX_LEN: usize = 80;

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
    if name.ends_with(".json") {
        return refuse("names must not end in .json", false);
    }
    if name == "latest" {
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
