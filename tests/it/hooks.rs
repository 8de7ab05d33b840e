//! Pre/post scripts and configuration capture: the order pre → capture → post, the post-script
//! running when capture fails, failing and timed-out pre-scripts committing nothing, the
//! configuration stored verbatim per point, and the short freeze of reflink clones on XFS.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::RngCore;
use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::ConsistencyMode;
use serde_json::Value;

use crate::common::cli::{assert_mentions, expect_exit};
use crate::common::guards::Mounted;
use crate::common::images::{KIB, MIB, random_image};
use crate::common::store::{TestStore, assert_unchanged, read_image};
use crate::common::sys::{rng, root_or_skip, seed};

/// `rpfs vm add NAME --disk os=DISK EXTRA…` then `collection create COLL --vm NAME`.
fn add_vm(ts: &TestStore, name: &str, disk: &Path, coll: &str, extra: &[&str]) {
    expect_exit(
        ts.cli()
            .args(["vm", "add", name, "--disk"])
            .arg(format!("os={}", disk.display()))
            .args(extra),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", coll, "--vm", name]),
        0,
    );
}

fn point_json(ts: &TestStore, point: &str) -> Value {
    let (out, _) = expect_exit(ts.cli().args(["point", "show", point, "--json"]), 0);
    serde_json::from_str(&out).expect("point show --json")
}

fn point_count(ts: &TestStore) -> usize {
    let (out, _) = expect_exit(ts.cli().args(["point", "list", "--json"]), 0);
    let v: Value = serde_json::from_str(&out).expect("point list --json");
    v.as_array().expect("array").len()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn pre_script_runs_before_capture_and_post_script_after() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    let original = random_image(&disk, 64 * KIB as usize, &mut rng);
    let log = ts.path("hooks.log");
    let write_at_4096 = |marker: &str, word: &str| {
        format!(
            "printf {marker} | dd of='{}' bs=1 seek=4096 conv=notrunc 2>/dev/null && echo {word} >> '{}'",
            disk.display(),
            log.display()
        )
    };
    add_vm(
        &ts,
        "vm1",
        &disk,
        "c1",
        &[
            "--pre-script",
            &write_at_4096("PRE_", "pre"),
            "--post-script",
            &write_at_4096("POST", "post"),
        ],
    );
    let (out, _) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    assert!(out.contains("ApplicationConsistent"), "{out}");

    assert_eq!(read(&log), "pre\npost\n");
    let mut expected = original.clone();
    expected[4096..4100].copy_from_slice(b"PRE_");
    let image = read_image(&ts.reopen(), "c1", "p1", "os");
    assert_eq!(
        &image[4096..4100],
        b"PRE_",
        "the point must hold the frozen state"
    );
    assert!(
        image == expected,
        "the point differs elsewhere from the frozen source"
    );
    assert_eq!(&fs::read(&disk).expect("source")[4096..4100], b"POST");
    let v = point_json(&ts, "c1/p1");
    assert_eq!(v["properties"]["consistencyMode"], "ApplicationConsistent");
}

#[test]
fn post_script_runs_when_capture_fails_and_nothing_is_committed() {
    // (how the pre-script breaks the source, how the post-script repairs it, exit, reason)
    let cases = [
        (
            "mv '{d}' '{d}.bak' && mkdir '{d}'",
            "rmdir '{d}' && mv '{d}.bak' '{d}'",
            7,
            "is a directory",
        ),
        (
            "mv '{d}' '{d}.bak'",
            "mv '{d}.bak' '{d}'",
            1,
            "does not exist",
        ),
    ];
    for (pre, post, code, reason) in cases {
        let mut rng = rng(seed());
        let ts = TestStore::new(4096);
        let disk = ts.path("os.img");
        let original = random_image(&disk, 32 * KIB as usize, &mut rng);
        let log = ts.path("hooks.log");
        let d = disk.display().to_string();
        let pre = format!(
            "echo pre >> '{}'; {}",
            log.display(),
            pre.replace("{d}", &d)
        );
        let post = format!(
            "echo post >> '{}'; {}",
            log.display(),
            post.replace("{d}", &d)
        );
        add_vm(
            &ts,
            "vm1",
            &disk,
            "c1",
            &["--pre-script", &pre, "--post-script", &post],
        );
        let before = ts.snapshot();

        let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), code);
        assert_mentions(&err, &["disk 'os'", &d, reason]);
        assert_eq!(read(&log), "pre\npost\n", "{reason}");
        // The post-script ran after the failure: it found the source broken and repaired it.
        assert!(fs::read(&disk).expect("source repaired") == original);
        assert_eq!(point_count(&ts), 0);
        expect_exit(ts.cli().args(["check"]), 0);
        assert_unchanged(&before, &ts.snapshot(), "a failed capture");
        let clones: Vec<_> = fs::read_dir(ts.dir.path())
            .expect("list source dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".rpfs-clone-"))
            .collect();
        assert!(
            clones.is_empty(),
            "clones left beside the source: {clones:?}"
        );
    }
}

#[test]
fn failing_pre_script_commits_nothing_unless_crash_consistency_was_asked() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    let content = random_image(&disk, 16 * KIB as usize, &mut rng);
    let log = ts.path("hooks.log");
    let pre = format!(
        "echo pre >> '{}'; echo 'fsfreeze: cannot freeze' >&2; exit 3",
        log.display()
    );
    let post = format!("echo post >> '{}'", log.display());
    add_vm(
        &ts,
        "vm1",
        &disk,
        "c1",
        &["--pre-script", &pre, "--post-script", &post],
    );
    let before = ts.snapshot();

    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 9);
    assert_mentions(
        &err,
        &["pre-script", "VM 'vm1'", "exit status: 3", "cannot freeze"],
    );
    assert_unchanged(&before, &ts.snapshot(), "a failing pre-script");
    assert_eq!(
        read(&log),
        "pre\npost\n",
        "the post-script thaws after a failed pre-script"
    );
    assert_eq!(point_count(&ts), 0);

    let (_, err) = expect_exit(
        ts.cli()
            .args(["point", "create", "c1", "p1", "--consistency", "crash"]),
        0,
    );
    assert_mentions(&err, &["warning", "pre-script", "exit status: 3"]);
    assert_eq!(read(&log), "pre\npost\npre\npost\n");
    let v = point_json(&ts, "c1/p1");
    assert_eq!(v["properties"]["consistencyMode"], "CrashConsistent");
    assert!(read_image(&ts.reopen(), "c1", "p1", "os") == content);
}

/// True once `pid` has exited (gone, or a zombie not yet reaped by its new parent).
fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn pre_script_timeout_kills_its_process_group_and_fails() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng);
    let (pid_sh, pid_sleep, log) = (ts.path("PID1"), ts.path("PID2"), ts.path("hooks.log"));
    let pre = format!(
        "echo $$ > '{}'; sleep 30 & echo $! > '{}'; wait",
        pid_sh.display(),
        pid_sleep.display()
    );
    let post = format!("echo post >> '{}'", log.display());
    add_vm(
        &ts,
        "vm1",
        &disk,
        "c1",
        &[
            "--pre-script",
            &pre,
            "--post-script",
            &post,
            "--script-timeout",
            "1",
        ],
    );
    let before = ts.snapshot();

    let t = Instant::now();
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 9);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "took {took:?}: killed before its timeout"
    );
    assert_mentions(&err, &["pre-script", "VM 'vm1'", "timed out"]);
    assert_unchanged(&before, &ts.snapshot(), "a timed-out pre-script");
    assert_eq!(read(&log), "post\n");

    for f in [&pid_sh, &pid_sleep] {
        let pid: i32 = read(f).trim().parse().expect("pid");
        let start = Instant::now();
        while !process_gone(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "process {pid} ({}) still runs after the timeout",
                f.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn configuration_is_captured_verbatim_at_each_point() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng);

    // From a command, which sees RPFS_VM.
    add_vm(
        &ts,
        "vm1",
        &disk,
        "c1",
        &[
            "--config-command",
            r#"printf "<domain>%s</domain>" $RPFS_VM"#,
        ],
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    let to = ts.path("r1");
    expect_exit(ts.cli().args(["restore", "c1/p1", "--to"]).arg(&to), 0);
    assert_eq!(
        fs::read(to.join("vm-config")).expect("vm-config"),
        b"<domain>vm1</domain>"
    );
    assert_eq!(point_json(&ts, "c1/p1")["rpfs"]["configBytes"], 20);

    // From a file, read again at each point; bytes that are not text survive.
    let cfg = ts.path("vm2.xml");
    let versions: [&[u8]; 2] = [
        b"<domain>\0\xff one</domain>\n",
        b"  <domain type='kvm'>two, longer\r\n\t</domain>",
    ];
    fs::write(&cfg, versions[0]).expect("config v1");
    add_vm(
        &ts,
        "vm2",
        &disk,
        "c2",
        &["--config-file", &cfg.display().to_string()],
    );
    expect_exit(ts.cli().args(["point", "create", "c2", "q1"]), 0);
    fs::write(&cfg, versions[1]).expect("config v2");
    expect_exit(ts.cli().args(["point", "create", "c2", "q2"]), 0);
    for (i, want) in versions.iter().enumerate() {
        let name = format!("q{}", i + 1);
        let to = ts.path(&format!("r-{name}"));
        expect_exit(
            ts.cli()
                .args(["restore", &format!("c2/{name}"), "--to"])
                .arg(&to),
            0,
        );
        assert_eq!(
            fs::read(to.join("vm-config")).expect("vm-config"),
            *want,
            "{name}"
        );
        assert_eq!(
            point_json(&ts, &format!("c2/{name}"))["rpfs"]["configBytes"],
            want.len() as u64
        );
    }

    // A failing configuration command fails the creation and commits nothing.
    add_vm(
        &ts,
        "vm3",
        &disk,
        "c3",
        &[
            "--config-command",
            "echo 'error: domain not found' >&2; exit 4",
        ],
    );
    let before = ts.snapshot();
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c3", "r1"]), 9);
    assert_mentions(
        &err,
        &[
            "configuration command",
            "VM 'vm3'",
            "exit status: 4",
            "domain not found",
        ],
    );
    assert_unchanged(&before, &ts.snapshot(), "a failing configuration command");
}

#[test]
fn application_or_filesystem_consistency_without_a_pre_script_is_refused() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng);
    let post = format!("echo post >> '{}'", ts.path("hooks.log").display());
    add_vm(&ts, "vm1", &disk, "c1", &["--post-script", &post]);
    let before = ts.snapshot();
    for mode in ["application", "filesystem"] {
        let (_, err) = expect_exit(
            ts.cli()
                .args(["point", "create", "c1", "p1", "--consistency", mode]),
            2,
        );
        assert_mentions(&err, &["VM 'vm1'", "pre-script", "--consistency crash"]);
        assert_unchanged(&before, &ts.snapshot(), mode);
    }
    assert!(
        !ts.path("hooks.log").exists(),
        "a refused creation ran a script"
    );
    let (out, _) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    assert!(out.contains("CrashConsistent"), "{out}");
}

#[test]
fn reflink_clones_keep_the_freeze_short() {
    if !root_or_skip("reflink_clones_keep_the_freeze_short") {
        return;
    }
    let mut rng = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let mnt = ts.path("mnt");
    let _mount = Mounted::xfs_with_reflinks(&ts.path("xfs.img"), &mnt, "1G");

    let src_dir = mnt.join("vms");
    fs::create_dir(&src_dir).expect("source dir");
    let disk = src_dir.join("os.img");
    let mut content = vec![0u8; 256 * MIB as usize];
    rng.fill_bytes(&mut content);
    fs::write(&disk, &content).expect("write source");
    // Written back before the creation, as a running VM's disk mostly is: cloning a file full of
    // dirty pages would first write them out, and that is not the cost measured here.
    fs::File::open(&disk)
        .and_then(|f| f.sync_all())
        .expect("sync source");
    let (t_pre, t_post) = (ts.path("t_pre"), ts.path("t_post"));
    ts.engine
        .add_vm(&VmSpec {
            name: "vm1".into(),
            disks: vec![("os".into(), disk.clone())],
            pre_script: Some(format!("date +%s.%N > '{}'", t_pre.display())),
            post_script: Some(format!(
                "date +%s.%N > '{}'; printf POSTMARK | dd of='{}' conv=notrunc 2>/dev/null",
                t_post.display(),
                disk.display()
            )),
            ..VmSpec::default()
        })
        .expect("add vm");
    ts.engine
        .create_collection("c1", "vm1", None)
        .expect("collection");

    let t = Instant::now();
    let outcome = ts
        .engine
        .create_point(
            &CreateRequest {
                collection: "c1".into(),
                name: "p1".into(),
                exclude: vec![],
                consistency: None,
            },
            &Silent,
        )
        .expect("create");
    let wall = t.elapsed().as_secs_f64();

    assert_eq!(outcome.cloned_disks, ["os"]);
    assert_eq!(
        outcome.point.consistency_mode,
        ConsistencyMode::ApplicationConsistent
    );
    let time = |p: &Path| -> f64 { read(p).trim().parse().expect("time") };
    let freeze = time(&t_post) - time(&t_pre);
    eprintln!("freeze {freeze:.3} s of a {wall:.3} s creation");
    assert!(freeze >= 0.0, "post-script ran before the pre-script");
    assert!(
        freeze < 0.3 * wall,
        "frozen {freeze:.3} s of a {wall:.3} s creation: the VM was not thawed after cloning"
    );
    let frozen = outcome.frozen.expect("frozen reported").as_secs_f64();
    assert!(
        frozen < 0.3 * wall,
        "reported frozen {frozen:.3} s of {wall:.3} s"
    );

    assert_eq!(&fs::read(&disk).expect("source")[..8], b"POSTMARK");
    assert_ne!(&content[..8], b"POSTMARK");
    let engine = ts.reopen();
    let cat = engine.catalog().expect("catalog");
    let (_, point) = cat.point("c1", "p1").expect("point");
    let image = engine.open_disk("c1", point, "os").expect("open disk");
    assert_eq!(image.size(), content.len() as u64);
    let mut buf = vec![0u8; 4 * MIB as usize];
    for (i, chunk) in content.chunks(buf.len()).enumerate() {
        let off = (i * buf.len()) as u64;
        let n = image.read_at(off, &mut buf[..chunk.len()]).expect("read");
        assert_eq!(n, chunk.len());
        assert!(
            buf[..n] == *chunk,
            "point differs from the pre-freeze source at {off}"
        );
    }
    let leftovers: Vec<String> = fs::read_dir(&src_dir)
        .expect("list source dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".rpfs-clone-"))
        .collect();
    assert!(leftovers.is_empty(), "clones left behind: {leftovers:?}");
}
