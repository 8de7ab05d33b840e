//! Recovery and cleanup under adverse conditions: a full store, a crash while the VM is frozen,
//! a read-only store, a point deleted while it is read, and records that went missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rpfs::engine::ErrorKind;
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::{PendingKind, PendingOp};
use rpfs::store::{kind, layout, write_record};

use crate::common::cli::{assert_mentions, expect_exit, point_names_at, rpfs_at};
use crate::common::guards::{KillGroupOnDrop, LoopDevice, Mounted};
use crate::common::images::{KIB, MIB, change_blocks, random_image};
use crate::common::store::{TestStore, assert_unchanged, open, read_image, snapshot};
use crate::common::sys::{require_tool, rng, root_or_skip, seed, sh, wait_until};

/// A loop-mounted filesystem of its own, unmounted (and its image removed) on drop.
struct SmallFs {
    // Unmounted before the directory holding the image and the mount point is removed.
    _mounted: Mounted,
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        require_tool("mkfs.xfs");
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mkdir");
        sh(&format!(
            "truncate -s {mib}M '{}' && mkfs.xfs -q '{}'",
            img.display(),
            img.display()
        ));
        let mounted = Mounted::run(
            &mnt,
            &format!("mount -o loop '{}' '{}'", img.display(), mnt.display()),
        );
        SmallFs {
            _mounted: mounted,
            _dir: dir,
            mnt,
        }
    }

    fn free(&self) -> u64 {
        let out = sh(&format!(
            "df -B1 --output=avail '{}' | tail -1",
            self.mnt.display()
        ));
        out.trim().parse().expect("df")
    }
}

/// Creates a store at `store` with VM "vm" of one disk "d" at `disk`, and collection "c".
fn init_with_vm(store: &Path, disk: &Path) {
    init_with_vm_as(store, disk, &[]);
}

/// [`init_with_vm`], with `init_args` after `rpfs init`.
fn init_with_vm_as(store: &Path, disk: &Path, init_args: &[&str]) {
    expect_exit(rpfs_at(store).arg("init").args(init_args), 0);
    expect_exit(
        rpfs_at(store)
            .args(["vm", "add", "vm"])
            .arg(format!("--disk=d={}", disk.display())),
        0,
    );
    expect_exit(
        rpfs_at(store).args(["collection", "create", "c", "--vm", "vm"]),
        0,
    );
}

#[test]
fn a_delete_on_a_full_store_succeeds_and_frees_the_space_later() {
    full_store_delete(
        "a_delete_on_a_full_store_succeeds_and_frees_the_space_later",
        rpfs::store::format::DEFAULT,
    );
}

#[test]
fn a_delete_on_a_full_format_1_store_succeeds_and_frees_the_space_later() {
    full_store_delete(
        "a_delete_on_a_full_format_1_store_succeeds_and_frees_the_space_later",
        1,
    );
}

/// Both formats repack what a deletion leaves half used only with room for the pages kept plus
/// a 64 MiB margin; without it the deletion succeeds and the debt is kept (format 1: in the VM's
/// marker, a problem `check` reports; format 2: the store's `gc-owed`, a note) until an opening
/// with room pays it.
fn full_store_delete(name: &str, format: u32) {
    if !root_or_skip(name) {
        return;
    }
    let mut rng = rng(seed());
    let small = SmallFs::new(400);
    let store = small.mnt.join("store");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.img");
    let mut content = random_image(&disk, 48 * MIB as usize, &mut rng);
    init_with_vm_as(&store, &disk, &["--format", &format.to_string()]);
    expect_exit(rpfs_at(&store).args(["point", "create", "c", "p1"]), 0);
    change_blocks(&disk, &mut content, 64 * KIB, 0.5, &mut rng);
    expect_exit(rpfs_at(&store).args(["point", "create", "c", "p2"]), 0);
    let p2 = content.clone();

    // Leave too little room to repack p1's pack (24 MiB still used by p2, plus a margin).
    let filler = small.mnt.join("filler");
    let leave = 40 * MIB;
    sh(&format!(
        "fallocate -l {} '{}'",
        small.free() - leave,
        filler.display()
    ));
    let (_, err) = expect_exit(rpfs_at(&store).args(["point", "delete", "c/p1"]), 0);
    // The debt is kept where the format keeps it, and is visible, not hidden...
    let debt = if format == 1 {
        assert_mentions(&err, &["warning: space not freed yet", "repacking"]);
        layout::pending(vm_id(&store))
    } else {
        layout::GC_OWED.to_string()
    };
    assert_eq!(point_names_at(&store), vec!["c/p2"]);
    if format == 1 {
        let (_, err) = expect_exit(rpfs_at(&store).arg("check"), 10);
        assert_mentions(&err, &["pending.json", "referenced by no committed point"]);
    } else {
        let (_, err) = expect_exit(rpfs_at(&store).arg("check"), 0);
        assert_mentions(&err, &["gc-owed", "referenced by no committed point"]);
    }
    // ...and a creation meanwhile neither loses it nor fails.
    expect_exit(rpfs_at(&store).args(["point", "create", "c", "p3"]), 0);
    assert!(store.join(&debt).exists(), "{debt} gone");

    // With room again, the next open pays the debt.
    let before = dir_size(&store);
    fs::remove_file(&filler).expect("remove filler");
    // XFS frees a removed file's blocks in the background; wait until they are free.
    let start = Instant::now();
    while small.free() < 100 * MIB {
        sh(&format!("sync -f '{}'", small.mnt.display()));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "space never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    expect_exit(rpfs_at(&store).args(["check", "--read-data"]), 0);
    assert!(
        dir_size(&store) + 20 * MIB < before,
        "the repack freed nothing"
    );
    assert!(!store.join(&debt).exists(), "{debt} still there");
    let engine = open(&store);
    assert!(read_image(&engine, "c", "p2", "d") == p2);
    assert!(read_image(&engine, "c", "p3", "d") == p2);
}

fn vm_id(store: &Path) -> uuid::Uuid {
    open(store).catalog().expect("catalog").vms[0].id
}

fn dir_size(dir: &Path) -> u64 {
    sh(&format!("du -sb '{}'", dir.display()))
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du")
}

#[test]
fn a_creation_killed_while_the_vm_is_frozen_is_thawed_by_recovery() {
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    let frozen = ts.path("frozen");
    let pid = ts.path("pre.pid");
    let log = ts.path("thaw.log");
    ts.engine
        .add_vm(&VmSpec {
            name: "vm".into(),
            disks: vec![("d".into(), disk.clone())],
            pre_script: Some(format!(
                "echo $$ > '{}'; touch '{}'; sleep 30",
                pid.display(),
                frozen.display()
            )),
            post_script: Some(format!(
                "echo \"thawed $RPFS_PHASE $RPFS_VM\" >> '{}'",
                log.display()
            )),
            script_timeout_secs: Some(60),
            ..VmSpec::default()
        })
        .expect("add vm");
    ts.engine
        .create_collection("c", "vm", None)
        .expect("collection");
    // The pre-script runs in its own process group, which outlives the killed rpfs.
    let pre_script = KillGroupOnDrop::from_file(&pid);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpfs"))
        .args(["point", "create", "c", "p1"])
        .env("RPFS_STORE", ts.store_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until("pre-script never ran", Duration::from_secs(10), || {
        frozen.exists()
    });
    child.kill().expect("kill");
    child.wait().expect("wait");
    // The pre-script's sleep is an orphan now; it does not hold the VM's lock.
    assert!(!log.exists(), "post-script ran before recovery");
    let mut list = ts.cli();
    list.env("RPFS_LOG", "warn").args(["point", "list"]);
    let (_, err) = expect_exit(&mut list, 0);
    assert_mentions(&err, &["left frozen", "post-script was run"]);
    assert_eq!(
        fs::read_to_string(&log).expect("thaw log"),
        "thawed post vm\n"
    );
    // Exactly once: a second open does nothing more.
    expect_exit(ts.cli().args(["check", "--read-data"]), 0);
    assert_eq!(
        fs::read_to_string(&log).expect("thaw log"),
        "thawed post vm\n"
    );
    // End the pre-script's orphaned sleep.
    drop(pre_script);
}

#[test]
fn a_point_deleted_while_it_is_read_is_not_found_not_damaged() {
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let mut rng = rng(seed());
    let mut content = random_image(&disk, 256 * KIB as usize, &mut rng);
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p1");
    change_blocks(&disk, &mut content, 4096, 0.5, &mut rng);
    ts.create("c", "p2");
    let reader = ts.reopen();
    let cat = reader.catalog().expect("catalog");
    let (_, p2) = cat.point("c", "p2").expect("p2");
    let image = reader.open_disk("c", p2, "d").expect("open");
    // Another process deletes p2; its own pack goes away before the reader opened it.
    ts.engine.delete_point("c", "p2").expect("delete");
    let mut buf = vec![0u8; 256 * KIB as usize];
    let err = image.read_at(0, &mut buf).expect_err("p2 is gone");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("deleted while being read"),
        "{err}"
    );
}

#[test]
fn a_read_only_store_with_a_pending_marker_still_lists_and_restores() {
    if !root_or_skip("a_read_only_store_with_a_pending_marker_still_lists_and_restores") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    let p = ts.create("c", "p1");
    let marker = PendingOp {
        op: PendingKind::Create,
        point_id: uuid::Uuid::new_v4(),
        clones: vec![],
        started: "now".into(),
        frozen: false,
        collection: "c".into(),
        point: "p2".into(),
        gc_owed: false,
    };
    write_record(
        &**ts.engine.storage(),
        &layout::pending(p.vm_id),
        kind::PENDING,
        &marker,
    )
    .expect("marker");
    let ro = ts.path("ro");
    fs::create_dir(&ro).expect("mkdir");
    let _guard = Mounted::run(
        &ro,
        &format!(
            "mount --bind '{}' '{}' && mount -o remount,ro,bind '{}'",
            ts.store_path().display(),
            ro.display(),
            ro.display()
        ),
    );
    let (out, _) = expect_exit(rpfs_at(&ro).args(["point", "list"]), 0);
    assert!(out.contains("c/p1"), "{out}");
    let to = ts.path("restored");
    expect_exit(rpfs_at(&ro).args(["restore", "c/p1", "--to"]).arg(&to), 0);
    assert!(fs::read(to.join("d.img")).expect("restored") == content);
    // It cannot be recovered read-only, and check says so rather than pretending.
    let (_, err) = expect_exit(rpfs_at(&ro).arg("check"), 10);
    assert_mentions(&err, &["pending.json"]);
}

#[test]
fn recovery_never_removes_a_vm_directory_that_holds_points() {
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    let p = ts.create("c", "p1");
    // A lost VM record (damage, or a bug): the points must not be swept away as remains.
    fs::remove_file(ts.store_path().join(layout::vm_record(p.vm_id))).expect("remove vm.json");
    let (_, err) = expect_exit(ts.cli().arg("check"), 10);
    assert_mentions(
        &err,
        &["the VM record is missing, but 1 restore point records remain"],
    );
    assert!(ts.store_path().join(layout::point(p.vm_id, p.id)).exists());
}

#[test]
fn creations_racing_collection_deletes_never_orphan_a_point() {
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "keep");
    let (mut created, mut refused) = (0, 0);
    let mut rng = rng(seed());
    for i in 0..40 {
        let coll = format!("r{i}");
        ts.engine
            .create_collection(&coll, "vm", None)
            .expect("collection");
        let creator = {
            let engine = ts.reopen();
            let coll = coll.clone();
            std::thread::spawn(move || create_result(&engine, &coll))
        };
        // Delete the collection around the time the creation runs; busy means the creation holds
        // the VM.
        std::thread::sleep(Duration::from_micros(rand::Rng::random_range(
            &mut rng,
            0..300,
        )));
        loop {
            match ts.engine.delete_collection(&coll, true) {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Busy => std::thread::yield_now(),
                Err(e) => panic!("delete {coll}: {e}"),
            }
        }
        match creator.join().expect("creator") {
            Ok(()) => created += 1,
            Err(kind) => {
                assert_eq!(kind, ErrorKind::NotFound, "creation in {coll}");
                refused += 1;
            }
        }
    }
    eprintln!("{created} creations won, {refused} found the collection gone");
    let report = ts
        .reopen()
        .check(true, &rpfs::engine::progress::Silent)
        .expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(ts.engine.catalog().expect("catalog").points.is_empty());
}

fn create_result(engine: &rpfs::engine::Engine, coll: &str) -> Result<(), ErrorKind> {
    let req = rpfs::engine::create::CreateRequest {
        collection: coll.into(),
        name: "p".into(),
        exclude: vec![],
        consistency: None,
    };
    match engine.create_point(&req, &rpfs::engine::progress::Silent) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Busy => create_result(engine, coll),
        Err(e) => Err(e.kind()),
    }
}

#[test]
fn a_creation_the_store_has_no_room_for_is_refused_before_any_work() {
    if !root_or_skip("a_creation_the_store_has_no_room_for_is_refused_before_any_work") {
        return;
    }
    let small = SmallFs::new(300);
    let store = small.mnt.join("store");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.img");
    // 400 MiB allocated (unwritten extents count): a full copy may need all of it.
    sh(&format!("fallocate -l 400M '{}'", disk.display()));
    init_with_vm(&store, &disk);
    let before = snapshot(&store);
    let (_, err) = expect_exit(rpfs_at(&store).args(["point", "create", "c", "p1"]), 11);
    assert_mentions(
        &err,
        &[
            "not enough space",
            "restore point 'p1'",
            "MiB free",
            "full copy of disk 'd'",
        ],
    );
    assert_unchanged(&before, &snapshot(&store), "a refused creation");
}

#[test]
fn a_creation_that_runs_out_of_space_midway_rolls_back_and_frees_what_it_wrote() {
    if !root_or_skip("a_creation_that_runs_out_of_space_midway_rolls_back_and_frees_what_it_wrote")
    {
        return;
    }
    require_tool("losetup");
    let dir = tempfile::tempdir().expect("tempdir");
    let _tmpfs = Mounted::run(
        dir.path(),
        &format!(
            "mount -t tmpfs -o size=48m rpfs-test '{}'",
            dir.path().display()
        ),
    );
    let store = dir.path().join("store");
    // A block device source: how much it holds is unknown, so the free-space check lets the
    // creation start, and the store fills up half way through.
    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("d.img");
    random_image(&image, 96 * MIB as usize, &mut rng(seed()));
    let dev = LoopDevice::attach(&image);
    init_with_vm(&store, Path::new(&dev.0));
    let free = || {
        sh(&format!(
            "df -B1 --output=avail '{}' | tail -1",
            dir.path().display()
        ))
        .trim()
        .parse::<u64>()
        .expect("df")
    };
    let (before, free_before) = (snapshot(&store), free());
    let (_, err) = expect_exit(rpfs_at(&store).args(["point", "create", "c", "p1"]), 1);
    assert_mentions(&err, &["No space left on device"]);
    assert_unchanged(
        &before,
        &snapshot(&store),
        "a creation that ran out of space",
    );
    assert_eq!(free(), free_before, "the space it used was not given back");
    expect_exit(rpfs_at(&store).args(["check", "--read-data"]), 0);
}
