//! Running the VM's pre-script (freeze), post-script (thaw) and configuration command, and the
//! environment they see.
//!
//! Invariants: a command runs through `sh -c` in its own process group with stdin closed; its
//! output goes to anonymous temporary files (never pipes, so a background child holding them
//! cannot hang us); a command that outlives its timeout is killed with its whole process group
//! and counts as failed.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use uuid::Uuid;

use crate::store::records::VmRecord;

/// The environment a script of `vm` sees in `phase` (`pre`, `post`, `config`) of the creation
/// of point `point` in `collection`.
pub fn script_env(
    vm: &VmRecord,
    collection: &str,
    point: Uuid,
    phase: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("RPFS_PHASE", phase.to_string()),
        ("RPFS_VM", vm.name.clone()),
        ("RPFS_VM_ID", vm.id.to_string()),
        ("RPFS_COLLECTION", collection.to_string()),
        ("RPFS_POINT", point.to_string()),
    ]
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0; carries standard output.
    Success(Vec<u8>),
    /// Anything else; says why, with the last line of standard error when there is one.
    Failed(String),
}

/// Runs `command` with `env` added, for at most `timeout`.
pub fn run(command: &str, env: &[(&str, String)], timeout: Duration) -> Outcome {
    let (mut out, mut err) = match (tempfile::tempfile(), tempfile::tempfile()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Outcome::Failed(format!("cannot create output file: {e}"));
        }
    };
    let spawned = match (out.try_clone(), err.try_clone()) {
        (Ok(o), Ok(e)) => Command::new("sh")
            .arg("-c")
            .arg(command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .process_group(0)
            .spawn(),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("could not be started: {e}")),
    };
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(format!("could not be waited for: {e}")),
        }
        if start.elapsed() >= timeout {
            // The child leads its own process group (process_group(0)), so its pid is the pgid.
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            break Err(format!(
                "timed out after {} s and was killed",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let read_all = |f: &mut std::fs::File| {
        let mut v = Vec::new();
        let _ = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut v));
        v
    };
    match status {
        Ok(s) if s.success() => Outcome::Success(read_all(&mut out)),
        Ok(s) => {
            let stderr = read_all(&mut err);
            let last = String::from_utf8_lossy(&stderr)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default();
            Outcome::Failed(format!("failed ({s}){last}"))
        }
        Err(reason) => Outcome::Failed(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_failure_and_timeout() {
        let t = Duration::from_secs(5);
        assert_eq!(
            run("printf %s \"$X\"", &[("X", "hi".into())], t),
            Outcome::Success(b"hi".to_vec())
        );
        match run("echo oops >&2; exit 3", &[], t) {
            Outcome::Failed(m) => {
                assert!(m.contains("exit status: 3") && m.ends_with(": oops"), "{m}")
            }
            o => panic!("{o:?}"),
        }
        let start = Instant::now();
        match run("sleep 30; echo late", &[], Duration::from_millis(300)) {
            Outcome::Failed(m) => assert!(m.contains("timed out"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn background_children_do_not_hang_the_caller() {
        let start = Instant::now();
        assert!(matches!(
            run("sleep 20 & echo started", &[], Duration::from_secs(10)),
            Outcome::Success(_)
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
