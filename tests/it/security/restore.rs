//! Security tests: restore (see the module list in `security`). Root's `rpfs restore` writes
//! whole disks and configurations; the attacker (nobody) must not read them, redirect them with
//! a symbolic link, have them replace a file it planted, or leave the target in a state that
//! stops the next restore.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rpfs::store::records::PointRecord;
use rpfs::store::{LocalStorage, kind, layout, write_record};

use crate::common::attacker::{as_nobody, exposed_under, mode_of, open_up, rpfs_bin, umask_022};
use crate::common::cli::{assert_mentions, expect_exit};
use crate::common::guards::KillOnDrop;
use crate::common::images::{KIB, MIB, random_image};
use crate::common::store::TestStore;
use crate::common::sys::{rng, root_or_skip, seed};

/// The files a restore of the fixture's point writes.
const FILES: [&str; 4] = ["os.img", "data.img", "vm-config", "restore-point.json"];

/// Root's store with VM "vm" (disks os, of `os_size` random bytes, and data) and point c/p,
/// in a temporary directory opened up as real ones are; a config file with a "password".
struct Fixture {
    ts: TestStore,
    os: Vec<u8>,
    data: Vec<u8>,
}

fn fixture(os_size: usize) -> Fixture {
    umask_022();
    let ts = TestStore::new(64 * KIB as u32);
    let mut r = rng(seed());
    let os = random_image(&ts.path("os-src.img"), os_size, &mut r);
    let data = random_image(&ts.path("data-src.img"), 256 * KIB as usize, &mut r);
    fs::write(
        ts.path("vm.xml"),
        "<domain><password>hunter2</password></domain>",
    )
    .expect("cfg");
    ts.engine
        .add_vm(&rpfs::engine::vms::VmSpec {
            name: "vm".into(),
            disks: vec![
                ("os".into(), ts.path("os-src.img")),
                ("data".into(), ts.path("data-src.img")),
            ],
            config: rpfs::store::records::ConfigSource::File(ts.path("vm.xml")),
            ..Default::default()
        })
        .expect("vm");
    ts.engine.create_collection("c", "vm", None).expect("c");
    ts.create("c", "p");
    open_up(ts.dir.path());
    Fixture { ts, os, data }
}

impl Fixture {
    fn restore(&self, to: &Path, extra: &[&str]) -> assert_cmd::Command {
        let mut c = self.ts.cli();
        c.args(["restore", "c/p", "--to"]).arg(to).args(extra);
        c
    }

    /// The restore as a child process, to stop or kill midway.
    fn spawn_restore(&self, to: &Path) -> KillOnDrop {
        let child = Command::new(rpfs_bin())
            .env("RPFS_STORE", self.ts.store_path())
            .env_remove("RPFS_LOG")
            .args(["restore", "c/p", "--to"])
            .arg(to)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn restore");
        KillOnDrop::new(child)
    }

    /// Asserts that `dir` holds the fixture's restored files, byte for byte.
    fn assert_restored(&self, dir: &Path) {
        assert!(
            fs::read(dir.join("os.img")).expect("os.img") == self.os,
            "os.img differs"
        );
        assert!(fs::read(dir.join("data.img")).expect("data.img") == self.data);
        assert_eq!(
            fs::read_to_string(dir.join("vm-config")).expect("vm-config"),
            "<domain><password>hunter2</password></domain>"
        );
    }
}

/// A directory `name` in the fixture, with `mode` (chmod, so the umask does not narrow it).
fn dir_with_mode(ts: &TestStore, name: &str, mode: u32) -> PathBuf {
    let d = ts.path(name);
    fs::create_dir(&d).expect("mkdir");
    fs::set_permissions(&d, fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Waits until the restore `child` holds a file inside `dir` open (it has started writing an
/// image there: a temporary, named or not).
fn wait_until_writing(child: &mut Child, dir: &Path) {
    // The target may not exist yet: the restore creates it.
    let parent = dir
        .parent()
        .expect("parent")
        .canonicalize()
        .expect("canonical");
    let prefix = format!("{}/", parent.join(dir.file_name().expect("name")).display());
    let fds = format!("/proc/{}/fd", child.id());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the restore ended ({status}) before writing into {}",
                dir.display()
            );
        }
        let writing = fs::read_dir(&fds).into_iter().flatten().flatten().any(|e| {
            fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with(&prefix))
        });
        if writing {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restore never wrote into {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Restored images, configuration and JSON are 0600 (0640 with `--mode 0640`) whatever the
/// umask, in a directory the restore creates 0700 (0750); nobody reads none of them, even in
/// an existing target that is open to all; bad modes are refused before anything is written.
#[test]
fn restored_files_are_private_unless_a_mode_is_given() {
    let f = fixture(MIB as usize);
    let out = f.ts.path("out");
    expect_exit(&mut f.restore(&out, &[]), 0);
    f.assert_restored(&out);
    for name in FILES {
        assert_eq!(mode_of(&out.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode_of(&out), 0o700);
    assert_eq!(exposed_under(&out), Vec::<String>::new());

    // An existing target as open as a real one: the directory stays as it is, the files are
    // still the owner's only.
    let open = dir_with_mode(&f.ts, "open", 0o755);
    expect_exit(&mut f.restore(&open, &[]), 0);
    assert_eq!(mode_of(&open), 0o755);
    for name in FILES {
        assert_eq!(mode_of(&open.join(name)), 0o600, "{name}");
        let read = as_nobody(&open, &format!("cat {name} > /dev/null"));
        assert!(!read.status.success(), "nobody read {name}");
        assert_mentions(
            &String::from_utf8_lossy(&read.stderr),
            &["Permission denied"],
        );
    }

    // --mode 0640: the files 0640, the directory the restore creates 0750.
    let shared = f.ts.path("shared").join("sub");
    expect_exit(&mut f.restore(&shared, &["--mode", "0640"]), 0);
    for name in FILES {
        assert_eq!(mode_of(&shared.join(name)), 0o640, "{name}");
    }
    assert_eq!(mode_of(&shared), 0o750);
    assert_eq!(mode_of(&f.ts.path("shared")), 0o750);

    for (bad, why) in [
        ("4755", "setuid"),
        ("1777", "sticky"),
        ("0999", "octal"),
        ("rw-r-----", "octal"),
        ("", "octal"),
    ] {
        let to = f.ts.path("never");
        let (_, err) = expect_exit(&mut f.restore(&to, &["--mode", bad]), 2);
        assert_mentions(&err, &["--mode", why]);
        assert!(!to.exists(), "--mode {bad:?} created the target");
    }
}

/// A `--to` that is a symbolic link is refused, naming it, and nothing is written where it
/// points; so is a path through a link another user planted in a sticky directory. A link only
/// root could have made is followed.
#[test]
fn a_symlinked_target_is_refused() {
    if !root_or_skip("a_symlinked_target_is_refused") {
        return;
    }
    let f = fixture(MIB as usize);
    let real = dir_with_mode(&f.ts, "real", 0o755);
    let link = f.ts.path("link");
    symlink(&real, &link).expect("symlink");
    let (_, err) = expect_exit(&mut f.restore(&link, &[]), 2);
    assert_mentions(&err, &[&link.display().to_string(), "symbolic link"]);
    assert_eq!(names_in(&real), Vec::<String>::new());

    // nobody's link in a 1777 directory, on the way to the target.
    let sticky = dir_with_mode(&f.ts, "tmp", 0o1777);
    let planted = as_nobody(&sticky, &format!("ln -s '{}' via", real.display()));
    assert!(planted.status.success(), "{planted:?}");
    let through = sticky.join("via").join("new");
    let (_, err) = expect_exit(&mut f.restore(&through, &[]), 2);
    assert_mentions(&err, &["via", "symbolic link", "65534"]);
    assert_eq!(names_in(&real), Vec::<String>::new());

    // root's own link (as /var/run → /run) is followed.
    let mine = f.ts.path("mine");
    symlink(&real, &mine).expect("symlink");
    expect_exit(&mut f.restore(&mine.join("sub"), &[]), 0);
    f.assert_restored(&real.join("sub"));
}

/// In a target nobody can write (1777, as /tmp), a symbolic link nobody planted at a final name
/// before the restore (dangling, or to a root-only file) is neither replaced nor followed: the
/// restore fails naming it, and writes nothing.
#[test]
fn a_link_planted_before_the_restore_is_never_replaced() {
    if !root_or_skip("a_link_planted_before_the_restore_is_never_replaced") {
        return;
    }
    let f = fixture(MIB as usize);
    let secret_dir = dir_with_mode(&f.ts, "root-only", 0o700);
    let secret = secret_dir.join("shadow");
    fs::write(&secret, "root:secret").expect("secret");

    for (name, to) in [
        ("os.img", secret_dir.join("new")),
        ("vm-config", secret.clone()),
    ] {
        let target = dir_with_mode(&f.ts, &format!("before-{name}"), 0o1777);
        let ln = as_nobody(&target, &format!("ln -s '{}' '{name}'", to.display()));
        assert!(ln.status.success(), "{ln:?}");
        let (_, err) = expect_exit(&mut f.restore(&target, &[]), 4);
        assert_mentions(&err, &[name, "never overwrites"]);
        assert_eq!(fs::read_link(target.join(name)).expect("still a link"), to);
        assert_eq!(names_in(&target), vec![name.to_string()]);
    }
    assert!(!secret_dir.join("new").exists());
}

/// The same, with the link planted while the restore is stopped in the middle of writing
/// os.img (after any check it made of the final names).
#[test]
fn a_link_planted_during_the_restore_is_never_replaced() {
    if !root_or_skip("a_link_planted_during_the_restore_is_never_replaced") {
        return;
    }
    let f = fixture(32 * MIB as usize);
    let secret_dir = dir_with_mode(&f.ts, "root-only", 0o700);
    let secret = secret_dir.join("shadow");
    fs::write(&secret, "root:secret").expect("secret");
    let target = dir_with_mode(&f.ts, "during", 0o1777);
    let mut guard = f.spawn_restore(&target);
    let child = guard.as_mut().expect("child");
    wait_until_writing(child, &target);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("stop");
    let ln = as_nobody(&target, &format!("ln -s '{}' os.img", secret.display()));
    kill(pid, Signal::SIGCONT).expect("cont");
    assert!(ln.status.success(), "{ln:?}");
    let out = guard
        .take()
        .expect("child")
        .wait_with_output()
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_mentions(&err, &["os.img", "never overwrites"]);
    assert_eq!(
        fs::read_link(target.join("os.img")).expect("still a link"),
        secret
    );
    assert_eq!(fs::read_to_string(&secret).expect("secret"), "root:secret");
    assert_eq!(names_in(&target), vec!["os.img".to_string()]);
}

/// A restore killed with SIGKILL while writing leaves nothing that makes the next one into the
/// same target fail: that one succeeds and verifies, and its files are private.
#[test]
fn a_restore_killed_midway_does_not_stop_the_next() {
    let f = fixture(32 * MIB as usize);
    let target = f.ts.path("out");
    let mut guard = f.spawn_restore(&target);
    let child = guard.as_mut().expect("child");
    wait_until_writing(child, &target);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    *guard = None;

    let (said, _) = expect_exit(&mut f.restore(&target, &[]), 0);
    assert_mentions(&said, &["verified"]);
    f.assert_restored(&target);
    assert_eq!(names_in(&target), {
        let mut v: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    });
    assert_eq!(exposed_under(&target), Vec::<String>::new());
}

/// A crafted point record naming one disk twice (the second would overwrite the first, and the
/// restore said every file was verified) is refused, naming both disks, before anything is
/// written.
#[test]
fn two_disks_to_one_file_are_refused_naming_both() {
    let f = fixture(MIB as usize);
    let (_, p): (_, PointRecord) = {
        let cat = f.ts.engine.catalog().expect("catalog");
        let (c, p) = cat.point("c", "p").expect("point");
        (c.clone(), p.clone())
    };
    let mut crafted = p.clone();
    crafted.disks[1].name = "os".into();
    write_record(
        &LocalStorage::new(f.ts.store_path()),
        &layout::point(p.vm_id, p.id),
        kind::POINT,
        &crafted,
    )
    .expect("write record");

    let target = f.ts.path("out");
    let (_, err) = expect_exit(&mut f.restore(&target, &[]), 10);
    assert_mentions(
        &err,
        &["disk 'os' (disk 1)", "disk 'os' (disk 2)", "os.img"],
    );
    assert!(!target.exists(), "the refused restore created its target");
}
