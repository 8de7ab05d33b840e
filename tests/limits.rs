//! Limits: at most 500 restore points per VM across its collections, one creation or deletion
//! at a time per VM (an OS lock the kernel releases when its holder dies), unsupported sources
//! refused at `vm add` and again at each creation, unsupported disk types and uniform scale
//! sets, and block devices as sources.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rpfs::engine::ErrorKind;
use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::{Orchestration, VmRecord};
use rpfs::store::{kind, layout, read_record, write_record};
use serde_json::Value;

/// The rpfs binary as a plain child process pointed at `store`.
fn spawn_rpfs(store: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rpfs"))
        .env("RPFS_STORE", store)
        .env_remove("RPFS_LOG")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rpfs")
}

/// Waits until `path` exists; panics with the child's output if it ends first.
fn wait_for_file(path: &Path, child: &mut Child, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let out = child_output(child);
            panic!(
                "rpfs ended ({status}) before {} appeared: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < timeout,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn child_output(child: &mut Child) -> Output {
    use std::io::Read;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_end(&mut stderr);
    }
    let status = child.wait().expect("wait");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Kills a child left running by a failed assertion, so no process outlives the test.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills a process group (the pre-script's, which rpfs starts in its own group) by id.
struct KillGroupOnDrop(PathBuf);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Ok(pgid) = fs::read_to_string(&self.0)
            && let Ok(pgid) = pgid.trim().parse::<i32>()
            && pgid > 1
        {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn five_hundred_points_across_two_collections_then_refused_until_one_is_deleted() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    let mut content = random_image(&disk, 16 * KIB as usize, &mut rng);
    ts.vm("vm1", &[("os", &disk)], "c1");
    ts.engine
        .create_collection("c2", "vm1", None)
        .expect("collection c2");

    for i in 0..500 {
        if i % 50 == 0 {
            change_blocks(&disk, &mut content, 4096, 0.25, &mut rng);
        }
        let coll = if i % 2 == 0 { "c1" } else { "c2" };
        create(&ts.engine, coll, &format!("p{i}"));
    }
    let cat = ts.engine.catalog().expect("catalog");
    assert_eq!(cat.points.len(), 500);
    for c in ["c1", "c2"] {
        let id = cat.collection(c).expect("collection").id;
        // Each collection alone is far below the limit: any refusal counts across collections.
        assert_eq!(cat.points_in(id).count(), 250, "points in {c}");
    }

    let before = ts.snapshot();
    for coll in ["c1", "c2"] {
        let (_, err) = expect_exit(ts.cli().args(["point", "create", coll, "p500"]), 5);
        assert_mentions(
            &err,
            &[
                "VM 'vm1'",
                "500 restore points",
                "limit is 500",
                "delete some",
            ],
        );
    }
    assert_unchanged(&before, &ts.snapshot(), "a refused 501st point");

    expect_exit(ts.cli().args(["point", "delete", "c1/p0"]), 0);
    let (out, _) = expect_exit(ts.cli().args(["point", "create", "c2", "p500"]), 0);
    assert!(out.contains("c2/p500"), "{out}");
    // Back at 500: refused again, also in the collection that lost a point.
    let before = ts.snapshot();
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p501"]), 5);
    assert_mentions(&err, &["VM 'vm1'", "500 restore points", "limit is 500"]);
    assert_unchanged(&before, &ts.snapshot(), "a refused point at the limit");

    let engine = ts.reopen();
    assert_eq!(engine.catalog().expect("catalog").points.len(), 500);
    assert!(read_image(&engine, "c2", "p500", "os") == content);
    expect_exit(ts.cli().args(["check"]), 0);
}

fn request(coll: &str, name: &str) -> CreateRequest {
    CreateRequest {
        collection: coll.into(),
        name: name.into(),
        exclude: vec![],
        consistency: None,
    }
}

/// Regression: a VM lock released by one thread must be free at once even while another thread
/// forks children (which share the lock's file description until they exec). `LockGuard`
/// unlocks explicitly on drop instead of relying on the close.
#[test]
fn a_released_vm_lock_is_free_while_other_threads_spawn_processes() {
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    write_sparse(&disk, &[7u8; 16 * KIB as usize]);
    ts.vm("vm1", &[("os", &disk)], "c1");
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new("true").status();
            }
        })
    };
    let mut busy = Vec::new();
    for i in 0..100 {
        let name = format!("p{i}");
        if let Err(e) = ts.engine.create_point(&request("c1", &name), &Silent) {
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            busy.push(name);
        }
    }
    stop.store(true, Ordering::Relaxed);
    spawner.join().expect("spawner");
    assert!(
        busy.is_empty(),
        "refused as busy with nothing else running: {busy:?}"
    );
}

/// A VM whose pre-script, once `slow` exists, writes its process group id, touches `marker`
/// and sleeps 3 s; its post-script appends "post" to `log`.
fn slow_vm(ts: &TestStore, name: &str, disk: &Path, slow: &Path, marker: &Path, pgid: &Path) {
    let pre = format!(
        "if [ -e '{}' ]; then echo $$ > '{}'; touch '{}'; sleep 3; fi",
        slow.display(),
        pgid.display(),
        marker.display()
    );
    ts.engine
        .add_vm(&VmSpec {
            name: name.into(),
            disks: vec![("os".into(), disk.to_path_buf())],
            pre_script: Some(pre),
            post_script: Some(format!("echo post >> '{}'", ts.path("post.log").display())),
            ..VmSpec::default()
        })
        .expect("add vm");
}

#[test]
fn second_creation_or_deletion_on_a_busy_vm_is_refused_at_once_other_vms_proceed() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk1 = ts.path("vm1.img");
    let disk2 = ts.path("vm2.img");
    random_image(&disk1, 16 * KIB as usize, &mut rng);
    random_image(&disk2, 16 * KIB as usize, &mut rng);
    let (slow, marker, pgid) = (ts.path("SLOW"), ts.path("MARKER"), ts.path("PGID"));
    slow_vm(&ts, "vm1", &disk1, &slow, &marker, &pgid);
    ts.engine.create_collection("c1", "vm1", None).expect("c1");
    ts.engine.create_collection("c2", "vm1", None).expect("c2");
    ts.vm("vm2", &[("os", &disk2)], "d1");
    ts.create("c1", "base");

    fs::write(&slow, b"").expect("slow");
    let started = Instant::now();
    let mut first = KillOnDrop(Some(spawn_rpfs(
        &ts.store_path(),
        &["point", "create", "c1", "a"],
    )));
    let _group = KillGroupOnDrop(pgid.clone());
    wait_for_file(
        &marker,
        first.0.as_mut().expect("child"),
        Duration::from_secs(30),
    );

    for args in [
        &["point", "create", "c2", "b"][..],
        &["point", "delete", "c1/base"][..],
        &["collection", "delete", "c2"][..],
    ] {
        let t = Instant::now();
        let (_, err) = expect_exit(ts.cli().args(args), 6);
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "{args:?} took {took:?}: it waited instead of refusing at once"
        );
        assert_mentions(&err, &["VM 'vm1'", "busy"]);
    }
    // Another VM is not held up.
    let t = Instant::now();
    expect_exit(ts.cli().args(["point", "create", "d1", "x"]), 0);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        first
            .0
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "the first creation ended before the refusals were checked; the test proves nothing"
    );

    let out = child_output(first.0.as_mut().expect("child"));
    first.0 = None;
    // The pre-script's group is gone with it; its id must not be used again.
    fs::remove_file(&pgid).expect("pgid file");
    assert!(
        out.status.success(),
        "first creation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    let mut names = point_names(&ts);
    names.sort();
    assert_eq!(names, ["c1/a", "c1/base", "d1/x"]);
    assert_eq!(
        fs::read_to_string(ts.path("post.log")).expect("post log"),
        "post\npost\n",
        "post-script runs once per creation of vm1"
    );
    expect_exit(ts.cli().args(["check"]), 0);
}

#[test]
fn lock_of_a_killed_creator_is_released_by_the_kernel() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("vm1.img");
    random_image(&disk, 16 * KIB as usize, &mut rng);
    let (slow, marker, pgid) = (ts.path("SLOW"), ts.path("MARKER"), ts.path("PGID"));
    slow_vm(&ts, "vm1", &disk, &slow, &marker, &pgid);
    ts.engine.create_collection("c1", "vm1", None).expect("c1");
    ts.create("c1", "base");
    let before = ts.snapshot();

    fs::write(&slow, b"").expect("slow");
    let mut first = KillOnDrop(Some(spawn_rpfs(
        &ts.store_path(),
        &["point", "create", "c1", "a"],
    )));
    let group = KillGroupOnDrop(pgid.clone());
    let child = first.0.as_mut().expect("child");
    wait_for_file(&marker, child, Duration::from_secs(30));
    assert!(
        ts.store_path()
            .join(format!(
                "vms/{}/pending.json",
                ts.engine.catalog().expect("catalog").vms[0].id
            ))
            .exists(),
        "the creation should be in flight"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    first.0 = None;
    // The orphaned pre-script would sleep on; end it (it holds no rpfs lock).
    drop(group);
    fs::remove_file(&slow).expect("unslow");

    let t = Instant::now();
    expect_exit(ts.cli().args(["point", "create", "c1", "after"]), 0);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(point_names(&ts), ["c1/base", "c1/after"]);
    expect_exit(ts.cli().args(["check"]), 0);
    // Nothing of the killed attempt is left: without the new point the store is as before.
    expect_exit(ts.cli().args(["point", "delete", "c1/after"]), 0);
    assert_unchanged(
        &before,
        &ts.snapshot(),
        "a killed creation and its recovery",
    );
}

/// Every kind of unsupported source, made for real, with the reason rpfs must give.
struct Unsupported {
    label: &'static str,
    path: PathBuf,
    reason: &'static [&'static str],
}

fn unsupported_sources(dir: &Path) -> (Vec<Unsupported>, UnixListener) {
    require_tool("qemu-img");
    fs::create_dir_all(dir).expect("mkdir");
    let mut out = Vec::new();
    for (format, ext, reason) in [
        (
            "qcow2",
            "qcow2",
            &["is a qcow2 image", "not a raw image"][..],
        ),
        ("qed", "qed", &["is a QED image", "not a raw image"][..]),
        ("vmdk", "vmdk", &["is a VMDK image", "not a raw image"][..]),
        ("vdi", "vdi", &["is a VDI image", "not a raw image"][..]),
        ("vhdx", "vhdx", &["is a VHDX image", "not a raw image"][..]),
        ("vpc", "vhd", &["is a VHD", "not a raw image"][..]),
    ] {
        let path = dir.join(format!("disk.{ext}"));
        sh(&format!(
            "qemu-img create -q -f {format} '{}' 8M",
            path.display()
        ));
        out.push(Unsupported {
            label: format,
            path,
            reason,
        });
    }
    let d = dir.join("a-directory");
    fs::create_dir(&d).expect("mkdir");
    out.push(Unsupported {
        label: "directory",
        path: d,
        reason: &["is a directory"],
    });
    let fifo = dir.join("a-fifo");
    sh(&format!("mkfifo '{}'", fifo.display()));
    out.push(Unsupported {
        label: "fifo",
        path: fifo,
        reason: &["is a FIFO"],
    });
    let sock = dir.join("a-socket");
    let listener = UnixListener::bind(&sock).expect("bind socket");
    out.push(Unsupported {
        label: "socket",
        path: sock,
        reason: &["is a socket"],
    });
    out.push(Unsupported {
        label: "character device",
        path: PathBuf::from("/dev/null"),
        reason: &["is a character device"],
    });
    let empty = dir.join("empty.img");
    fs::write(&empty, b"").expect("empty");
    out.push(Unsupported {
        label: "empty file",
        path: empty,
        reason: &["is empty"],
    });
    (out, listener)
}

#[test]
fn unsupported_sources_are_refused_at_vm_add_and_change_nothing() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let good = ts.path("os.img");
    random_image(&good, 16 * KIB as usize, &mut rng);
    let (bad, _listener) = unsupported_sources(&ts.path("bad"));
    let before = ts.snapshot();

    for (i, b) in bad.iter().enumerate() {
        let (_, err) = expect_exit(
            ts.cli()
                .args(["vm", "add", &format!("vm{i}"), "--disk"])
                .arg(format!("os={}", good.display()))
                .arg("--disk")
                .arg(format!("data={}", b.path.display())),
            7,
        );
        assert_mentions(&err, &["disk 'data'", &b.path.display().to_string()]);
        assert_mentions(&err, b.reason);
        assert!(
            !err.contains("disk 'os'"),
            "{}: blames the wrong disk: {err}",
            b.label
        );
        assert_unchanged(&before, &ts.snapshot(), b.label);
    }

    let missing = ts.path("no-such.img");
    let (_, err) = expect_exit(
        ts.cli()
            .args(["vm", "add", "vmx", "--disk"])
            .arg(format!("os={}", good.display()))
            .arg("--disk")
            .arg(format!("data={}", missing.display())),
        1,
    );
    assert_mentions(
        &err,
        &[
            "disk 'data'",
            &missing.display().to_string(),
            "does not exist",
        ],
    );
    assert_unchanged(&before, &ts.snapshot(), "a missing source");

    // The good image alone is accepted: the refusals were about the bad sources.
    expect_exit(
        ts.cli()
            .args(["vm", "add", "vmok", "--disk"])
            .arg(format!("os={}", good.display())),
        0,
    );
}

/// Removes whatever is at `path` (file, symlink, FIFO, socket or directory).
fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).expect("remove dir"),
        Ok(_) => fs::remove_file(path).expect("remove"),
        Err(_) => {}
    }
}

#[test]
fn a_source_replaced_by_an_unsupported_one_is_refused_at_creation_and_commits_nothing() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let os = ts.path("os.img");
    let data = ts.path("data.img");
    random_image(&os, 16 * KIB as usize, &mut rng);
    let data_content = random_image(&data, 32 * KIB as usize, &mut rng);
    let (bad, _listener) = unsupported_sources(&ts.path("bad"));
    expect_exit(
        ts.cli()
            .args(["vm", "add", "vm1", "--disk"])
            .arg(format!("os={}", os.display()))
            .arg("--disk")
            .arg(format!("data={}", data.display())),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p0"]), 0);
    let before = ts.snapshot();

    // `_sock` keeps a socket bound at the source path while creation is attempted.
    for b in &bad {
        remove_any(&data);
        let mut _sock = None;
        match b.label {
            "directory" => fs::create_dir(&data).expect("mkdir"),
            "fifo" => {
                sh(&format!("mkfifo '{}'", data.display()));
            }
            "socket" => _sock = Some(UnixListener::bind(&data).expect("bind")),
            "character device" => std::os::unix::fs::symlink("/dev/null", &data).expect("symlink"),
            _ => {
                // A file of another format renamed over the raw image.
                let tmp = ts.path("incoming");
                fs::copy(&b.path, &tmp).expect("copy");
                fs::rename(&tmp, &data).expect("rename over");
            }
        }
        let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 7);
        assert_mentions(&err, &["disk 'data'", &data.display().to_string()]);
        assert_mentions(&err, b.reason);
        assert_unchanged(&before, &ts.snapshot(), b.label);
        drop(_sock);
        remove_any(&data);
        write_sparse(&data, &data_content);
    }

    fs::remove_file(&data).expect("remove");
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 1);
    assert_mentions(&err, &["disk 'data'", "does not exist"]);
    assert_unchanged(&before, &ts.snapshot(), "a vanished source");

    // With the raw image back, creation works: the refusals were about the sources.
    write_sparse(&data, &data_content);
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    assert!(read_image(&ts.reopen(), "c1", "p1", "data") == data_content);
    expect_exit(ts.cli().args(["check"]), 0);
}

#[test]
fn ultra_ephemeral_and_shared_disks_must_be_excluded() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let mut contents = BTreeMap::new();
    let mut cmd = ts.cli();
    cmd.args(["vm", "add", "vm1"]);
    for name in ["os", "data", "u", "e", "s"] {
        let p = ts.path(&format!("{name}.img"));
        contents.insert(name, random_image(&p, 16 * KIB as usize, &mut rng));
        cmd.arg("--disk").arg(format!("{name}={}", p.display()));
    }
    cmd.args([
        "--disk-type",
        "u=ultra",
        "--disk-type",
        "e=ephemeral",
        "--disk-type",
        "s=shared",
        "--disk-type",
        "data=managed",
    ]);
    expect_exit(&mut cmd, 0);
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    let before = ts.snapshot();

    // Each unsupported disk is named in turn until all three are excluded.
    for (excluded, named) in [
        (&[][..], "u"),
        (&["u"][..], "e"),
        (&["u", "e"][..], "s"),
        (&["e", "s"][..], "u"),
    ] {
        let mut cmd = ts.cli();
        cmd.args(["point", "create", "c1", "p1"]);
        for x in excluded {
            cmd.args(["--exclude-disk", x]);
        }
        let (_, err) = expect_exit(&mut cmd, 7);
        assert_mentions(
            &err,
            &[
                &format!("disk '{named}'"),
                "VM 'vm1'",
                &format!("--exclude-disk {named}"),
            ],
        );
        assert_unchanged(&before, &ts.snapshot(), "a refused creation");
    }

    expect_exit(
        ts.cli().args([
            "point",
            "create",
            "c1",
            "p1",
            "--exclude-disk",
            "u",
            "--exclude-disk",
            "e",
            "--exclude-disk",
            "s",
        ]),
        0,
    );
    let (out, _) = expect_exit(ts.cli().args(["point", "show", "c1/p1", "--json"]), 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    let mut excluded: Vec<String> = v["properties"]["excludeDisks"]
        .as_array()
        .expect("excludeDisks")
        .iter()
        .map(|d| {
            let id = d["id"].as_str().expect("id");
            id.rsplit('/').next().expect("last").to_string()
        })
        .collect();
    excluded.sort();
    assert_eq!(excluded, ["vm1_e", "vm1_s", "vm1_u"]);
    let profile = &v["properties"]["sourceMetadata"]["storageProfile"];
    assert_eq!(profile["osDisk"]["name"], "os");
    let data_disks: Vec<&str> = profile["dataDisks"]
        .as_array()
        .expect("dataDisks")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(data_disks, ["data"]);
    assert_eq!(
        v["properties"]["instanceView"]["diskRestorePoints"]
            .as_array()
            .expect("drps")
            .len(),
        2
    );
    let engine = ts.reopen();
    assert!(read_image(&engine, "c1", "p1", "os") == contents["os"]);
    assert!(read_image(&engine, "c1", "p1", "data") == contents["data"]);
    // An excluded disk cannot be restored from the point.
    let (_, err) = expect_exit(
        ts.cli()
            .args(["restore", "c1/p1", "--disk", "u", "--to"])
            .arg(ts.path("r")),
        3,
    );
    assert_mentions(&err, &["u", "excluded"]);
}

#[test]
fn uniform_scale_set_vms_cannot_have_collections_or_points() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng);
    expect_exit(
        ts.cli()
            .args([
                "vm",
                "add",
                "vmu",
                "--orchestration",
                "vmss-uniform",
                "--disk",
            ])
            .arg(format!("os={}", disk.display())),
        0,
    );
    let before = ts.snapshot();
    let (_, err) = expect_exit(
        ts.cli().args(["collection", "create", "cu", "--vm", "vmu"]),
        7,
    );
    assert_mentions(&err, &["VM 'vmu'", "uniform"]);
    assert_unchanged(&before, &ts.snapshot(), "a refused collection");

    // A VM that joins a uniform scale set after its collection was made (its record rewritten
    // through the store's own API): creation is refused too.
    ts.vm("vm1", &[("os", &disk)], "c1");
    ts.create("c1", "p0");
    let storage = ts.engine.storage();
    let id = ts
        .engine
        .catalog()
        .expect("catalog")
        .vm("vm1")
        .expect("vm1")
        .id;
    let key = layout::vm_record(id);
    let mut vm: VmRecord = read_record(&**storage, &key, kind::VM).expect("read vm");
    vm.orchestration = Orchestration::VmssUniform;
    write_record(&**storage, &key, kind::VM, &vm).expect("write vm");
    let before = ts.snapshot();
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 7);
    assert_mentions(&err, &["VM 'vm1'", "uniform"]);
    assert_unchanged(&before, &ts.snapshot(), "a refused point");
}

/// A read-only loop device over a file, detached on drop (also when the test panics).
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        require_tool("losetup");
        let dev = sh(&format!("losetup --find --show -r '{}'", file.display()));
        let dev = dev.trim().to_string();
        assert!(dev.starts_with("/dev/"), "losetup printed {dev:?}");
        LoopDevice(dev)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_source_reads_back_identical() {
    if !root_or_skip("a_block_device_source_reads_back_identical") {
        return;
    }
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let file = ts.path("backing.img");
    let content = mixed_image(&file, 4 * MIB, &mut rng);
    let dev = LoopDevice::attach(&file);
    let meta = fs::metadata(&dev.0).expect("device");
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(
        &meta.file_type()
    ));

    expect_exit(
        ts.cli()
            .args(["vm", "add", "vmb", "--disk"])
            .arg(format!("os={}", dev.0)),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vmb"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    let engine = ts.reopen();
    assert!(read_image(&engine, "c1", "p1", "os") == content);
    let out = ts
        .cli()
        .args(["cat", "c1/p1", "--disk", "os"])
        .output()
        .expect("cat");
    assert!(out.status.success());
    assert!(
        out.stdout == content,
        "cat of the block device point differs"
    );
    let (show, _) = expect_exit(ts.cli().args(["point", "show", "c1/p1", "--json"]), 0);
    let v: Value = serde_json::from_str(&show).expect("json");
    assert_eq!(v["rpfs"]["disks"][0]["sizeBytes"], content.len() as u64);
    assert_eq!(v["rpfs"]["disks"][0]["source"], dev.0.as_str());
}
