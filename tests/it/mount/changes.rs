//! Changing the tree through a mount: `mkdir` creates points and gives an errno for each
//! refusal, the point limit gives EDQUOT, `rmdir` needs `--allow-delete`, writes of every kind
//! are refused and change nothing, and with `--allow-other` others read but only root and the
//! owner change.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rpfs::engine::vms::VmSpec;
use rpfs::store::records::DiskType;

use crate::common::cli::expect_exit;
use crate::common::images::{KIB, change_blocks, random_image};
use crate::common::mount::{MountGuard, as_nobody, fuse_or_skip};
use crate::common::store::{TestStore, assert_unchanged, create};
use crate::common::sys::{require_tool, rng, root_or_skip, seed, wait_until};

use super::{Fixture, errno};

#[test]
fn mkdir_creates_points_and_gives_an_errno_for_each_refusal() {
    if !fuse_or_skip("mkdir_creates_points_and_gives_an_errno_for_each_refusal") {
        return;
    }
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let os = ts.path("os.img");
    let mut content = random_image(&os, 64 * KIB as usize, &mut rng);
    let scratch = ts.path("scratch.img");
    random_image(&scratch, 16 * KIB as usize, &mut rng);
    let marker = ts.path("frozen");
    let slow = ts.path("slow");
    ts.engine
        .add_vm(&VmSpec {
            name: "vm".into(),
            disks: vec![
                ("os".into(), os.clone()),
                ("scratch".into(), scratch.clone()),
            ],
            disk_types: vec![("scratch".into(), DiskType::Ultra)],
            pre_script: Some(format!(
                "if [ -e '{}' ]; then touch '{}'; sleep 3; fi",
                slow.display(),
                marker.display()
            )),
            post_script: Some("true".into()),
            ..VmSpec::default()
        })
        .expect("vm");
    for c in ["c", "other"] {
        ts.engine
            .create_collection(c, "vm", None)
            .expect("collection");
    }
    let m = MountGuard::new(&ts.store_path(), &[]);

    // The ultra disk must be excluded: EOPNOTSUPP until the collection's defaults do it.
    assert_eq!(errno(fs::create_dir(m.path("c/p1"))), libc::EOPNOTSUPP);
    let cj = fs::read_to_string(m.path("c/collection.json")).expect("collection.json");
    assert!(
        cj.contains("\"status\": \"Failed\"") && cj.contains("exclude it"),
        "{cj}"
    );
    expect_exit(
        ts.cli()
            .args(["collection", "set", "c", "--exclude-disk", "scratch"]),
        0,
    );
    expect_exit(
        ts.cli()
            .args(["collection", "set", "other", "--exclude-disk", "scratch"]),
        0,
    );
    fs::create_dir(m.path("c/p1")).expect("mkdir p1");
    // mkdir returns once the point is committed: its disk reads back at once.
    assert!(fs::read(m.path("c/p1/disks/os.img")).expect("read") == content);
    assert!(!m.path("c/p1/disks/scratch.img").exists());
    let cj = fs::read_to_string(m.path("c/collection.json")).expect("collection.json");
    assert!(cj.contains("\"status\": \"Succeeded\""), "{cj}");

    assert_eq!(errno(fs::create_dir(m.path("c/p1"))), libc::EEXIST);
    assert_eq!(errno(fs::create_dir(m.path("c/bad name"))), libc::EINVAL);
    assert_eq!(errno(fs::create_dir(m.path("c/x.json"))), libc::EINVAL);
    assert_eq!(
        errno(fs::create_dir(m.path(&format!("c/{}", "n".repeat(81))))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs::create_dir(
            m.mountpoint.join(OsStr::from_bytes(b"c/\xff"))
        )),
        libc::EINVAL
    );
    for elsewhere in ["newcollection", "c/p1/x", "c/p1/disks/x"] {
        assert_eq!(
            errno(fs::create_dir(m.path(elsewhere))),
            libc::EPERM,
            "{elsewhere}"
        );
    }

    // A creation from the CLI holds the VM: mkdir is refused as busy at once.
    fs::write(&slow, b"").expect("slow");
    let mut cli = Command::new(env!("CARGO_BIN_EXE_rpfs"))
        .args(["point", "create", "other", "held"])
        .env("RPFS_STORE", ts.store_path())
        .spawn()
        .expect("spawn");
    wait_until(
        "the CLI creation never froze the VM",
        Duration::from_secs(10),
        || marker.exists(),
    );
    let t = Instant::now();
    assert_eq!(errno(fs::create_dir(m.path("c/p2"))), libc::EBUSY);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "busy took {:?}",
        t.elapsed()
    );
    assert!(cli.wait().expect("wait").success());
    fs::remove_file(&slow).expect("unslow");
    change_blocks(&os, &mut content, 4096, 0.25, &mut rng);
    fs::create_dir(m.path("c/p2")).expect("mkdir p2");
    assert!(fs::read(m.path("c/p2/disks/os.img")).expect("read") == content);

    // rmdir without --allow-delete: EPERM, nothing deleted.
    assert_eq!(errno(fs::remove_dir(m.path("c/p1"))), libc::EPERM);
    assert!(m.path("c/p1/disks/os.img").exists());
}

#[test]
fn the_point_limit_gives_edquot_through_mkdir_and_rmdir_needs_allow_delete() {
    if !fuse_or_skip("the_point_limit_gives_edquot_through_mkdir_and_rmdir_needs_allow_delete") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("tiny.img");
    random_image(&disk, 4096, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    for i in 0..500 {
        create(&ts.engine, "c", &format!("p{i}"));
    }
    let m = MountGuard::new(&ts.store_path(), &["--allow-delete"]);
    assert_eq!(errno(fs::create_dir(m.path("c/p500"))), libc::EDQUOT);
    assert_eq!(errno(fs::remove_dir(m.path("c"))), libc::EPERM);
    assert_eq!(errno(fs::remove_dir(m.path("c/p3/disks"))), libc::EPERM);
    fs::remove_dir(m.path("c/p0")).expect("rmdir p0");
    assert!(!m.path("c/p0").exists());
    fs::create_dir(m.path("c/p500")).expect("mkdir after a delete");
    assert_eq!(
        fs::read_link(m.path("c/latest")).expect("latest"),
        PathBuf::from("p500")
    );
    assert!(
        fs::read(m.path("c/p499/disks/d.img")).expect("read") == fs::read(&disk).expect("disk")
    );
}

#[test]
fn writes_are_refused_and_change_nothing() {
    if !fuse_or_skip("writes_are_refused_and_change_nothing") {
        return;
    }
    let f = Fixture::new();
    let before = f.ts.snapshot();
    let m = f.mount(&["--allow-delete"]);
    let img = m.path("daily/d0/disks/os.img");
    let cfg = m.path("daily/d0/vm-config");
    let rofs = libc::EROFS;
    assert_eq!(errno(fs::OpenOptions::new().write(true).open(&img)), rofs);
    assert_eq!(
        errno(fs::OpenOptions::new().read(true).write(true).open(&img)),
        rofs
    );
    assert_eq!(errno(fs::OpenOptions::new().append(true).open(&cfg)), rofs);
    assert_eq!(errno(fs::File::create(m.path("daily/d0/new-file"))), rofs);
    assert_eq!(errno(fs::remove_file(&cfg)), rofs);
    assert_eq!(
        errno(fs::rename(m.path("daily/d0"), m.path("daily/renamed"))),
        rofs
    );
    assert_eq!(
        errno(fs::rename(&img, m.path("daily/d0/disks/x.img"))),
        rofs
    );
    assert_eq!(
        errno(fs::set_permissions(
            &img,
            std::os::unix::fs::PermissionsExt::from_mode(0o666)
        )),
        rofs
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", m.path("daily/link"))),
        rofs
    );
    assert_eq!(
        errno(fs::hard_link(&img, m.path("daily/d0/disks/hard.img"))),
        rofs
    );
    let out = Command::new("truncate")
        .args(["-s", "0"])
        .arg(&img)
        .output()
        .expect("truncate");
    assert!(!out.status.success());
    let out = Command::new("setfattr")
        .args(["-n", "user.x", "-v", "1"])
        .arg(&img)
        .output();
    if let Ok(out) = out {
        assert!(!out.status.success(), "setfattr succeeded");
    }
    let out = Command::new("touch").arg(&img).output().expect("touch");
    assert!(!out.status.success(), "touch succeeded");
    drop(m);
    assert_unchanged(&before, &f.ts.snapshot(), "refused writes");
}

#[test]
fn allow_other_lets_others_read_but_only_root_and_the_owner_change() {
    if !fuse_or_skip("allow_other_lets_others_read_but_only_root_and_the_owner_change")
        || !root_or_skip("allow_other_lets_others_read_but_only_root_and_the_owner_change")
    {
        return;
    }
    require_tool("setpriv");
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");
    let m = MountGuard::new(&ts.store_path(), &["--allow-other", "--allow-delete"]);
    // Others read the JSON resources; disk images stay root's (security tests: `mount`).
    let out = as_nobody(&m, "cat c/p/restore-point.json");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"d\""),
        "{out:?}"
    );
    let out = as_nobody(&m, "cat c/p/disks/d.img");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Refusals start no work: the store is untouched.
    let before = ts.snapshot();
    let out = as_nobody(&m, "mkdir c/q");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Mode bits are the kernel's to enforce: directories are r-x for others.
    let out = as_nobody(&m, "touch c/p/x");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = as_nobody(&m, "rmdir c/p");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert!(m.path("c/p").exists());
    assert_unchanged(&before, &ts.snapshot(), "refused mkdir and rmdir");
    fs::create_dir(m.path("c/byroot")).expect("root may mkdir");
    drop(m);

    let m = MountGuard::new(&ts.store_path(), &[]);
    let out = as_nobody(&m, "ls c");
    assert!(
        !out.status.success(),
        "others can list without --allow-other"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
}
