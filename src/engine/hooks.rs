//! Running the VM's pre-script (freeze), post-script (thaw) and configuration command, and the
//! environment they see.
//!
//! Invariants: a command runs through `sh -c` in its own process group with stdin closed; its
//! output goes to anonymous temporary files (never pipes, so a background child holding them
//! cannot hang us); a command that outlives its timeout is killed with its whole process group
//! and counts as failed.
//!
//! A command's output never leaves this module except as the configuration a configuration
//! command prints: what a failing command wrote to standard error goes to the log (tracing, at
//! warn level) and nowhere else. [`Outcome::Failed`] says why in rpfs's own words (exit status,
//! signal, timeout), because it ends up in error messages, `collection.json` and point records,
//! which other users may read; scripts print secrets (a freeze tool's password prompt, a
//! `virsh` connection string) more often than one would think.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use uuid::Uuid;

use crate::store::records::VmRecord;

/// The most of a failing command's standard error the log keeps (its end).
pub const LOGGED_STDERR_MAX: usize = 4096;

/// The environment a script of `vm` sees in `phase` (`pre`, `post`, `config`) of the creation
/// of point `point` (id `point_id`) in collection `collection` (id `collection_id`).
///
/// `RPFS_VM`, `RPFS_COLLECTION` and `RPFS_POINT` are names, `RPFS_VM_ID`, `RPFS_COLLECTION_ID`
/// and `RPFS_POINT_ID` ids. A name or id that is not known (empty, or None: a post-script run by
/// recovery for a marker written before the point's name was kept in it) is left unset rather
/// than set to something else.
pub fn script_env(
    vm: &VmRecord,
    collection: &str,
    collection_id: Option<Uuid>,
    point: &str,
    point_id: Uuid,
    phase: &str,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("RPFS_PHASE", phase.to_string()),
        ("RPFS_VM", vm.name.clone()),
        ("RPFS_VM_ID", vm.id.to_string()),
    ];
    if !collection.is_empty() {
        env.push(("RPFS_COLLECTION", collection.to_string()));
    }
    if let Some(id) = collection_id {
        env.push(("RPFS_COLLECTION_ID", id.to_string()));
    }
    if !point.is_empty() {
        env.push(("RPFS_POINT", point.to_string()));
    }
    env.push(("RPFS_POINT_ID", point_id.to_string()));
    env
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0; carries standard output.
    Success(Vec<u8>),
    /// Anything else; says why in rpfs's own words (exit status, signal, timeout), never with
    /// the command's output: see the module documentation.
    Failed(String),
}

/// What the log calls the command `env` was made for ("pre-script of VM 'vm1' for restore point
/// c1/p1"), from the environment [`script_env`] made.
fn describe(env: &[(&str, String)]) -> String {
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    let what = match get("RPFS_PHASE") {
        Some("pre") => "pre-script",
        Some("post") => "post-script",
        Some("config") => "configuration command",
        _ => "command",
    };
    let mut out = what.to_string();
    if let Some(vm) = get("RPFS_VM") {
        out.push_str(&format!(" of VM '{vm}'"));
    }
    match (
        get("RPFS_COLLECTION"),
        get("RPFS_POINT"),
        get("RPFS_POINT_ID"),
    ) {
        (Some(c), Some(p), _) => out.push_str(&format!(" for restore point {c}/{p}")),
        (_, _, Some(id)) => out.push_str(&format!(" for restore point {id}")),
        _ => {}
    }
    out
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
    let reason = match status {
        Ok(s) if s.success() => return Outcome::Success(read_all(&mut out)),
        Ok(s) => format!("failed ({s})"),
        Err(reason) => reason,
    };
    Outcome::Failed(log_stderr(&describe(env), &reason, &read_all(&mut err)))
}

/// Logs the end of what a failed command wrote to standard error (at most
/// [`LOGGED_STDERR_MAX`] bytes, escaped onto one line); returns `reason`, saying so when there
/// was some. The failure itself is reported by whoever gets the [`Outcome`].
fn log_stderr(what: &str, reason: &str, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return reason.to_string();
    }
    let mut start = text.len().saturating_sub(LOGGED_STDERR_MAX);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = if start > 0 { "…" } else { "" };
    // Debug formatting escapes newlines and control characters: one line, safe on a terminal.
    tracing::warn!(
        "{what} {reason}; its standard error: {cut}{:?}",
        &text[start..]
    );
    format!("{reason}; its standard error was logged")
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
        match run("exit 3", &[], t) {
            Outcome::Failed(m) => assert_eq!(m, "failed (exit status: 3)"),
            o => panic!("{o:?}"),
        }
        match run("kill -9 $$", &[], t) {
            Outcome::Failed(m) => assert!(m.contains("signal: 9"), "{m}"),
            o => panic!("{o:?}"),
        }
        let start = Instant::now();
        match run("sleep 30; echo late", &[], Duration::from_millis(300)) {
            Outcome::Failed(m) => assert!(m.contains("timed out"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    fn vm1() -> VmRecord {
        VmRecord {
            id: Uuid::new_v4(),
            name: "vm1".into(),
            created: String::new(),
            orchestration: Default::default(),
            disks: Vec::new(),
            config: Default::default(),
            config_added_as: None,
            pre_script: None,
            post_script: None,
            script_timeout_secs: 5,
            min_interval_secs: None,
        }
    }

    /// A writer the test's log goes to.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with the log captured; returns its result and the log.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&log.0.lock().expect("log buffer")).into_owned();
        (out, text)
    }

    #[test]
    fn standard_error_goes_to_the_log_only() {
        let vm = vm1();
        let env = script_env(&vm, "c1", None, "p1", Uuid::new_v4(), "pre");
        let t = Duration::from_secs(5);
        let (out, log) = logged(|| {
            run(
                "echo 'password=hunter2' >&2; printf 'two\\nlines\\033[2J' >&2; exit 4",
                &env,
                t,
            )
        });
        match out {
            Outcome::Failed(m) => {
                assert_eq!(m, "failed (exit status: 4); its standard error was logged");
            }
            o => panic!("{o:?}"),
        }
        let line = log
            .lines()
            .find(|l| l.contains("hunter2"))
            .unwrap_or_else(|| panic!("stderr not logged: {log}"));
        assert!(
            line.contains("pre-script of VM 'vm1' for restore point c1/p1 failed (exit status: 4)")
                && line.contains(r"two\nlines\u{1b}[2J"),
            "{line}"
        );
        // A timeout and a long output: the end of it is logged, bounded.
        let (out, log) = logged(|| {
            run(
                "yes 0123456789 | head -c 100000 >&2; echo LAST >&2; sleep 30",
                &env,
                Duration::from_millis(500),
            )
        });
        assert!(
            matches!(&out, Outcome::Failed(m) if m.contains("timed out") && !m.contains("LAST")),
            "{out:?}"
        );
        assert!(
            log.contains("LAST") && log.len() < 2 * LOGGED_STDERR_MAX,
            "{} bytes",
            log.len()
        );
        // Success logs nothing.
        let (out, log) = logged(|| run("echo chatter >&2", &env, t));
        assert_eq!(out, Outcome::Success(Vec::new()));
        assert!(!log.contains("chatter"), "{log}");
    }

    #[test]
    fn scripts_see_names_and_ids() {
        let vm_id = Uuid::new_v4();
        let (c, p) = (Uuid::new_v4(), Uuid::new_v4());
        let vm = VmRecord { id: vm_id, ..vm1() };
        let env = script_env(&vm, "c1", Some(c), "p1", p, "post");
        let show = "printf '%s|' \"$RPFS_PHASE\" \"$RPFS_VM\" \"$RPFS_VM_ID\" \"$RPFS_COLLECTION\" \
                    \"$RPFS_COLLECTION_ID\" \"$RPFS_POINT\" \"$RPFS_POINT_ID\"";
        assert_eq!(
            run(show, &env, Duration::from_secs(5)),
            Outcome::Success(format!("post|vm1|{vm_id}|c1|{c}|p1|{p}|").into_bytes())
        );
        // Unknown names and ids are unset, not stand-ins.
        let env = script_env(&vm, "", None, "", p, "post");
        let show = "printf '%s|' \"${RPFS_COLLECTION-unset}\" \"${RPFS_COLLECTION_ID-unset}\" \"${RPFS_POINT-unset}\"";
        assert_eq!(
            run(show, &env, Duration::from_secs(5)),
            Outcome::Success(b"unset|unset|unset|".to_vec())
        );
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
