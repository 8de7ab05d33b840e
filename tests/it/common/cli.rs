//! The `rpfs` binary as a user runs it: pointed at a store, its exit code and error message
//! checked, its `--json` output parsed.

use std::path::Path;

use super::store::TestStore;

/// The `rpfs` binary pointed at the store in `store`, with logging off.
pub fn rpfs_at(store: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("rpfs").expect("rpfs binary");
    c.env("RPFS_STORE", store).env_remove("RPFS_LOG");
    c
}

/// Runs `cmd`, asserts its exit code, and returns (stdout, stderr). A refusal must come with an
/// error message.
pub fn expect_exit(cmd: &mut assert_cmd::Command, code: i32) -> (String, String) {
    let out = cmd.output().expect("run rpfs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}: expected exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    if code != 0 {
        assert!(
            stderr.contains("rpfs: error: ") || stderr.starts_with("error: "),
            "{cmd:?}: refusal without an error message: {stderr:?}"
        );
    }
    (stdout, stderr)
}

/// `rpfs cat POINT --disk DISK` through `cmd` (pointed at a store): expects success and
/// returns the bytes written to standard output (a pipe, as assert_cmd captures it).
pub fn cat_disk(cmd: &mut assert_cmd::Command, point: &str, disk: &str) -> Vec<u8> {
    let out = cmd
        .args(["cat", point, "--disk", disk])
        .output()
        .expect("cat");
    assert!(
        out.status.success(),
        "cat {point} --disk {disk}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Asserts that `msg` contains every one of `parts`.
pub fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}: {msg}");
    }
}

/// Runs the CLI with `args`, expects success, and parses standard output as JSON.
pub fn cli_json(ts: &TestStore, args: &[&str]) -> serde_json::Value {
    json_of(ts.cli().args(args))
}

fn json_of(cmd: &mut assert_cmd::Command) -> serde_json::Value {
    let (out, _) = expect_exit(cmd, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?}: not JSON ({e}): {out}"))
}

/// "collection/name" of every point, from `point list --json`, in output order.
pub fn point_names(ts: &TestStore) -> Vec<String> {
    point_names_at(&ts.store_path())
}

/// Like [`point_names`], for the store in `store`.
pub fn point_names_at(store: &Path) -> Vec<String> {
    json_of(rpfs_at(store).args(["point", "list", "--json"]))
        .as_array()
        .expect("array")
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["rpfs"]["collection"].as_str().expect("collection"),
                p["name"].as_str().expect("name")
            )
        })
        .collect()
}
