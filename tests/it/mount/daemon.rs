//! The mount daemon's life: SIGTERM unmounts, `rpfs umount` clears a killed daemon's mount, the
//! background daemon returns once mounted, a long `mkdir` blocks no reader, and the regressions
//! found in review under stress (signals on a busy mount, remounting at once, slow creations,
//! a small descriptor limit, a point deleted while open).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rpfs::engine::vms::VmSpec;

use crate::common::cli::expect_exit;
use crate::common::guards::Mounted;
use crate::common::images::{KIB, change_blocks, random_image};
use crate::common::mount::{MountGuard, fuse_or_skip, is_mounted};
use crate::common::store::{TestStore, create};
use crate::common::sys::{rng, seed, sh, wait_until};

use super::errno;

#[test]
fn sigterm_unmounts_and_umount_clears_a_killed_daemon() {
    if !fuse_or_skip("sigterm_unmounts_and_umount_clears_a_killed_daemon") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");

    let mut m = MountGuard::new(&ts.store_path(), &[]);
    sh(&format!("kill -TERM {}", m.pid()));
    let status = m.child.take().expect("child").wait().expect("wait");
    assert!(status.success(), "daemon exited with {status}");
    assert!(!is_mounted(&m.mountpoint), "SIGTERM left the mount");

    let mut m = MountGuard::new(&ts.store_path(), &[]);
    sh(&format!("kill -KILL {}", m.pid()));
    let _ = m.child.take().expect("child").wait();
    assert!(
        is_mounted(&m.mountpoint),
        "a killed daemon's mount should linger"
    );
    assert_eq!(errno(fs::metadata(m.path("c"))), libc::ENOTCONN);
    expect_exit(ts.cli().arg("umount").arg(&m.mountpoint), 0);
    assert!(!is_mounted(&m.mountpoint));
    expect_exit(ts.cli().arg("umount").arg(&m.mountpoint), 3);
}

#[test]
fn the_background_daemon_returns_once_mounted() {
    if !fuse_or_skip("the_background_daemon_returns_once_mounted") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");
    let mp = ts.path("mnt");
    fs::create_dir(&mp).expect("mkdir");
    let log = ts.path("mount.log");
    let _guard = Mounted::adopt(&mp);
    let (out, _) = expect_exit(
        ts.cli().arg("mount").arg(&mp).arg("--log-file").arg(&log),
        0,
    );
    assert!(out.contains("mounted"), "{out}");
    assert!(is_mounted(&mp));
    assert!(fs::read(mp.join("c/p/disks/d.img")).expect("read") == content);
    // A second mount on the same place is refused; an empty log is not an error.
    expect_exit(
        ts.cli().arg("mount").arg(&mp).arg("--log-file").arg(&log),
        4,
    );
    expect_exit(ts.cli().arg("umount").arg(&mp), 0);
    wait_until("still mounted", Duration::from_secs(5), || !is_mounted(&mp));
    // The daemon logs its end once the mount is gone.
    wait_until(
        "the daemon never logged its end",
        Duration::from_secs(5),
        || fs::read_to_string(&log).expect("log").contains("unmounted"),
    );
    // Mount errors come back to the caller.
    let (_, err) = expect_exit(ts.cli().arg("mount").arg(ts.path("missing")), 3);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn a_long_mkdir_blocks_no_reader_and_odd_requests_get_answers() {
    if !fuse_or_skip("a_long_mkdir_blocks_no_reader_and_odd_requests_get_answers") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 256 * KIB as usize, &mut rng(seed()));
    let marker = ts.path("frozen");
    ts.engine
        .add_vm(&VmSpec {
            name: "vm".into(),
            disks: vec![("d".into(), disk.clone())],
            pre_script: Some(format!("touch '{}'; sleep 2", marker.display())),
            ..VmSpec::default()
        })
        .expect("vm");
    ts.engine
        .create_collection("c", "vm", None)
        .expect("collection");
    ts.engine
        .create_collection("other", "vm", None)
        .expect("collection");
    create(&ts.engine, "c", "p0");
    create(&ts.engine, "other", "q0");
    let m = MountGuard::new(&ts.store_path(), &[]);
    // Paths resolved before, and files opened before, the mkdir starts.
    assert!(fs::read(m.path("c/p0/disks/d.img")).expect("read") == content);
    let open = fs::File::open(m.path("c/p0/disks/d.img")).expect("open");
    let slow = {
        let dir = m.path("c/slow");
        std::thread::spawn(move || fs::create_dir(dir))
    };
    wait_until("mkdir never started", Duration::from_secs(10), || {
        marker.exists()
    });
    // While `mkdir c/slow` runs (2 s), the kernel holds `c` itself locked, so listing `c` waits
    // in the kernel; every other request is served by the daemon's other threads.
    let t = Instant::now();
    assert_eq!(fs::read_dir(&m.mountpoint).expect("ls /").count(), 2);
    assert!(fs::read_dir(m.path("other")).expect("ls other").count() >= 3);
    assert!(fs::read(m.path("other/q0/disks/d.img")).expect("read other") == content);
    assert!(fs::read(m.path("c/p0/disks/d.img")).expect("read resolved path") == content);
    let mut buf = vec![0u8; content.len()];
    open.read_exact_at(&mut buf, 0).expect("read open file");
    assert!(buf == content);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "readers waited {:?} for mkdir",
        t.elapsed()
    );
    slow.join().expect("thread").expect("mkdir");
    assert!(m.path("c/slow/disks/d.img").exists());

    // Whatever a request carries, it is answered.
    assert_eq!(
        errno(fs::metadata(
            m.mountpoint.join(OsStr::from_bytes(b"c/\xff\xfe"))
        )),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs::metadata(m.path("c/p0/disks/d.img/deeper"))),
        libc::ENOTDIR
    );
    assert_eq!(errno(fs::metadata(m.path("c/nothing/disks"))), libc::ENOENT);
    let img = fs::File::open(m.path("c/p0/disks/d.img")).expect("open");
    let mut buf = [0u8; 16];
    assert_eq!(
        img.read_at(&mut buf, 1 << 40).expect("read past the end"),
        0
    );
    assert_eq!(
        img.read_at(&mut buf, 256 * KIB - 8)
            .expect("read across the end"),
        8
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os,errno\nf=os.open('{}',os.O_RDONLY)\ntry:\n  os.lseek(f, {}, os.SEEK_DATA)\nexcept OSError as e:\n  print(errno.errorcode[e.errno])",
            m.path("c/p0/disks/d.img").display(),
            1u64 << 40
        ))
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ENXIO");
    // A plain `umount` (not `rpfs umount`) ends the daemon too.
    drop((open, img));
    let mut m = m;
    sh(&format!("umount '{}'", m.mountpoint.display()));
    let status = m.child.take().expect("daemon").wait().expect("wait");
    assert!(status.success(), "daemon after umount: {status}");
    assert!(!is_mounted(&m.mountpoint));
}

// ----- the daemon under stress: regressions found in review -----

/// A store with one VM and a point, plus the disk's content.
fn small_store(bytes: usize) -> (TestStore, Vec<u8>) {
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, bytes, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");
    (ts, content)
}

#[test]
fn a_signal_on_a_busy_mount_keeps_serving_until_it_can_unmount() {
    if !fuse_or_skip("a_signal_on_a_busy_mount_keeps_serving_until_it_can_unmount") {
        return;
    }
    let (ts, content) = small_store(64 * KIB as usize);
    let mut m = MountGuard::new(&ts.store_path(), &[]);
    let open = fs::File::open(m.path("c/p/disks/d.img")).expect("open");
    sh(&format!("kill -TERM {}", m.pid()));
    std::thread::sleep(Duration::from_millis(500));
    // Busy: still mounted, still serving, the daemon alive.
    assert!(is_mounted(&m.mountpoint));
    let mut buf = vec![0u8; content.len()];
    open.read_exact_at(&mut buf, 0).expect("read while busy");
    assert!(buf == content);
    assert!(matches!(
        m.child.as_mut().expect("daemon").try_wait(),
        Ok(None)
    ));
    // Once nothing holds it, the next signal unmounts.
    drop(open);
    sh(&format!("kill -INT {}", m.pid()));
    let status = m.child.take().expect("daemon").wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&m.mountpoint));
}

#[test]
fn remounting_at_once_is_not_undone_by_the_old_daemon() {
    if !fuse_or_skip("remounting_at_once_is_not_undone_by_the_old_daemon") {
        return;
    }
    let (ts, content) = small_store(64 * KIB as usize);
    let mut first = MountGuard::new(&ts.store_path(), &[]);
    let mp = first.mountpoint.clone();
    expect_exit(ts.cli().arg("umount").arg(&mp), 0);
    let log = ts.path("mount.log");
    let (out, _) = expect_exit(
        ts.cli().arg("mount").arg(&mp).arg("--log-file").arg(&log),
        0,
    );
    let _ = first.child.take().expect("first daemon").wait();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        is_mounted(&mp),
        "the first daemon unmounted the second mount"
    );
    assert!(fs::read(mp.join("c/p/disks/d.img")).expect("read") == content);
    // The background daemon left the caller's working directory.
    let pid = out
        .split("daemon pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("the daemon's pid in the output");
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, Path::new("/"));
    // A symlink to the mount point is the same mount point: no second mount stacks there.
    let link = ts.path("link");
    std::os::unix::fs::symlink(&mp, &link).expect("symlink");
    expect_exit(
        ts.cli().arg("mount").arg(&link).arg("--log-file").arg(&log),
        4,
    );
    expect_exit(ts.cli().arg("umount").arg(&link), 0);
    wait_until("still mounted", Duration::from_secs(5), || !is_mounted(&mp));
}

#[test]
fn slow_creations_do_not_take_the_request_threads() {
    if !fuse_or_skip("slow_creations_do_not_take_the_request_threads") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    let started = ts.path("started");
    fs::create_dir(&started).expect("mkdir");
    // More VMs than the daemon has request threads, each with a slow pre-script.
    for i in 0..10 {
        ts.engine
            .add_vm(&VmSpec {
                name: format!("vm{i}"),
                disks: vec![("d".into(), disk.clone())],
                pre_script: Some(format!("touch '{}/{i}'; sleep 3", started.display())),
                ..VmSpec::default()
            })
            .expect("vm");
        ts.engine
            .create_collection(&format!("c{i}"), &format!("vm{i}"), None)
            .expect("collection");
    }
    ts.vm("fast", &[("d", &disk)], "fast");
    ts.create("fast", "p");
    let m = MountGuard::new(&ts.store_path(), &[]);
    let slow: Vec<_> = (0..10)
        .map(|i| {
            let dir = m.path(&format!("c{i}/slow"));
            std::thread::spawn(move || fs::create_dir(dir))
        })
        .collect();
    wait_until(
        "the creations did not all start",
        Duration::from_secs(10),
        || fs::read_dir(&started).expect("ls").count() >= 10,
    );
    let t = Instant::now();
    let json = fs::read(m.path("fast/p/restore-point.json")).expect("json");
    assert!(!json.is_empty());
    assert!(fs::read(m.path("fast/p/disks/d.img")).expect("read") == content);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "served after {:?}",
        t.elapsed()
    );
    for s in slow {
        s.join().expect("thread").expect("mkdir");
    }
}

#[test]
fn a_deep_chain_reads_within_a_small_descriptor_limit() {
    if !fuse_or_skip("a_deep_chain_reads_within_a_small_descriptor_limit") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let mut rng = rng(seed());
    let mut content = random_image(&disk, 512 * KIB as usize, &mut rng);
    ts.vm("vm", &[("d", &disk)], "c");
    for i in 0..100 {
        change_blocks(&disk, &mut content, 4096, 0.02, &mut rng);
        ts.create("c", &format!("p{i}"));
    }
    // The newest point references ~100 packs; the daemon starts with a soft limit of 64.
    let m = MountGuard::wrapped(&ts.store_path(), &[], "ulimit -Sn 64;");
    assert!(fs::read(m.path("c/p99/disks/d.img")).expect("read the deep point") == content);
}

#[test]
fn a_point_deleted_while_open_keeps_reading() {
    if !fuse_or_skip("a_point_deleted_while_open_keeps_reading") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let mut rng = rng(seed());
    let mut content = random_image(&disk, 256 * KIB as usize, &mut rng);
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p1");
    change_blocks(&disk, &mut content, 4096, 0.5, &mut rng);
    ts.create("c", "p2");
    let m = MountGuard::new(&ts.store_path(), &["--allow-delete"]);
    let open = fs::File::open(m.path("c/p2/disks/d.img")).expect("open");
    fs::remove_dir(m.path("c/p2")).expect("rmdir p2");
    assert!(!m.path("c/p2").exists());
    let mut buf = vec![0u8; content.len()];
    open.read_exact_at(&mut buf, 0)
        .expect("read after the delete");
    assert!(buf == content);
}
