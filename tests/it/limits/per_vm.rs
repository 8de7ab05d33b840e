//! Limits per VM: at most 500 restore points across its collections, and one creation or
//! deletion at a time (an OS lock, refused at once when held, which the kernel releases when its
//! holder dies); other VMs proceed meanwhile.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rpfs::engine::ErrorKind;
use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;

use crate::common::cli::{assert_mentions, expect_exit, point_names};
use crate::common::guards::{KillGroupOnDrop, KillOnDrop};
use crate::common::images::{KIB, change_blocks, random_image, write_sparse};
use crate::common::store::{TestStore, assert_unchanged, create, read_image};
use crate::common::sys::{rng, seed};

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
    let mut first = KillOnDrop::new(spawn_rpfs(
        &ts.store_path(),
        &["point", "create", "c1", "a"],
    ));
    let _group = KillGroupOnDrop::from_file(&pgid);
    wait_for_file(
        &marker,
        first.as_mut().expect("child"),
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
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "the first creation ended before the refusals were checked; the test proves nothing"
    );

    let out = child_output(first.as_mut().expect("child"));
    *first = None;
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
    let mut first = KillOnDrop::new(spawn_rpfs(
        &ts.store_path(),
        &["point", "create", "c1", "a"],
    ));
    let group = KillGroupOnDrop::from_file(&pgid);
    let child = first.as_mut().expect("child");
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
    *first = None;
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
