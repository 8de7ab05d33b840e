//! Security tests: records (see the module list in `security`).
//!
//! - `check` refuses records the CLI would never write (crafted with the store's own record
//!   writer, so only the rule, not the envelope, is broken) and names each, and a repair leaves
//!   them as they are (it would have to guess a rename);
//! - what a hook writes to standard error (a secret, here) reaches the log and no JSON: not the
//!   error a creation records in `collection.json` (read through the CLI and, as the attacker,
//!   through a mount), not a scheduled run's record, not any file of the store;
//! - hooks see names in `RPFS_VM`, `RPFS_COLLECTION` and `RPFS_POINT`, ids in `*_ID`, also when
//!   recovery thaws a VM a killed creation left frozen.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rpfs::store::records::{CollectionRecord, PendingOp, PointRecord, VmRecord};
use rpfs::store::{kind, layout, read_record, write_record};
use serde_json::Value;

use crate::common::attacker::umask_022;
use crate::common::cli::{assert_mentions, expect_exit};
use crate::common::guards::KillGroupOnDrop;
use crate::common::images::{KIB, random_image};
use crate::common::mount::{MountGuard, as_nobody, fuse_or_skip};
use crate::common::store::TestStore;
use crate::common::sys::{rng, root_or_skip, seed, wait_until};

/// A store with VM `vm` (disks `os` and `data`), collection `c` and point `c/p1`.
fn two_disk_store() -> (TestStore, PointRecord) {
    let ts = TestStore::new(4096);
    let mut rng = rng(seed());
    let (os, data) = (ts.path("os.img"), ts.path("data.img"));
    random_image(&os, 32 * KIB as usize, &mut rng);
    random_image(&data, 16 * KIB as usize, &mut rng);
    ts.vm("vm", &[("os", &os), ("data", &data)], "c");
    let p1 = ts.create("c", "p1");
    (ts, p1)
}

/// Rewrites the record at `key` (of `kind`) with `edit`, through the store's own writer.
fn rewrite<T>(ts: &TestStore, key: &str, kind: &str, edit: impl FnOnce(&mut T))
where
    T: serde::de::DeserializeOwned + serde::Serialize + rpfs::store::records::Record,
{
    let storage = &**ts.engine.storage();
    let mut record: T = read_record(storage, key, kind).expect("read record");
    edit(&mut record);
    write_record(storage, key, kind, &record).expect("write record");
}

#[test]
fn check_names_every_record_the_cli_would_refuse_and_repair_renames_nothing() {
    umask_022();
    type Craft = fn(&TestStore, &PointRecord) -> String;
    // (what is crafted, how, what the finding must say besides the record's key)
    let cases: [(&str, Craft, &[&str]); 6] = [
        (
            "a point named latest",
            |ts, p| {
                let key = layout::point(p.vm_id, p.id);
                rewrite(ts, &key, kind::POINT, |r: &mut PointRecord| {
                    r.name = "latest".into()
                });
                key
            },
            &["'latest' is reserved"],
        ),
        (
            "a point named collection.json",
            |ts, p| {
                let key = layout::point(p.vm_id, p.id);
                rewrite(ts, &key, kind::POINT, |r: &mut PointRecord| {
                    r.name = "collection.json".into()
                });
                key
            },
            &["\"collection.json\"", "must not end in .json"],
        ),
        (
            "two disks of one point with the same name",
            |ts, p| {
                let key = layout::point(p.vm_id, p.id);
                rewrite(ts, &key, kind::POINT, |r: &mut PointRecord| {
                    r.disks[1].name = "os".into()
                });
                "restore point c/p1".into()
            },
            &["disk name 'os' is used 2 times"],
        ),
        (
            "two disks of one VM with the same name",
            |ts, p| {
                let key = layout::vm_record(p.vm_id);
                rewrite(ts, &key, kind::VM, |r: &mut VmRecord| {
                    r.disks[1].name = "os".into()
                });
                key
            },
            &["disk name 'os' is used 2 times"],
        ),
        (
            "a collection named latest",
            |ts, p| {
                let key = layout::collection(p.vm_id, p.collection_id);
                rewrite(ts, &key, kind::COLLECTION, |r: &mut CollectionRecord| {
                    r.name = "latest".into()
                });
                key
            },
            &["'latest' is reserved"],
        ),
        (
            "a point holding a disk its VM does not have",
            |ts, p| {
                let key = layout::vm_record(p.vm_id);
                rewrite(ts, &key, kind::VM, |r: &mut VmRecord| r.disks.truncate(1));
                "restore point c/p1".into()
            },
            &["disk 'data'", "is not a disk of VM 'vm'"],
        ),
    ];
    for (what, craft, mentions) in cases {
        let (ts, p1) = two_disk_store();
        let record = craft(&ts, &p1);
        let crafted = ts.snapshot();

        let (_, err) = expect_exit(ts.cli().args(["check"]), 10);
        let finding = err
            .lines()
            .find(|l| l.starts_with("problem: ") && l.contains(&record))
            .unwrap_or_else(|| panic!("{what}: no finding names {record}: {err}"));
        assert_mentions(finding, mentions);

        // Reported, never mended: a repair has no rename to guess, and removes nothing.
        let (_, err) = expect_exit(ts.cli().args(["check", "--repair", "--yes"]), 10);
        assert!(
            err.lines()
                .any(|l| l.starts_with("problem: ") && l.contains(&record)),
            "{what}: repair does not report it: {err}"
        );
        assert_eq!(ts.snapshot(), crafted, "{what}: repair changed the store");
    }
}

/// A VM `vm1` whose `--pre-script` and `--post-script` print the secret in `secret_file` to
/// standard error and fail (3 and 4); the scripts' text holds only the file's path. Returns the
/// secret.
fn vm_with_leaky_scripts(ts: &TestStore) -> String {
    let secret = format!("hunter2-{}", uuid::Uuid::new_v4().simple());
    let secret_file = ts.path("secret");
    fs::write(&secret_file, &secret).expect("secret");
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng(seed()));
    let leak = |code: u8| {
        format!(
            "echo \"connecting with password $(cat '{}')\" >&2; exit {code}",
            secret_file.display()
        )
    };
    expect_exit(
        ts.cli()
            .args(["vm", "add", "vm1", "--disk"])
            .arg(format!("os={}", disk.display()))
            .args(["--pre-script", &leak(3), "--post-script", &leak(4)]),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    secret
}

/// Every file under `root` whose content holds `needle`.
fn files_holding(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let md = fs::symlink_metadata(&p).expect("metadata");
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file()
                && fs::read(&p)
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn hook_stderr_goes_to_the_log_and_into_no_json() {
    umask_022();
    let ts = TestStore::new(4096);
    let secret = vm_with_leaky_scripts(&ts);
    let error_lines = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter(|l| l.starts_with("rpfs: error: ") || l.starts_with("warning: "))
            .map(str::to_string)
            .collect()
    };

    // A creation the pre-script fails: the error says why in rpfs's words; the script's output
    // reaches the user who ran it through the log (warn, on standard error), and nothing else.
    let (_, err) = expect_exit(
        ts.cli()
            .env("RPFS_LOG", "warn")
            .args(["point", "create", "c1", "p1"]),
        9,
    );
    let errors = error_lines(&err);
    assert_mentions(&errors.join("\n"), &["pre-script", "exit status: 3"]);
    assert!(
        !errors.iter().any(|l| l.contains(&secret)),
        "the error holds the script's output: {errors:?}"
    );
    // (The post-script, run to thaw after the failed pre-script, fails and logs too.)
    assert!(
        err.lines().any(|l| l.contains(&secret)
            && l.contains("WARN")
            && l.contains("pre-script of VM 'vm1' for restore point c1/p1")),
        "the script's output is not in the log: {err}"
    );

    // Crash-consistent, both scripts fail: a point with warnings that do not hold the output.
    let (out, err) = expect_exit(
        ts.cli()
            .args(["point", "create", "c1", "p2", "--consistency", "crash"]),
        0,
    );
    let warnings = error_lines(&err);
    assert_mentions(&warnings.join("\n"), &["exit status: 3", "exit status: 4"]);
    assert!(
        !out.contains(&secret) && !warnings.iter().any(|l| l.contains(&secret)),
        "{out}{warnings:?}"
    );

    // A scheduled run the pre-script fails: its record says why, without the output.
    expect_exit(
        ts.cli()
            .args(["collection", "set", "c1", "--schedule", "1h"]),
        0,
    );
    let due = ts.cli().arg("run-due").output().expect("run-due");
    assert!(
        String::from_utf8_lossy(&due.stderr).contains(&secret),
        "run-due does not log the script's output"
    );
    let (show, _) = expect_exit(ts.cli().args(["collection", "show", "c1", "--json"]), 0);
    let v: Value = serde_json::from_str(&show).expect("collection show --json");
    let last = &v["rpfs"]["schedule"]["lastRun"];
    assert_eq!(last["result"], "Failed", "{show}");
    assert_mentions(
        last["error"].as_str().expect("an error"),
        &["pre-script", "exit status: 3"],
    );
    assert!(!show.contains(&secret), "collection show --json: {show}");

    // No JSON the CLI shows, and no file of the store, holds it.
    for args in [
        &["point", "show", "c1/p2", "--json"][..],
        &["point", "list", "--json"],
        &["collection", "list", "--json"],
        &["vm", "show", "vm1", "--json"],
    ] {
        let (out, _) = expect_exit(ts.cli().args(args), 0);
        assert!(!out.contains(&secret), "{args:?}: {out}");
    }
    assert_eq!(
        files_holding(&ts.store_path(), &secret),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn hook_stderr_stays_out_of_the_mounts_collection_json() {
    umask_022();
    if !root_or_skip("hook_stderr_stays_out_of_the_mounts_collection_json")
        || !fuse_or_skip("hook_stderr_stays_out_of_the_mounts_collection_json")
    {
        return;
    }
    let ts = TestStore::new(4096);
    let secret = vm_with_leaky_scripts(&ts);
    let log = ts.path("mount.log");
    let m = MountGuard::wrapped(
        &ts.store_path(),
        &["--allow-other", "--no-schedule"],
        &format!("exec 2>>'{}';", log.display()),
    );

    assert!(
        fs::create_dir(m.path("c1/p1")).is_err(),
        "mkdir succeeded with a failing pre-script"
    );
    let json = fs::read_to_string(m.path("c1/collection.json")).expect("collection.json");
    let v: Value = serde_json::from_str(&json).expect("collection.json is JSON");
    let last = &v["rpfs"]["lastOperation"];
    assert_eq!(last["status"], "Failed", "{json}");
    assert_mentions(
        last["error"].as_str().expect("an error"),
        &["pre-script", "exit status: 3"],
    );
    assert!(!json.contains(&secret), "collection.json: {json}");
    // What the attacker reads, when the mount lets them read it at all.
    let seen = as_nobody(&m, "cat c1/collection.json");
    if seen.status.success() {
        assert!(!String::from_utf8_lossy(&seen.stdout).contains(&secret));
    }

    wait_until("the log names the output", Duration::from_secs(5), || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains(&secret))
    });
    drop(m);
    assert_eq!(
        files_holding(&ts.store_path(), &secret),
        Vec::<PathBuf>::new()
    );
}

/// The lines scripts wrote to `env.log`: "PHASE VM VM_ID COLLECTION COLLECTION_ID POINT
/// POINT_ID" (unset variables as `-`).
fn env_script(log: &Path) -> String {
    format!(
        "echo \"$RPFS_PHASE ${{RPFS_VM:--}} ${{RPFS_VM_ID:--}} ${{RPFS_COLLECTION:--}} \
         ${{RPFS_COLLECTION_ID:--}} ${{RPFS_POINT:--}} ${{RPFS_POINT_ID:--}}\" >> '{}'",
        log.display()
    )
}

#[test]
fn hooks_see_the_points_name_in_rpfs_point_and_its_id_in_rpfs_point_id() {
    umask_022();
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng(seed()));
    let log = ts.path("env.log");
    expect_exit(
        ts.cli()
            .args(["vm", "add", "vm1", "--disk"])
            .arg(format!("os={}", disk.display()))
            .args(["--pre-script", &env_script(&log)])
            .args(["--post-script", &env_script(&log)]),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "daily-1"]), 0);

    let cat = ts.reopen().catalog().expect("catalog");
    let (c, p) = cat.point("c1", "daily-1").expect("point");
    let tail = format!("vm1 {} c1 {} daily-1 {}", p.vm_id, c.id, p.id);
    assert_eq!(
        fs::read_to_string(&log).expect("env.log"),
        format!("pre {tail}\npost {tail}\n")
    );
}

#[test]
fn a_thaw_by_recovery_sees_the_points_name_too() {
    umask_022();
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng(seed()));
    let (pid, frozen, log) = (ts.path("pre.pid"), ts.path("frozen"), ts.path("env.log"));
    let pre = format!(
        "echo $$ > '{}'; touch '{}'; sleep 30",
        pid.display(),
        frozen.display()
    );
    expect_exit(
        ts.cli()
            .args(["vm", "add", "vm1", "--disk"])
            .arg(format!("os={}", disk.display()))
            .args(["--pre-script", &pre, "--post-script", &env_script(&log)])
            .args(["--script-timeout", "60"]),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    // The pre-script runs in a process group of its own, which outlives the killed rpfs.
    let _pre_script = KillGroupOnDrop::from_file(&pid);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpfs"))
        .args(["point", "create", "c1", "weekly-1"])
        .env("RPFS_STORE", ts.store_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until("the pre-script", Duration::from_secs(10), || {
        frozen.exists()
    });
    child.kill().expect("kill");
    child.wait().expect("wait");
    let cat = ts.engine.catalog().expect("catalog");
    let vm = cat.vm("vm1").expect("vm1").clone();
    let c = cat.collection("c1").expect("c1").clone();
    let marker: PendingOp = read_record(
        &**ts.engine.storage(),
        &layout::pending(vm.id),
        kind::PENDING,
    )
    .expect("the killed creation's marker");

    // Any command recovers: it runs the post-script to thaw the VM.
    expect_exit(ts.cli().args(["point", "list"]), 0);
    assert_eq!(
        fs::read_to_string(&log).expect("env.log"),
        format!(
            "post vm1 {} c1 {} weekly-1 {}\n",
            vm.id, c.id, marker.point_id
        )
    );
}
