//! Security tests: mount (see the module list in `security`). Root mounts a store with
//! `--allow-other`; `nobody` must not read raw views of VM data (disk and partition images,
//! `vm-config`), must get exactly what a guest grants everyone under `files/` (never what it
//! grants a guest user who happens to share nobody's uid or gid), and must not read the
//! daemon's log.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rpfs::engine::vms::VmSpec;
use rpfs::store::records::ConfigSource;

use crate::common::attacker::{self, NOBODY, mode_of, umask_022};
use crate::common::cli::expect_exit;
use crate::common::guards::Mounted;
use crate::common::images::{MIB, ext4_image, sfdisk_partitions};
use crate::common::mount::{MountGuard, as_nobody, fuse_or_skip, is_mounted};
use crate::common::store::{TestStore, vm_spec};
use crate::common::sys::{require_tool, root_or_skip, sh, wait_until};

/// What the VM's configuration holds: a secret only root may read.
const CONFIG: &str = "admin_password=hunter2\n";
/// The raw views of the point, relative to the mount.
const RAW_VIEWS: [&str; 3] = [
    "c/p/disks/gpt.img",
    "c/p/partitions/gpt/p1.img",
    "c/p/vm-config",
];

/// A store with VM `vm` (one GPT disk `gpt` whose partition 1 is ext4, and a configuration
/// file holding a password) and point `c/p` of it. The ext4 tree holds a world-readable file,
/// a 0600 file of guest uid 65534 and a 0640 file of guest gid 65534 (nobody's numbers on the
/// host), under a world-readable directory.
fn fixture() -> TestStore {
    require_tool("sfdisk");
    let ts = TestStore::new(64 * 1024);
    let tree = ts.path("tree");
    fs::create_dir_all(tree.join("shared")).expect("tree");
    // The guest's root is made from the tree's (tempfile makes it 0700).
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).expect("chmod tree");
    fs::write(tree.join("shared/world.txt"), "for everyone\n").expect("world");
    fs::write(tree.join("shared/guest-nobody-only"), "guest secret\n").expect("secret");
    fs::write(
        tree.join("shared/guest-nogroup-only"),
        "guest group secret\n",
    )
    .expect("group");
    sh(&format!(
        "cd '{}' && chmod 0755 shared && chmod 0644 shared/world.txt \
         && chown 65534:65534 shared/guest-nobody-only && chmod 0600 shared/guest-nobody-only \
         && chown 0:65534 shared/guest-nogroup-only && chmod 0640 shared/guest-nogroup-only",
        tree.display()
    ));
    let ext = ts.path("ext4.img");
    ext4_image(&tree, &ext, 8 * MIB);
    let disk = ts.path("gpt.img");
    sh(&format!(
        "truncate -s {} '{d}' && printf 'label: gpt\\n,8MiB\\n' | sfdisk -q '{d}' >/dev/null",
        12 * MIB,
        d = disk.display()
    ));
    let (_, start, _, _) = sfdisk_partitions(&disk)[0].clone();
    sh(&format!(
        "dd if='{}' of='{}' bs=64K seek={start} oflag=seek_bytes conv=notrunc,sparse status=none",
        ext.display(),
        disk.display()
    ));
    let config = ts.path("vm.conf");
    fs::write(&config, CONFIG).expect("config");
    ts.engine
        .add_vm(&VmSpec {
            config: ConfigSource::File(config),
            ..vm_spec("vm", &[("gpt", &disk)])
        })
        .expect("add vm");
    ts.engine
        .create_collection("c", "vm", None)
        .expect("collection");
    ts.create("c", "p");
    ts
}

/// Runs `cmd` as nobody in the mount; returns (success, stdout, stderr).
fn nobody(m: &MountGuard, cmd: &str) -> (bool, String, String) {
    let out = as_nobody(m, cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts nobody's `cat` of `path` in the mount fails with EACCES.
#[track_caller]
fn denied(m: &MountGuard, path: &str) {
    let (ok, _, err) = nobody(m, &format!("cat '{path}' >/dev/null"));
    assert!(
        !ok && err.contains("Permission denied"),
        "nobody read {path}: {err:?}"
    );
}

#[track_caller]
fn assert_octal(got: u32, want: u32, what: &str) {
    assert!(got == want, "{what}: mode {got:04o}, want {want:04o}");
}

/// A group that exists here and that nobody is not a member of.
fn group_without_nobody() -> (String, u32) {
    for name in ["adm", "disk", "sys", "daemon"] {
        if let Ok(Some(g)) = nix::unistd::Group::from_name(name)
            && g.gid.as_raw() != NOBODY
            && !g.mem.iter().any(|m| m == "nobody")
        {
            return (name.to_string(), g.gid.as_raw());
        }
    }
    panic!("no group without nobody among adm, disk, sys, daemon");
}

#[test]
fn allow_other_keeps_raw_views_private_and_the_rest_readable() {
    umask_022();
    let t = "allow_other_keeps_raw_views_private_and_the_rest_readable";
    if !fuse_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let ts = fixture();
    let m = MountGuard::new(&ts.store_path(), &["--allow-other"]);
    // The raw views are root's alone (0400) and nobody's reads of them are refused.
    for path in RAW_VIEWS {
        denied(&m, path);
        let md = fs::metadata(m.path(path)).expect("stat");
        assert_eq!(
            (format!("{:o}", md.mode() & 0o7777), md.uid(), md.gid()),
            ("400".into(), 0, 0),
            "{path}"
        );
    }
    // Root still reads them whole.
    assert_eq!(
        fs::read(m.path("c/p/vm-config")).expect("config"),
        CONFIG.as_bytes()
    );
    // The tree lists and the JSON resources read.
    let (ok, out, err) = nobody(
        &m,
        "ls c c/p c/p/disks c/p/partitions c/p/partitions/gpt c/p/files c/p/files/gpt \
         c/p/files/gpt/p1/shared && cat c/collection.json c/p/restore-point.json",
    );
    assert!(ok, "nobody could not list or read the JSON: {err}");
    for want in ["gpt.img", "p1.img", "world.txt", "\"gpt\""] {
        assert!(out.contains(want), "{want:?} missing from {out}");
    }
}

#[test]
fn allow_other_maps_guest_owners_to_the_mounting_user() {
    umask_022();
    let t = "allow_other_maps_guest_owners_to_the_mounting_user";
    if !fuse_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let ts = fixture();
    let m = MountGuard::new(&ts.store_path(), &["--allow-other"]);
    let dir = "c/p/files/gpt/p1/shared";
    // What the guest grants everyone, nobody reads.
    let (ok, out, err) = nobody(&m, &format!("cat {dir}/world.txt"));
    assert!(ok && out == "for everyone\n", "{out:?} {err}");
    // A guest file of guest uid 65534 (mode 0600) and one of guest gid 65534 (0640): the
    // guest's numbers are not the host's users, so nobody gets neither.
    for name in ["guest-nobody-only", "guest-nogroup-only"] {
        denied(&m, &format!("{dir}/{name}"));
        let md = fs::metadata(m.path(&format!("{dir}/{name}"))).expect("stat");
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o077),
            (0, 0, 0),
            "{name}: owned by the mounting user, no group or other bits"
        );
    }
    // Root still reads it (owner bits are the guest owner's).
    assert_eq!(
        fs::read(m.path(&format!("{dir}/guest-nobody-only"))).expect("root reads"),
        b"guest secret\n"
    );
}

#[test]
fn without_allow_other_guest_owners_are_the_guests() {
    umask_022();
    let t = "without_allow_other_guest_owners_are_the_guests";
    if !fuse_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let ts = fixture();
    let m = MountGuard::new(&ts.store_path(), &[]);
    // Only root enters; `cp -a` then restores the guest's owners and modes.
    let md = fs::metadata(m.path("c/p/files/gpt/p1/shared/guest-nobody-only")).expect("stat");
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (65534, 65534, 0o600)
    );
    let (ok, _, err) = nobody(&m, "ls c");
    assert!(!ok, "nobody entered a mount without --allow-other: {err}");
}

#[test]
fn image_group_shares_raw_views_with_that_group_only() {
    umask_022();
    let t = "image_group_shares_raw_views_with_that_group_only";
    if !fuse_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let ts = fixture();
    let (group, gid) = group_without_nobody();
    let m = MountGuard::new(
        &ts.store_path(),
        &["--allow-other", "--image-group", &group],
    );
    for path in RAW_VIEWS {
        denied(&m, path);
        let md = fs::metadata(m.path(path)).expect("stat");
        assert_eq!(
            (format!("{:o}", md.mode() & 0o7777), md.uid(), md.gid()),
            ("440".into(), 0, gid),
            "{path}"
        );
    }
    // A member of the group reads them.
    attacker::open_up(m.mountpoint.parent().expect("parent"));
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            &format!("--groups={gid}"),
            "cat",
            "c/p/vm-config",
        ])
        .current_dir(&m.mountpoint)
        .output()
        .expect("setpriv");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        CONFIG,
        "a member of {group}: {out:?}"
    );
    // Guest files are not the group's: its bits there are the guest's other bits.
    let member_cat = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            &format!("--groups={gid}"),
            "cat",
            "c/p/files/gpt/p1/shared/guest-nogroup-only",
        ])
        .current_dir(&m.mountpoint)
        .output()
        .expect("setpriv");
    assert!(!member_cat.status.success(), "{member_cat:?}");
}

#[test]
fn a_bad_image_group_is_refused_before_mounting() {
    umask_022();
    if !fuse_or_skip("a_bad_image_group_is_refused_before_mounting") {
        return;
    }
    let ts = TestStore::new(4096);
    let mp = ts.path("mnt");
    fs::create_dir(&mp).expect("mkdir");
    let _guard = Mounted::adopt(&mp);
    for fg in [true, false] {
        let mut cmd = ts.cli();
        cmd.arg("mount")
            .arg(&mp)
            .args(["--image-group", "no-such-group-rpfs"])
            .arg("--log-file")
            .arg(ts.path("log/mount.log"));
        if fg {
            cmd.arg("--foreground");
        }
        let (_, err) = expect_exit(&mut cmd, 2);
        assert!(
            err.contains("no-such-group-rpfs") && err.contains("no such group"),
            "{err}"
        );
        assert!(!is_mounted(&mp));
        assert!(
            !ts.path("log").exists(),
            "a log was made before the refusal"
        );
    }
}

/// Mounts `ts` in the background (the daemon) with `--log-file log` and `extra`; returns the
/// guard of the mount, the mount point and rpfs's standard error.
fn background_mount(ts: &TestStore, log: &Path, extra: &[&str]) -> (Mounted, PathBuf, String) {
    let mp = ts.path("mnt");
    fs::create_dir_all(&mp).expect("mkdir");
    let guard = Mounted::adopt(&mp);
    let (_, err) = expect_exit(
        ts.cli()
            .arg("mount")
            .arg(&mp)
            .arg("--log-file")
            .arg(log)
            .args(extra),
        0,
    );
    assert!(is_mounted(&mp));
    (guard, mp, err)
}

#[track_caller]
fn nobody_cannot_read(log: &Path) {
    let out = attacker::as_nobody(Path::new("/"), &format!("cat '{}'", log.display()));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "nobody read the log {}: {out:?}",
        log.display()
    );
}

fn unmount(ts: &TestStore, mp: &Path) {
    expect_exit(ts.cli().arg("umount").arg(mp), 0);
    wait_until("still mounted", std::time::Duration::from_secs(5), || {
        !is_mounted(mp)
    });
}

#[test]
fn the_mount_log_is_private() {
    umask_022();
    let t = "the_mount_log_is_private";
    if !fuse_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let ts = fixture();
    attacker::open_up(ts.dir.path());
    // A log in a directory rpfs makes: 0700 and 0600.
    let log = ts.path("logs/mount.log");
    let (guard, mp, _) = background_mount(&ts, &log, &["--allow-other"]);
    wait_until("nothing logged", std::time::Duration::from_secs(5), || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("mounted"))
    });
    nobody_cannot_read(&log);
    assert_octal(mode_of(&log), 0o600, "a new log");
    assert_octal(mode_of(&ts.path("logs")), 0o700, "a new log directory");
    unmount(&ts, &mp);
    drop(guard);

    // A log left world-readable (as rpfs used to make it) in an open directory: tightened, and
    // nobody cannot read it.
    let open_dir = ts.path("open-logs");
    fs::create_dir(&open_dir).expect("mkdir");
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let old = open_dir.join("mount.log");
    fs::write(&old, "old line\n").expect("old log");
    fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).expect("chmod");
    let (guard, mp, err) = background_mount(&ts, &old, &["--allow-other"]);
    assert!(
        err.contains("warning") && err.contains(&old.display().to_string()),
        "no word of the tightened log: {err}"
    );
    assert_octal(mode_of(&old), 0o600, "an old 0644 log");
    nobody_cannot_read(&old);
    assert!(
        fs::read_to_string(&old)
            .expect("log")
            .starts_with("old line\n"),
        "the log was not appended to"
    );
    unmount(&ts, &mp);
    drop(guard);

    // With --image-group: the log is the group's to read (0640), its new directory 0750.
    let (group, gid) = group_without_nobody();
    let glog = ts.path("group-logs/mount.log");
    let (guard, mp, _) = background_mount(&ts, &glog, &["--image-group", &group]);
    let md = fs::metadata(&glog).expect("stat");
    assert_octal(md.mode() & 0o7777, 0o640, "a log with --image-group");
    assert_eq!(md.gid(), gid);
    let dmd = fs::metadata(ts.path("group-logs")).expect("stat");
    assert_octal(
        dmd.mode() & 0o7777,
        0o750,
        "a log directory with --image-group",
    );
    assert_eq!(dmd.gid(), gid);
    unmount(&ts, &mp);
    drop(guard);
}

#[test]
fn a_symlinked_mount_log_is_refused() {
    umask_022();
    let t = "a_symlinked_mount_log_is_refused";
    if !fuse_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let ts = TestStore::new(4096);
    // A log name pointing at a file root owns: rpfs must neither write to it nor chmod it.
    let victim = ts.path("victim");
    fs::write(&victim, "root's file\n").expect("victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
    let link = ts.path("mount.log");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let mp = ts.path("mnt");
    fs::create_dir(&mp).expect("mkdir");
    let _guard = Mounted::adopt(&mp);
    let (_, err) = expect_exit(
        ts.cli().arg("mount").arg(&mp).arg("--log-file").arg(&link),
        1,
    );
    assert!(
        err.contains("symbolic link") && err.contains(&link.display().to_string()),
        "{err}"
    );
    assert!(!is_mounted(&mp));
    assert_eq!(fs::read(&victim).expect("victim"), b"root's file\n");
    assert_octal(mode_of(&victim), 0o644, "the symlink's target");
}
