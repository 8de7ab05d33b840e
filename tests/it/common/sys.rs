//! The machine the tests run on: shell commands, the tools and privileges a test needs (missing
//! tools fail, missing root skips unless `RPFS_REQUIRE_FUSE=1`), polling, and the seeds and
//! counts the environment sets.

use std::process::Command;

use rand::SeedableRng;
use rand::rngs::StdRng;

/// A deterministic RNG; the seed is printed so a failure can be replayed.
pub fn rng(seed: u64) -> StdRng {
    eprintln!("rng seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// A seed from the environment (`RPFS_TEST_SEED`) or the clock.
pub fn seed() -> u64 {
    std::env::var("RPFS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// A count from the environment variable `var` (the soak script raises them), else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Panics (never skips) when a tool the tests rely on is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required by this test (scripts/test.sh installs it)"
    );
}

/// Runs a command and panics with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn is_root() -> bool {
    sh("id -u").trim() == "0"
}

/// True when a test that needs root may run. Without root it is skipped with a note, unless
/// `RPFS_REQUIRE_FUSE=1` (set by CI), which forbids skipping privileged tests.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("RPFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("{test} needs root, and RPFS_REQUIRE_FUSE=1 forbids skipping it");
    }
    eprintln!("note: {test} skipped: it needs root");
    false
}

/// Polls `cond` every 10 ms until it holds; fails the test with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "{what} (waited {timeout:?})");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
